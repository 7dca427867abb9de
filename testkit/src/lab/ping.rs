//! iputils `ping` as a reference tool in the lab: its counts and per-reply
//! RTTs.

use super::netlab::Lab;

/// What ping printed.
pub struct PingStats {
    /// Echo requests sent.
    pub tx: u64,
    /// Replies received.
    pub rx: u64,
    /// Per-reply RTTs in seconds, sorted.
    pub rtts: Vec<f64>,
}

impl PingStats {
    /// The lowest RTT, seconds.
    pub fn min(&self) -> f64 {
        self.rtts.first().copied().expect("no ping replies")
    }
    /// The median RTT, seconds.
    pub fn median(&self) -> f64 {
        assert!(!self.rtts.is_empty(), "no ping replies");
        self.rtts[self.rtts.len() / 2]
    }
}

/// Runs `ping -n ARGS` inside `ns` and reads what it printed.
pub fn ping(lab: &Lab, ns: &str, args: &[&str]) -> PingStats {
    let mut full = vec!["ping", "-n"];
    full.extend_from_slice(args);
    let out = lab.exec(ns, &full);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut st = PingStats {
        tx: 0,
        rx: 0,
        rtts: Vec::new(),
    };
    for line in text.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            st.tx = nums.first().copied().unwrap_or(0);
            st.rx = nums.get(1).copied().unwrap_or(0);
        }
        if let Some(t) = line.split("time=").nth(1) {
            if let Some(ms) = t
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            {
                st.rtts.push(ms / 1e3);
            }
        }
    }
    st.rtts.sort_by(f64::total_cmp);
    st
}
