//! The only module with `unsafe`: thin, safe wrappers over Linux socket
//! options and syscalls that socket2 does not cover. Every unsafe block has
//! a `// SAFETY:` comment.

pub mod clock;
pub mod epoll;
pub mod icmp;
pub mod pktinfo;
pub mod pmtu;
pub mod poll;
pub mod tcp_info;
pub mod thread;
pub mod timestamp;
pub mod wake;
