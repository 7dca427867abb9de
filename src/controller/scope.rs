//! Request classification as the apiserver does it, and histogram buckets
//! with the SLO thresholds on edges.

use super::labels::{CodeClass, Scope, Verb};

/// The apiserver's `CleanScope`: `resource` if a name is set or the verb is
/// a create, else `namespace` if the request is namespaced, else `cluster`.
pub fn scope(verb: Verb, name_set: bool, namespaced: bool) -> Scope {
    if name_set || verb == Verb::Post {
        Scope::Resource
    } else if namespaced {
        Scope::Namespace
    } else {
        Scope::Cluster
    }
}

/// The `code` label of an HTTP status (`None`: no response at all).
pub fn code_class(status: Option<u16>) -> CodeClass {
    match status {
        None => CodeClass::Error,
        Some(s) if s >= 500 => CodeClass::Server5xx,
        Some(s) if s >= 400 => CodeClass::Client4xx,
        Some(_) => CodeClass::Ok2xx,
    }
}

/// apiserver request buckets: finer low ones, then the apiserver's own
/// (`apiserver_request_duration_seconds`). 1 s, 5 s and 30 s are edges.
pub fn apiserver_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0,
        4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    ]
}

/// Pod startup buckets: finer low ones, then the kubelet's. 5 s is an edge.
pub fn pod_startup_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0,
        20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 300.0, 600.0,
    ]
}

/// Lease renewal gap buckets around the kubelet's 10 s renew interval and
/// the node lifecycle controller's 40-50 s grace period.
pub fn lease_gap_buckets() -> Vec<f64> {
    vec![
        1.0, 2.5, 5.0, 8.0, 9.0, 10.0, 11.0, 12.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_matches_the_apiserver() {
        assert_eq!(scope(Verb::Post, false, true), Scope::Resource);
        assert_eq!(scope(Verb::Get, true, true), Scope::Resource);
        assert_eq!(scope(Verb::Delete, true, true), Scope::Resource);
        assert_eq!(scope(Verb::List, false, true), Scope::Namespace);
        assert_eq!(scope(Verb::Watch, false, true), Scope::Namespace);
        assert_eq!(scope(Verb::List, false, false), Scope::Cluster);
        // A watch on one named object is resource-scoped.
        assert_eq!(scope(Verb::Watch, true, true), Scope::Resource);
    }

    #[test]
    fn code_classes() {
        assert_eq!(code_class(None), CodeClass::Error);
        assert_eq!(code_class(Some(200)), CodeClass::Ok2xx);
        assert_eq!(code_class(Some(201)), CodeClass::Ok2xx);
        assert_eq!(code_class(Some(409)), CodeClass::Client4xx);
        assert_eq!(code_class(Some(429)), CodeClass::Client4xx);
        assert_eq!(code_class(Some(503)), CodeClass::Server5xx);
    }

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
