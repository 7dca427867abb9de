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

/// Best effort: moves the calling latency-critical thread (prober or echo
/// responder) to SCHED_FIFO priority 1, as chronyd and ptp4l do, so CPU
/// load on the node delays its wake-ups less and is not reported as network
/// latency. These threads sleep almost always and work microseconds per
/// probe; the kernel's RT throttling bounds them regardless. Without
/// CAP_SYS_NICE it stays at normal priority and says so at debug level.
pub fn prefer_realtime(thread: &str) {
    match set_realtime_fifo(1) {
        Ok(()) => tracing::debug!(thread, "Running at SCHED_FIFO priority 1"),
        Err(e) => {
            tracing::debug!(thread, error = %e, "Real-time priority not permitted; normal priority")
        }
    }
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

/// Moves the calling thread to the SCHED_FIFO real-time class at
/// `priority` (1..=99). Needs CAP_SYS_NICE (or an RLIMIT_RTPRIO); fails with
/// `PermissionDenied` otherwise. Tests use it to make a stand-in peer
/// responder immune to CPU contention on the test host.
pub fn set_realtime_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // that outlives the call, which only reads it.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if r == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

    #[test]
    fn realtime_fifo_is_set_or_refused_cleanly() {
        std::thread::spawn(|| {
            assert_eq!(
                set_realtime_fifo(0).map_err(|e| e.kind()),
                Err(io::ErrorKind::InvalidInput),
                "priority 0 is not a FIFO priority"
            );
            match set_realtime_fifo(1) {
                Ok(()) => assert_eq!(policy(), libc::SCHED_FIFO),
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::PermissionDenied),
            }
        })
        .join()
        .expect("thread");
    }

    fn policy() -> i32 {
        // SAFETY: sched_getscheduler(0) reads the calling thread's policy
        // and touches no memory.
        unsafe { libc::sched_getscheduler(0) }
    }
}
