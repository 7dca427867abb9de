//! Entry points of the fuzz targets (`fuzz/`), compiled only with
//! `--cfg fuzzing`. Each feeds untrusted bytes to one decoder that reads the
//! network or a user's file, exactly as the real caller does; a panic, an
//! abort or unbounded memory is a finding.

use crate::proto::{bandwidth, echo, icmp};

/// UDP/TCP echo: decode, and answer in place as the responder does.
pub fn echo(data: &[u8]) {
    let _ = echo::EchoHeader::decode(data);
    let mut buf = data.to_vec();
    if buf.len() <= echo::MAX_LEN {
        let _ = echo::make_reply(&mut buf, 1, 2);
    }
}

/// Bandwidth handshake: the sealed request the responder reads and the
/// status the prober reads.
pub fn bandwidth(data: &[u8]) {
    let _ = bandwidth::Request::decode_sealed(data);
    let _ = bandwidth::Request::decode(data);
    let _ = bandwidth::Status::decode(data);
}

/// ICMP: a raw socket's datagram (IPv4 header first) and a DGRAM one.
pub fn icmp(data: &[u8]) {
    if let Ok(inner) = icmp::strip_ipv4_header(data) {
        let _ = icmp::parse_echo(inner);
    }
    let _ = icmp::parse_echo(data);
    let _ = icmp::checksum(data);
}

/// HTTP: the response head the HTTP probe parses.
pub fn http_response_head(data: &[u8]) {
    crate::probe::scheduled::fuzz_response_head(data);
}

/// HTTP: one connection to the HTTP responder (hyper with our service).
pub fn http_request(data: &[u8]) {
    crate::responder::fuzz_request(data);
}

/// Config: YAML text over the defaults, validated.
pub fn config_yaml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::load::load_yaml_str(text);
    }
}

/// Probe plan: the ConfigMap text an agent reads, as its plan and as its
/// lifecycle, then what the agent asks of them (its peers, who bursts when
/// for the sample guard, and the lifecycle view of its targets).
pub fn probe_plan(data: &[u8]) {
    use crate::schedule::busy::BusyNodes;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lifecycle = crate::plan::PeerLifecycle::from_json(text).unwrap_or_default();
    let Ok(plan) = crate::plan::NodePlan::from_json(text) else {
        return;
    };
    for slot in [0, 1, u64::MAX / 2, u64::MAX] {
        let _ = plan.burst_in(slot);
        for n in &plan.target_nodes {
            let _ = plan.busy(slot, n);
        }
    }
    for p in plan.peers.iter().take(4) {
        let me = crate::peer::Identity {
            name: p.name.clone(),
            node: p.node.clone(),
            kind: p.kind,
        };
        let targets = crate::peer::targets(&me, &plan.peers);
        let _ = crate::plan::lifecycle::agent_lifecycle(&me, &targets, &plan.peers, &lifecycle);
    }
}
