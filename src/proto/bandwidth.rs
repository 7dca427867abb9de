//! The bandwidth burst handshake. The prober connects to the bandwidth
//! responder and sends a 24-byte request; the responder answers with an
//! 8-byte response. On `Ok`, a `Sink` burst has the prober send `bytes`
//! bytes which the responder discards; a `Source` burst has the responder
//! send `bytes` bytes, then close. Either side stops at `max_duration`.
//!
//! ```text
//! request:  0..4 magic "KPB1"  4 version  5 direction (1 sink, 2 source)
//!           6..8 reserved  8..16 bytes  16..20 max duration, ms  20..24 reserved
//! response: 0..4 magic "KPB1"  4 version  5 status  6..8 reserved
//! ```

use std::time::Duration;

use super::DecodeError;

/// Magic number of bandwidth messages.
pub const MAGIC: [u8; 4] = *b"KPB1";
/// Current version.
pub const VERSION: u8 = 1;
/// Request length.
pub const REQUEST_LEN: usize = 24;
/// Response length.
pub const RESPONSE_LEN: usize = 8;

/// Which way the data flows, seen from the responder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The prober sends; the responder discards.
    Sink = 1,
    /// The responder sends; the prober receives.
    Source = 2,
}

/// A burst request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Data direction.
    pub mode: Mode,
    /// Bytes to transfer.
    pub bytes: u64,
    /// Upper bound on the transfer time.
    pub max_duration: Duration,
}

/// The responder's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Go ahead.
    Ok = 0,
    /// Another burst is running on this responder.
    Busy = 1,
    /// The request exceeds the responder's limits.
    OverLimit = 2,
    /// The request did not parse.
    Malformed = 3,
}

fn check_header(buf: &[u8]) -> Result<(), DecodeError> {
    if buf[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if buf[4] != VERSION {
        return Err(DecodeError::Version(buf[4]));
    }
    Ok(())
}

impl Request {
    /// Encodes the request.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut b = [0u8; REQUEST_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.mode as u8;
        b[8..16].copy_from_slice(&self.bytes.to_be_bytes());
        let ms = u32::try_from(self.max_duration.as_millis()).unwrap_or(u32::MAX);
        b[16..20].copy_from_slice(&ms.to_be_bytes());
        b
    }

    /// Decodes a request.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() != REQUEST_LEN {
            return Err(if buf.len() < REQUEST_LEN {
                DecodeError::Short(buf.len())
            } else {
                DecodeError::Oversized(buf.len())
            });
        }
        check_header(buf)?;
        let mode = match buf[5] {
            1 => Mode::Sink,
            2 => Mode::Source,
            _ => return Err(DecodeError::BadField("mode")),
        };
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&buf[8..16]);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&buf[16..20]);
        Ok(Request {
            mode,
            bytes: u64::from_be_bytes(b8),
            max_duration: Duration::from_millis(u64::from(u32::from_be_bytes(b4))),
        })
    }
}

impl Status {
    /// Encodes a response carrying this status.
    pub fn encode(self) -> [u8; RESPONSE_LEN] {
        let mut b = [0u8; RESPONSE_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self as u8;
        b
    }

    /// Decodes a response.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        if buf.len() != RESPONSE_LEN {
            return Err(DecodeError::Short(buf.len()));
        }
        check_header(buf)?;
        match buf[5] {
            0 => Ok(Status::Ok),
            1 => Ok(Status::Busy),
            2 => Ok(Status::OverLimit),
            3 => Ok(Status::Malformed),
            _ => Err(DecodeError::BadField("status")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = Request {
            mode: Mode::Source,
            bytes: 32 << 20,
            max_duration: Duration::from_secs(1),
        };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        for s in [
            Status::Ok,
            Status::Busy,
            Status::OverLimit,
            Status::Malformed,
        ] {
            assert_eq!(Status::decode(&s.encode()), Ok(s));
        }
    }

    #[test]
    fn malformed_is_rejected() {
        let r = Request {
            mode: Mode::Sink,
            bytes: 1,
            max_duration: Duration::from_millis(5),
        }
        .encode();
        assert_eq!(Request::decode(&r[..3]), Err(DecodeError::Short(3)));
        let mut bad = r;
        bad[5] = 7;
        assert_eq!(Request::decode(&bad), Err(DecodeError::BadField("mode")));
        let mut bad = r;
        bad[1] = 0;
        assert_eq!(Request::decode(&bad), Err(DecodeError::BadMagic));
        let mut s = Status::Ok.encode();
        s[5] = 200;
        assert_eq!(Status::decode(&s), Err(DecodeError::BadField("status")));
    }
}
