//! Test support shared by the netlab integration tests: the namespace lab
//! ([`netlab`]), the TUN delay line ([`delayline`]), a Prometheus text
//! scraper ([`prom`]) and the agent launcher ([`agents`]).

pub mod agents;
pub mod delayline;
pub mod netlab;
pub mod ping;
pub mod prom;
pub mod prometheus;
pub mod reach;
pub mod sys;

/// Env var that skips the lab tests where root is unavailable. `.ci/run`
/// never sets it, so CI without root fails loudly instead of passing empty.
pub const SKIP_ENV: &str = "KUBEPULSE_SKIP_NETLAB";

/// Returns `false` (the test should return early) only when the skip env var
/// is set; otherwise panics unless the process is root.
pub fn require_root() -> bool {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("{SKIP_ENV}=1: skipping a netlab test");
        return false;
    }
    assert_eq!(
        sys::euid(),
        0,
        "the netlab tests need root (network namespaces, TUN, tc, nft); \
         run them as root or set {SKIP_ENV}=1 to skip them explicitly"
    );
    true
}
