//! The echo message used by the UDP echo, TCP request/response and path MTU
//! probes. A 64-byte big-endian header, optionally followed by padding (path
//! MTU probes); the responder echoes the whole message with `kind = Reply`
//! and its own wall-clock receive and send times filled in (for NTP-style
//! clock offset estimation).
//!
//! ```text
//!  0..4   magic "KPE1"          4      version (1)     5  kind (1 req, 2 reply)
//!  6..8   reserved (0)          8..16  sequence number
//! 16..24  stream id (prober)   24..32  prober monotonic send time, ns
//! 32..40  prober wall send time, ns since the Unix epoch
//! 40..48  responder wall receive time, ns    48..56  responder wall send time, ns
//! 56..64  reserved (0)
//! ```

use super::DecodeError;

/// Magic number at the start of every echo message.
pub const MAGIC: [u8; 4] = *b"KPE1";
/// Current version.
pub const VERSION: u8 = 1;
/// Size of the fixed header; also the size of every TCP echo message.
pub const HEADER_LEN: usize = 64;
/// Largest message accepted: the largest IPv4 UDP payload, so path MTU
/// probes can search up to any interface MTU (loopback is 65536).
pub const MAX_LEN: usize = 65507;

/// Request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sent by a prober.
    Request = 1,
    /// Sent back by a responder.
    Reply = 2,
}

/// The decoded header of an echo message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EchoHeader {
    /// Sequence number within the stream.
    pub seq: u64,
    /// Identifies the prober stream (random per prober socket).
    pub stream: u64,
    /// Prober monotonic clock at send, ns (opaque to the responder).
    pub tx_mono_ns: u64,
    /// Prober wall clock at send, ns since the epoch.
    pub tx_real_ns: u64,
    /// Responder wall clock at receive, ns since the epoch (0 in requests).
    pub rx_real_ns: u64,
    /// Responder wall clock at reply send, ns since the epoch (0 in requests).
    pub reply_real_ns: u64,
}

impl EchoHeader {
    /// Writes a request header into `buf[..HEADER_LEN]`. Bytes after the
    /// header (padding) are left as they are.
    ///
    /// Returns `None` if `buf` is shorter than the header.
    pub fn encode_request(&self, buf: &mut [u8]) -> Option<()> {
        self.encode(Kind::Request, buf)
    }

    fn encode(&self, kind: Kind, buf: &mut [u8]) -> Option<()> {
        let h = buf.get_mut(..HEADER_LEN)?;
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5] = kind as u8;
        h[6..8].fill(0);
        h[8..16].copy_from_slice(&self.seq.to_be_bytes());
        h[16..24].copy_from_slice(&self.stream.to_be_bytes());
        h[24..32].copy_from_slice(&self.tx_mono_ns.to_be_bytes());
        h[32..40].copy_from_slice(&self.tx_real_ns.to_be_bytes());
        h[40..48].copy_from_slice(&self.rx_real_ns.to_be_bytes());
        h[48..56].copy_from_slice(&self.reply_real_ns.to_be_bytes());
        h[56..64].fill(0);
        Some(())
    }

    /// Decodes a message of either kind, checking length, magic and version.
    pub fn decode(buf: &[u8]) -> Result<(Kind, EchoHeader), DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Short(buf.len()));
        }
        if buf.len() > MAX_LEN {
            return Err(DecodeError::Oversized(buf.len()));
        }
        if buf[0..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if buf[4] != VERSION {
            return Err(DecodeError::Version(buf[4]));
        }
        let kind = match buf[5] {
            1 => Kind::Request,
            2 => Kind::Reply,
            _ => return Err(DecodeError::BadField("kind")),
        };
        let u = |r: std::ops::Range<usize>| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[r]);
            u64::from_be_bytes(b)
        };
        Ok((
            kind,
            EchoHeader {
                seq: u(8..16),
                stream: u(16..24),
                tx_mono_ns: u(24..32),
                tx_real_ns: u(32..40),
                rx_real_ns: u(40..48),
                reply_real_ns: u(48..56),
            },
        ))
    }
}

/// Turns a request in `buf` into its reply in place: checks it, sets the
/// kind and stamps the responder's wall-clock receive and send times. The
/// padding is kept, so the reply has the request's length.
pub fn make_reply(buf: &mut [u8], rx_real_ns: u64, reply_real_ns: u64) -> Result<(), DecodeError> {
    let (kind, mut h) = EchoHeader::decode(buf)?;
    if kind != Kind::Request {
        return Err(DecodeError::BadField("kind"));
    }
    h.rx_real_ns = rx_real_ns;
    h.reply_real_ns = reply_real_ns;
    h.encode(Kind::Reply, buf)
        .ok_or(DecodeError::Short(buf.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EchoHeader {
        EchoHeader {
            seq: 7,
            stream: 0xdead_beef,
            tx_mono_ns: 123,
            tx_real_ns: 1_700_000_000_000_000_000,
            rx_real_ns: 0,
            reply_real_ns: 0,
        }
    }

    #[test]
    fn request_round_trip_and_reply() {
        let mut buf = vec![0xAAu8; 1400];
        sample().encode_request(&mut buf).expect("fits");
        assert_eq!(EchoHeader::decode(&buf), Ok((Kind::Request, sample())));
        make_reply(&mut buf, 5, 6).expect("reply");
        let (kind, h) = EchoHeader::decode(&buf).expect("decode");
        assert_eq!(kind, Kind::Reply);
        assert_eq!((h.seq, h.rx_real_ns, h.reply_real_ns), (7, 5, 6));
        assert!(buf[HEADER_LEN..].iter().all(|b| *b == 0xAA), "padding kept");
    }

    #[test]
    fn malformed_input_is_rejected() {
        let mut buf = [0u8; HEADER_LEN];
        sample().encode_request(&mut buf).expect("fits");
        assert_eq!(EchoHeader::decode(&buf[..10]), Err(DecodeError::Short(10)));
        assert_eq!(EchoHeader::decode(&[]), Err(DecodeError::Short(0)));
        let big = vec![0u8; MAX_LEN + 1];
        assert_eq!(
            EchoHeader::decode(&big),
            Err(DecodeError::Oversized(MAX_LEN + 1))
        );
        let mut bad = buf;
        bad[0] = b'X';
        assert_eq!(EchoHeader::decode(&bad), Err(DecodeError::BadMagic));
        let mut bad = buf;
        bad[4] = 9;
        assert_eq!(EchoHeader::decode(&bad), Err(DecodeError::Version(9)));
        let mut bad = buf;
        bad[5] = 3;
        assert_eq!(EchoHeader::decode(&bad), Err(DecodeError::BadField("kind")));
        // A reply is not answered again (no reflection loops between responders).
        let mut reply = buf;
        make_reply(&mut reply, 1, 2).expect("reply");
        assert_eq!(
            make_reply(&mut reply, 1, 2),
            Err(DecodeError::BadField("kind"))
        );
        assert!(sample().encode_request(&mut [0u8; 10]).is_none());
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: every prefix of a pseudo-random stream.
        let bytes = super::super::test_bytes(0x9E37_79B9_7F4A_7C15, 300);
        for n in 0..bytes.len() {
            let mut b = bytes[..n].to_vec();
            let _ = EchoHeader::decode(&b);
            let _ = make_reply(&mut b, 0, 0);
        }
    }
}
