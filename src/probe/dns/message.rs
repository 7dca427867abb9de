//! DNS query building and reply classification (pure), with
//! `hickory-proto` for the wire format.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use crate::metrics::labels::DnsOutcome;

/// The wire form of a recursive `A` query for `name` with message `id`.
pub(crate) fn build_query(id: u16, name: &Name) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name.clone(), RecordType::A));
    // A message of one short question always encodes.
    m.to_vec().unwrap_or_default()
}

/// What a received datagram means for a lookup in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Not the reply to this query (another id, not a response): keep
    /// waiting, as a resolver does, so a stray datagram is no failure.
    Unrelated,
    /// The reply to this query, classified.
    Answer(DnsOutcome),
}

/// Classifies datagram `buf` against the query `id` for `name`.
pub(crate) fn classify(buf: &[u8], id: u16, name: &Name) -> Reply {
    let Ok(m) = Message::from_vec(buf) else {
        // Unparsable: ours only if its id says so (the first two bytes).
        return match buf {
            [a, b, ..] if u16::from_be_bytes([*a, *b]) == id => Reply::Answer(DnsOutcome::BadReply),
            _ => Reply::Unrelated,
        };
    };
    if m.id() != id || m.message_type() != MessageType::Response {
        return Reply::Unrelated;
    }
    // The question must be echoed back: a reply to another name under our
    // id is a broken (or spoofed) answer.
    let asked = m
        .queries()
        .iter()
        .any(|q| q.name() == name && q.query_type() == RecordType::A);
    if !asked {
        return Reply::Answer(DnsOutcome::BadReply);
    }
    Reply::Answer(match m.response_code() {
        ResponseCode::NoError => {
            if m.answers().iter().any(|r| r.record_type() == RecordType::A) {
                DnsOutcome::Ok
            } else {
                DnsOutcome::NoData
            }
        }
        ResponseCode::NXDomain => DnsOutcome::Nxdomain,
        ResponseCode::ServFail => DnsOutcome::Servfail,
        ResponseCode::Refused => DnsOutcome::Refused,
        _ => DnsOutcome::OtherRcode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::dns::query_name;
    use hickory_proto::rr::{rdata::A, RData, Record};

    fn name() -> Name {
        query_name("kubernetes.default.svc.cluster.local").expect("name")
    }

    /// A server's reply to `query`, with `rcode` and `answers` A records.
    fn reply(query: &[u8], rcode: ResponseCode, answers: usize) -> Vec<u8> {
        let q = Message::from_vec(query).expect("query parses");
        let mut m = Message::new();
        m.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_response_code(rcode)
            .add_queries(q.queries().iter().cloned());
        for i in 0..answers {
            let ip = std::net::Ipv4Addr::new(10, 96, 0, u8::try_from(i).expect("small"));
            m.add_answer(Record::from_rdata(name(), 30, RData::A(A(ip))));
        }
        m.to_vec().expect("encodes")
    }

    #[test]
    fn query_is_a_recursive_a_question() {
        let q = build_query(0x1234, &name());
        let m = Message::from_vec(&q).expect("parses");
        assert_eq!(m.id(), 0x1234);
        assert_eq!(m.message_type(), MessageType::Query);
        assert!(m.recursion_desired());
        assert_eq!(m.queries().len(), 1);
        assert_eq!(m.queries()[0].query_type(), RecordType::A);
        assert_eq!(
            m.queries()[0].name().to_ascii(),
            "kubernetes.default.svc.cluster.local."
        );
    }

    #[test]
    fn replies_are_classified_by_rcode() {
        let n = name();
        let q = build_query(7, &n);
        let cases = [
            (ResponseCode::NoError, 1, DnsOutcome::Ok),
            (ResponseCode::NoError, 0, DnsOutcome::NoData),
            (ResponseCode::NXDomain, 0, DnsOutcome::Nxdomain),
            (ResponseCode::ServFail, 0, DnsOutcome::Servfail),
            (ResponseCode::Refused, 0, DnsOutcome::Refused),
            (ResponseCode::FormErr, 0, DnsOutcome::OtherRcode),
            (ResponseCode::NotImp, 0, DnsOutcome::OtherRcode),
        ];
        for (rcode, answers, want) in cases {
            assert_eq!(
                classify(&reply(&q, rcode, answers), 7, &n),
                Reply::Answer(want),
                "{rcode:?}"
            );
        }
    }

    #[test]
    fn stray_and_broken_datagrams() {
        let n = name();
        let q = build_query(7, &n);
        let r = reply(&q, ResponseCode::NoError, 1);
        // Another id: not ours, keep waiting.
        assert_eq!(classify(&r, 8, &n), Reply::Unrelated);
        // Our own query reflected back is not a response.
        assert_eq!(classify(&q, 7, &n), Reply::Unrelated);
        // Garbage under our id: a bad reply; garbage otherwise: unrelated.
        assert_eq!(
            classify(&[0, 7, 0xff], 7, &n),
            Reply::Answer(DnsOutcome::BadReply)
        );
        assert_eq!(classify(&[0, 9, 0xff], 7, &n), Reply::Unrelated);
        assert_eq!(classify(&[], 7, &n), Reply::Unrelated);
        // Our id, another question.
        let other = query_name("other.example").expect("name");
        let r = reply(&build_query(7, &other), ResponseCode::NoError, 1);
        assert_eq!(classify(&r, 7, &n), Reply::Answer(DnsOutcome::BadReply));
        // Case differences in the echoed name are fine (0x20 randomisation).
        let upper = query_name("KUBERNETES.default.svc.cluster.local").expect("name");
        let r = reply(&build_query(7, &upper), ResponseCode::NoError, 1);
        assert_eq!(classify(&r, 7, &n), Reply::Answer(DnsOutcome::Ok));
    }
}
