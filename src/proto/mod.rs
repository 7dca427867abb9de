//! Wire formats, pure encode/decode with no IO. Malformed input is an
//! error value, never a panic.

pub mod bandwidth;
pub mod echo;
pub mod icmp;

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
