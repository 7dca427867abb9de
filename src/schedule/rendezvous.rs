//! Rendezvous (highest-random-weight) hashing, stable across builds: the
//! probe plan ranks peer nodes by [`weight`] (`plan::fanout`), and plans,
//! slot schedules and pod placement derive their other stable choices from
//! [`stable_hash`]. Rendezvous choices are stable under churn: a node
//! joining or leaving changes at most one choice of any other node.

/// FNV-1a, then a SplitMix64 finaliser: stable across builds and platforms
/// (std's hasher is not guaranteed to be), which matters while agents of two
/// versions run side by side during a rollout.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous weight of `peer_node` as seen from `my_node`.
pub(crate) fn weight(my_node: &str, peer_node: &str) -> u64 {
    stable_hash(&[my_node.as_bytes(), peer_node.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Agents and the controller of two versions must agree during a
    /// rollout: the hash is pinned, not just deterministic in one build.
    #[test]
    fn the_hash_is_pinned() {
        assert_eq!(stable_hash(&[b"node-a", b"node-b"]), 0x744b_e04d_da30_f0b8);
        assert_ne!(stable_hash(&[b"ab"]), stable_hash(&[b"a", b"b"]));
        assert_eq!(weight("n1", "n2"), stable_hash(&[b"n1", b"n2"]));
        assert_ne!(weight("n1", "n2"), weight("n2", "n1"));
    }
}
