//! Per-thread scheduling knobs.

use std::io;

/// Sets the calling thread's timer slack (PR_SET_TIMERSLACK) to `ns`
/// nanoseconds, so its timed waits wake when asked instead of up to the
/// default 50 us later.
pub fn set_timer_slack(ns: u64) -> io::Result<()> {
    let ns =
        libc::c_ulong::try_from(ns).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument by value and
    // touches no memory of ours; the unused arguments are passed as 0.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_TIMERSLACK,
            ns,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's timer slack in nanoseconds (PR_GET_TIMERSLACK).
pub fn timer_slack() -> io::Result<u64> {
    // SAFETY: PR_GET_TIMERSLACK takes no pointer and returns the slack as
    // the call's result.
    let r = unsafe {
        libc::prctl(
            libc::PR_GET_TIMERSLACK,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    u64::try_from(r).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_slack_is_per_thread_and_settable() {
        // A fresh thread, so the test runner's threads keep their slack.
        std::thread::spawn(|| {
            set_timer_slack(1).expect("set");
            assert_eq!(timer_slack().expect("get"), 1);
            set_timer_slack(20_000).expect("set");
            assert_eq!(timer_slack().expect("get"), 20_000);
        })
        .join()
        .expect("thread");
    }
}
