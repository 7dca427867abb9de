//! ICMPv4 echo request/reply (RFC 792) and the RFC 1071 Internet checksum.
//! Pure: build into a buffer, parse a borrowed buffer; malformed input is an
//! error value.

/// ICMP type of an echo reply.
pub(crate) const ECHO_REPLY: u8 = 0;
/// ICMP type of an echo request.
pub(crate) const ECHO_REQUEST: u8 = 8;
/// Length of the ICMP echo header (type, code, checksum, id, seq).
pub(crate) const HEADER_LEN: usize = 8;
/// Largest ICMP message accepted (the largest IPv4 payload).
pub(crate) const MAX_LEN: usize = 65515;

/// Why an ICMP message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IcmpError {
    /// Shorter than the header it must carry.
    #[error("ICMP message too short: {0} bytes")]
    Short(usize),
    /// Longer than an IPv4 packet can carry.
    #[error("ICMP message too long: {0} bytes")]
    Oversized(usize),
    /// The Internet checksum does not verify.
    #[error("bad ICMP checksum")]
    Checksum,
    /// Not an echo request or reply (type, code).
    #[error("not an ICMP echo: type {0} code {1}")]
    NotEcho(u8, u8),
    /// The IPv4 header around it is malformed.
    #[error("bad IPv4 header")]
    BadIpHeader,
}

/// Echo request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EchoKind {
    /// Type 8.
    Request,
    /// Type 0.
    Reply,
}

/// A parsed echo message borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Echo<'a> {
    /// Request or reply.
    pub kind: EchoKind,
    /// Identifier (rewritten by the kernel on unprivileged DGRAM sockets).
    pub ident: u16,
    /// Sequence number.
    pub seq: u16,
    /// Data after the header.
    pub payload: &'a [u8],
}

/// RFC 1071 Internet checksum of `data` (odd lengths padded with a zero).
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    // Fold the carries back in (end-around carry).
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes an echo request with `ident`, `seq` and `payload` into `out`
/// (cleared first), checksum included.
pub(crate) fn build_echo_request(ident: u16, seq: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[ECHO_REQUEST, 0, 0, 0]);
    out.extend_from_slice(&ident.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    let c = checksum(out);
    out[2..4].copy_from_slice(&c.to_be_bytes());
}

/// Parses an ICMP echo message (no IP header), verifying its checksum.
pub(crate) fn parse_echo(buf: &[u8]) -> Result<Echo<'_>, IcmpError> {
    if buf.len() < HEADER_LEN {
        return Err(IcmpError::Short(buf.len()));
    }
    if buf.len() > MAX_LEN {
        return Err(IcmpError::Oversized(buf.len()));
    }
    // A correct checksum makes the one's-complement sum of the whole message
    // all ones, i.e. its checksum zero.
    if checksum(buf) != 0 {
        return Err(IcmpError::Checksum);
    }
    let kind = match (buf[0], buf[1]) {
        (ECHO_REQUEST, 0) => EchoKind::Request,
        (ECHO_REPLY, 0) => EchoKind::Reply,
        (t, c) => return Err(IcmpError::NotEcho(t, c)),
    };
    Ok(Echo {
        kind,
        ident: u16::from_be_bytes([buf[4], buf[5]]),
        seq: u16::from_be_bytes([buf[6], buf[7]]),
        payload: &buf[HEADER_LEN..],
    })
}

