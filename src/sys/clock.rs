//! Wall-clock reads in the representation the echo wire format uses.

use std::time::{SystemTime, UNIX_EPOCH};

/// CLOCK_REALTIME now, ns since the Unix epoch (0 if the clock is before
/// 1970, which only a badly broken host has).
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn realtime_is_after_2020_and_advances() {
        let a = realtime_ns();
        assert!(a > 1_577_836_800_000_000_000, "{a}");
        let b = realtime_ns();
        assert!(b >= a || a - b < 1_000_000, "stepped back {a} -> {b}");
    }
}
