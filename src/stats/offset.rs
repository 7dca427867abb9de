//! NTP-style clock offset between prober and responder from one echo
//! exchange (RFC 5905 section 8): `offset = ((t2 - t1) + (t3 - t4)) / 2`,
//! true within +- RTT/2 whatever the path asymmetry.

/// Clock offset estimate of one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEstimate {
    /// Responder clock minus prober clock, ns.
    pub offset_ns: i64,
    /// Round trip excluding the responder's hold time, ns.
    pub rtt_ns: u64,
    /// Bound on the error of `offset_ns`: RTT/2, ns.
    pub error_bound_ns: u64,
}

/// Estimates the offset from the prober's send wall time `t1`, the
/// responder's receive `t2` and send `t3` wall times, and the prober's
/// receive wall time `t4` (ns since the epoch). Returns `None` when the
/// timestamps are inconsistent (responder hold time negative, or a
/// negative round trip), which a clock step or a bogus reply produces.
pub fn clock_offset(t1: u64, t2: u64, t3: u64, t4: u64) -> Option<OffsetEstimate> {
    let (t1, t2, t3, t4) = (
        i128::from(t1),
        i128::from(t2),
        i128::from(t3),
        i128::from(t4),
    );
    let hold = t3 - t2;
    let rtt = (t4 - t1) - hold;
    if hold < 0 || rtt < 0 {
        return None;
    }
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    Some(OffsetEstimate {
        offset_ns: i64::try_from(offset).ok()?,
        rtt_ns: u64::try_from(rtt).ok()?,
        error_bound_ns: u64::try_from(rtt / 2).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000_000_000;

    #[test]
    fn symmetric_path_recovers_the_offset_exactly() {
        // Responder 5 ms ahead, 100 us each way, 20 us hold.
        let off = 5_000_000u64;
        let t1 = T0;
        let t2 = t1 + 100_000 + off;
        let t3 = t2 + 20_000;
        let t4 = t3 - off + 100_000;
        let e = clock_offset(t1, t2, t3, t4).expect("consistent");
        assert_eq!(e.offset_ns, 5_000_000);
        assert_eq!(e.rtt_ns, 200_000);
        assert_eq!(e.error_bound_ns, 100_000);
    }

    #[test]
    fn asymmetry_stays_within_the_bound() {
        // Responder 3 ms behind; 300 us out, 50 us back.
        let t1 = T0;
        let t2 = t1 + 300_000 - 3_000_000;
        let t3 = t2 + 10_000;
        let t4 = t3 + 3_000_000 + 50_000;
        let e = clock_offset(t1, t2, t3, t4).expect("consistent");
        assert_eq!(e.rtt_ns, 350_000);
        let err = (e.offset_ns - (-3_000_000)).unsigned_abs();
        assert!(err <= e.error_bound_ns, "{err} > {}", e.error_bound_ns);
        assert_eq!(e.offset_ns, -3_000_000 + 125_000);
    }

    #[test]
    fn inconsistent_timestamps_are_rejected() {
        // Responder sent before it received.
        assert_eq!(clock_offset(T0, T0 + 10, T0 + 5, T0 + 20), None);
        // Prober received before it sent (its clock stepped back).
        assert_eq!(clock_offset(T0, T0 + 10, T0 + 10, T0 - 100), None);
    }
}
