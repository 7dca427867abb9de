//! Round-trip time from a kernel receive timestamp, guarded against wall
//! clock steps. Kernel stamps are CLOCK_REALTIME, so the send time must be a
//! REALTIME read too; a step between the two would corrupt the sample.

use std::time::Duration;

/// Largest disagreement between wall and monotonic elapsed time accepted.
pub const MAX_CLOCK_DISAGREEMENT: Duration = Duration::from_millis(1);

/// The wall clock moved differently from the monotonic clock during the
/// exchange: the sample is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockStep;

/// Full RTT from the REALTIME read just before send (`tx_real_ns`) to the
/// kernel receive stamp (`rx_real_ns`). `mono_elapsed` and `real_elapsed_ns`
/// are the monotonic and wall time from just before send to when the reply
/// was processed: they must agree within [`MAX_CLOCK_DISAGREEMENT`].
/// Comparing the two elapsed times over the same span (rather than the
/// kernel RTT with the user-space RTT) keeps a slow wake-up of the prober
/// thread from looking like a clock step.
pub fn kernel_rtt(
    tx_real_ns: u64,
    rx_real_ns: u64,
    real_elapsed_ns: i128,
    mono_elapsed: Duration,
) -> Result<Duration, ClockStep> {
    let drift = real_elapsed_ns - mono_elapsed.as_nanos() as i128;
    if drift.unsigned_abs() > MAX_CLOCK_DISAGREEMENT.as_nanos() {
        return Err(ClockStep);
    }
    let rtt = rx_real_ns.checked_sub(tx_real_ns).ok_or(ClockStep)?;
    // The reply cannot have arrived after it was processed.
    if u128::from(rtt) > mono_elapsed.as_nanos() + MAX_CLOCK_DISAGREEMENT.as_nanos() {
        return Err(ClockStep);
    }
    Ok(Duration::from_nanos(rtt))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000_000_000;
    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn full_round_trip_from_the_kernel_stamp() {
        // Reply stamped 80 us after send, processed 3 ms later (slow wake-up).
        let got = kernel_rtt(T, T + 80_000, 3_080_000, us(3_080));
        assert_eq!(got, Ok(us(80)));
        // Small wall/mono disagreement (NTP slew) is tolerated.
        assert_eq!(kernel_rtt(T, T + 80_000, 3_100_000, us(3_080)), Ok(us(80)));
    }

    #[test]
    fn clock_steps_drop_the_sample() {
        // Wall clock stepped forward 5 ms during the exchange.
        assert_eq!(
            kernel_rtt(T, T + 5_080_000, 5_100_000, us(100)),
            Err(ClockStep)
        );
        // Stepped back: the stamp is before the send.
        assert_eq!(kernel_rtt(T, T - 10, -50_000, us(100)), Err(ClockStep));
        // Stamp later than processing yet elapsed times agree: inconsistent.
        assert_eq!(
            kernel_rtt(T, T + 9_000_000, 100_000, us(100)),
            Err(ClockStep)
        );
    }
}
