//! Request classification as the apiserver does it: the `scope` and
//! `code` labels of the apiserver request metrics.

use super::metric_labels::{CodeClass, Scope, Verb};

/// The apiserver's `CleanScope`: `resource` if a name is set or the verb is
/// a create, else `namespace` if the request is namespaced, else `cluster`.
pub(crate) fn scope(verb: Verb, name_set: bool, namespaced: bool) -> Scope {
    if name_set || verb == Verb::Post {
        Scope::Resource
    } else if namespaced {
        Scope::Namespace
    } else {
        Scope::Cluster
    }
}

/// The `code` label of an HTTP status (`None`: no response at all).
pub(crate) fn code_class(status: Option<u16>) -> CodeClass {
    match status {
        None => CodeClass::Error,
        Some(s) if s >= 500 => CodeClass::Server5xx,
        Some(s) if s >= 400 => CodeClass::Client4xx,
        Some(_) => CodeClass::Ok2xx,
    }
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
}
