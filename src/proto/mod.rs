//! Wire formats, pure encode/decode with no IO (and the DNS names and
//! resolver limits of `dns`). Malformed input is an error value, never a
//! panic.

pub mod bandwidth;
pub(crate) mod dns;
pub mod echo;
pub(crate) mod icmp;

/// Why a message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the fixed header.
    #[error("message too short: {0} bytes")]
    Short(usize),
    /// More bytes than the format allows.
    #[error("message too long: {0} bytes")]
    Oversized(usize),
    /// The magic number did not match.
    #[error("bad magic")]
    BadMagic,
    /// Unknown version.
    #[error("unsupported version {0}")]
    Version(u8),
    /// A field holds a value outside its enum.
    #[error("bad field {0}")]
    BadField(&'static str),
}

/// Deterministic pseudo-random bytes (xorshift64) for the decoders'
/// never-panic tests.
#[cfg(test)]
fn test_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}
