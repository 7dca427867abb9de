//! Pure: the apiserver endpoints of the `default/kubernetes` EndpointSlices,
//! which the plan publisher copies into every node's plan so each agent
//! can probe the apiserver directly as well as through the Service.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Namespace of the `kubernetes` Service.
pub(crate) const NAMESPACE: &str = "default";
/// Label selector of its EndpointSlices.
pub(crate) const SELECTOR: &str = "kubernetes.io/service-name=kubernetes";
/// Name of the Service port the apiserver serves on.
const PORT_NAME: &str = "https";

/// Every endpoint address not known to be unready, with the slice's
/// `https` port (or its only port), sorted and once each.
pub(crate) fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for s in slices {
        if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let ports = s.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some(PORT_NAME))
            .or(if ports.len() == 1 {
                ports.first()
            } else {
                None
            })
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let Some(port) = port else { continue };
        for e in &s.endpoints {
            // Unset readiness means ready (the API's documented default).
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            out.extend(
                e.addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn slice(
        kind: &str,
        ports: &[(Option<&str>, i32)],
        eps: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            address_type: kind.into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: n.map(String::from),
                        port: Some(*p),
                        ..EndpointPort::default()
                    })
                    .collect(),
            ),
            endpoints: eps
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..EndpointConditions::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn ready_addresses_with_the_https_port() {
        let a = slice(
            "IPv4",
            &[(Some("https"), 6443)],
            &[
                ("192.0.2.2", Some(true)),
                ("192.0.2.1", None),
                ("192.0.2.3", Some(false)),
            ],
        );
        let b = slice("IPv6", &[(None, 443)], &[("2001:db8::1", None)]);
        let dup = slice("IPv4", &[(Some("https"), 6443)], &[("192.0.2.1", None)]);
        let fqdn = slice("FQDN", &[(Some("https"), 443)], &[("api.example", None)]);
        let no_port = slice(
            "IPv4",
            &[(Some("a"), 1), (Some("b"), 2)],
            &[("192.0.2.9", None)],
        );
        let bad = slice("IPv4", &[(Some("https"), 70000)], &[("not-an-ip", None)]);
        let got = endpoints([&a, &b, &dup, &fqdn, &no_port, &bad]);
        let want: Vec<SocketAddr> = ["192.0.2.1:6443", "192.0.2.2:6443", "[2001:db8::1]:443"]
            .iter()
            .map(|s| s.parse().expect("addr"))
            .collect();
        assert_eq!(got, want);
        assert!(endpoints([]).is_empty());
    }
}
