//! The apiserver probe's targets (pure): the `kubernetes` Service address
//! and every apiserver endpoint, each probed once per round.

use std::net::{IpAddr, SocketAddr};

use crate::metrics::labels::ApiserverTarget;

/// The Service address from the pod environment the kubelet sets
/// (`KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT`), if both parse.
pub(crate) fn service_from_env(host: Option<&str>, port: Option<&str>) -> Option<SocketAddr> {
    let ip: IpAddr = host?.trim().parse().ok()?;
    let port: u16 = port?.trim().parse().ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// Every target of a round: the Service first, then the endpoints
/// (configured and from the plan) once each, sorted. An endpoint equal to
/// the Service address is the Service (a cluster without kube-proxy
/// indirection) and is not probed twice.
pub(crate) fn targets(
    service: Option<SocketAddr>,
    configured: &[SocketAddr],
    planned: &[SocketAddr],
) -> Vec<(ApiserverTarget, SocketAddr)> {
    let mut direct: Vec<SocketAddr> = configured
        .iter()
        .chain(planned)
        .copied()
        .filter(|a| Some(*a) != service)
        .collect();
    direct.sort();
    direct.dedup();
    service
        .map(|s| (ApiserverTarget::Service, s))
        .into_iter()
        .chain(direct.into_iter().map(|a| (ApiserverTarget::Direct, a)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn service_from_the_environment() {
        assert_eq!(
            service_from_env(Some("10.96.0.1"), Some("443")),
            Some(a("10.96.0.1:443"))
        );
        assert_eq!(
            service_from_env(Some("fd00::1"), Some("443")),
            Some(a("[fd00::1]:443"))
        );
        assert_eq!(service_from_env(None, Some("443")), None);
        assert_eq!(service_from_env(Some("10.96.0.1"), None), None);
        assert_eq!(service_from_env(Some("kubernetes"), Some("443")), None);
        assert_eq!(service_from_env(Some("10.96.0.1"), Some("0")), None);
    }

    #[test]
    fn targets_are_the_service_then_each_endpoint_once() {
        let t = targets(
            Some(a("10.96.0.1:443")),
            &[a("192.0.2.2:6443")],
            &[a("192.0.2.1:6443"), a("192.0.2.2:6443"), a("10.96.0.1:443")],
        );
        assert_eq!(
            t,
            vec![
                (ApiserverTarget::Service, a("10.96.0.1:443")),
                (ApiserverTarget::Direct, a("192.0.2.1:6443")),
                (ApiserverTarget::Direct, a("192.0.2.2:6443")),
            ]
        );
        assert!(targets(None, &[], &[]).is_empty());
        assert_eq!(
            targets(None, &[], &[a("192.0.2.1:6443")]),
            vec![(ApiserverTarget::Direct, a("192.0.2.1:6443"))]
        );
    }
}
