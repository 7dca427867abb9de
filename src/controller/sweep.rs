//! Which leftover probe objects the sweeper deletes (pure).

use std::time::Duration;

use super::metric_labels::SweepReason;

/// Why (or whether) to delete a probe object.
///
/// `age` comes from `creationTimestamp` against the controller's wall clock:
/// two clocks, so only used with margins of a minute or more. Objects of an
/// earlier run must also be older than `min_age`, so a leader that has just
/// lost its lease can finish its in-flight probe.
pub(crate) fn decide(
    object_run: Option<&str>,
    my_run: &str,
    age: Duration,
    timeout: Duration,
    min_age: Duration,
) -> Option<SweepReason> {
    if object_run != Some(my_run) && age >= min_age {
        Some(SweepReason::EarlierRun)
    } else if age > timeout {
        Some(SweepReason::Expired)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn earlier_runs_and_expired_objects_go() {
        let t = S(120);
        assert_eq!(
            decide(Some("old"), "new", S(61), t, S(60)),
            Some(SweepReason::EarlierRun)
        );
        assert_eq!(
            decide(None, "new", S(61), t, S(60)),
            Some(SweepReason::EarlierRun)
        );
        assert_eq!(decide(Some("old"), "new", S(10), t, S(60)), None);
        assert_eq!(decide(Some("new"), "new", S(100), t, S(60)), None);
        assert_eq!(
            decide(Some("new"), "new", S(121), t, S(60)),
            Some(SweepReason::Expired)
        );
        assert_eq!(
            decide(Some("old"), "new", S(0), t, S(0)),
            Some(SweepReason::EarlierRun)
        );
    }
}