/// Skips the IPv4 header that raw sockets deliver in front of the ICMP
/// message, checking version, header length and total length.
pub(crate) fn strip_ipv4_header(buf: &[u8]) -> Result<&[u8], IcmpError> {
    let first = *buf.first().ok_or(IcmpError::BadIpHeader)?;
    if first >> 4 != 4 {
        return Err(IcmpError::BadIpHeader);
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || buf.len() < ihl {
        return Err(IcmpError::BadIpHeader);
    }
    let total = buf
        .get(2..4)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(IcmpError::BadIpHeader)?;
    // The payload length is what recv returned; the total length is only
    // checked for consistency with the header length.
    if total < ihl {
        return Err(IcmpError::BadIpHeader);
    }
    Ok(&buf[ihl..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_known_vectors() {
        // RFC 1071 section 3: the sum of these bytes is 0xddf2.
        let rfc = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&rfc), !0xddf2);
        assert_eq!(checksum(&rfc), 0x220d);
        // A classic IPv4 header whose checksum field holds 0xb861.
        let mut ip = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&ip), 0xb861);
        ip[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&ip), 0, "a message with its checksum sums to zero");
        // Odd length: the last byte is padded with zero.
        assert_eq!(checksum(&[0x01]), !0x0100);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn request_round_trip_and_reply_parse() {
        let mut buf = Vec::new();
        build_echo_request(0x1234, 7, b"hello", &mut buf);
        assert_eq!(buf.len(), HEADER_LEN + 5);
        let e = parse_echo(&buf).expect("parse");
        assert_eq!(
            e,
            Echo {
                kind: EchoKind::Request,
                ident: 0x1234,
                seq: 7,
                payload: b"hello"
            }
        );
        // A reply is the request with type 0 and a fixed-up checksum.
        let mut reply = buf.clone();
        reply[0] = ECHO_REPLY;
        reply[2..4].fill(0);
        let c = checksum(&reply);
        reply[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(parse_echo(&reply).map(|e| e.kind), Ok(EchoKind::Reply));
    }

    #[test]
    fn malformed_input_is_rejected() {
        let mut buf = Vec::new();
        build_echo_request(1, 2, &[0xAB; 56], &mut buf);
        assert_eq!(parse_echo(&buf[..7]), Err(IcmpError::Short(7)));
        assert_eq!(parse_echo(&[]), Err(IcmpError::Short(0)));
        let mut bad = buf.clone();
        bad[20] ^= 0x40;
        assert_eq!(parse_echo(&bad), Err(IcmpError::Checksum));
        // Destination unreachable (type 3, code 3) with a valid checksum.
        let mut unreach = vec![3u8, 3, 0, 0, 0, 0, 0, 0];
        let c = checksum(&unreach);
        unreach[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(parse_echo(&unreach), Err(IcmpError::NotEcho(3, 3)));
        assert_eq!(
            parse_echo(&vec![0u8; MAX_LEN + 1]),
            Err(IcmpError::Oversized(MAX_LEN + 1))
        );
    }

    #[test]
    fn ipv4_header_is_stripped_and_checked() {
        let mut pkt = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        pkt.extend_from_slice(&[0u8; 8]);
        assert_eq!(strip_ipv4_header(&pkt).map(<[u8]>::len), Ok(8));
        // Options: IHL 6 words.
        let mut opt = pkt.clone();
        opt[0] = 0x46;
        opt.splice(20..20, [1u8, 1, 1, 1]);
        assert_eq!(strip_ipv4_header(&opt).map(<[u8]>::len), Ok(8));
        assert_eq!(strip_ipv4_header(&[]), Err(IcmpError::BadIpHeader));
        assert_eq!(strip_ipv4_header(&pkt[..10]), Err(IcmpError::BadIpHeader));
        let mut v6 = pkt.clone();
        v6[0] = 0x65;
        assert_eq!(strip_ipv4_header(&v6), Err(IcmpError::BadIpHeader));
        let mut short_ihl = pkt;
        short_ihl[0] = 0x44;
        assert_eq!(strip_ipv4_header(&short_ihl), Err(IcmpError::BadIpHeader));
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes() {
        let bytes = super::super::test_bytes(0x2545_F491_4F6C_DD1D, 200);
        for n in 0..bytes.len() {
            let _ = parse_echo(&bytes[..n]);
            let _ = strip_ipv4_header(&bytes[..n]);
        }
    }
}
