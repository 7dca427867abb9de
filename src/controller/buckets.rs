//! Bucket layouts of the controller's histograms, with the SLO thresholds
//! on bucket edges.

/// apiserver request buckets: finer low ones, then the apiserver's own
/// (`apiserver_request_duration_seconds`). 1 s, 5 s and 30 s are edges.
pub(crate) fn apiserver_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0,
        4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    ]
}

/// Pod startup buckets: finer low ones, then the kubelet's. 5 s is an edge.
pub(crate) fn pod_startup_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0,
        20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 300.0, 600.0,
    ]
}

/// Lease renewal gap buckets around the kubelet's 10 s renew interval and
/// the node lifecycle controller's 40-50 s grace period.
pub(crate) fn lease_gap_buckets() -> Vec<f64> {
    vec![
        1.0, 2.5, 5.0, 8.0, 9.0, 10.0, 11.0, 12.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_edge(b: &[f64], x: f64) -> bool {
        b.iter().any(|e| (e - x).abs() < 1e-12)
    }

    #[test]
    fn slo_thresholds_are_bucket_edges() {
        for (b, edges) in [
            (apiserver_buckets(), &[1.0, 5.0, 30.0][..]),
            (pod_startup_buckets(), &[5.0][..]),
            (lease_gap_buckets(), &[10.0, 40.0][..]),
        ] {
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{b:?} not increasing");
            for e in edges {
                assert!(has_edge(&b, *e), "{e} not an edge of {b:?}");
            }
        }
    }
}
