//! Semantic checks serde cannot express, with errors that name the key.

use std::collections::HashSet;
use std::time::Duration;

use super::settings::{
    BandwidthSchedule, ControllerSettings, ProbeCadence, Settings, MAX_BURST_BYTES,
    MAX_BURST_DURATION, MAX_RATE_BITS_PER_SECOND,
};

/// A configuration error, naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed.
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {key}: {reason}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn check_periodic(key: &str, p: &ProbeCadence) -> Result<(), ConfigError> {
    if !p.enabled {
        return Ok(());
    }
    if p.interval < Duration::from_millis(10) {
        return Err(invalid(&format!("{key}.interval"), "must be at least 10ms"));
    }
    if p.timeout.is_zero() {
        return Err(invalid(&format!("{key}.timeout"), "must be positive"));
    }
    Ok(())
}

fn validate_controller(c: &ControllerSettings) -> Result<(), ConfigError> {
    if c.name.is_empty() || c.namespace.is_empty() || c.probe_namespace.is_empty() {
        return Err(invalid(
            "controller",
            "name, namespace and probe_namespace must not be empty",
        ));
    }
    let p = &c.pod_startup;
    if p.interval < Duration::from_millis(100) || p.timeout.is_zero() {
        return Err(invalid(
            "controller.pod_startup",
            "interval must be at least 100ms and timeout positive",
        ));
    }
    if p.image.is_empty() {
        return Err(invalid("controller.pod_startup.image", "must not be empty"));
    }
    if !(c.sampler.max_qps > 0.0 && c.sampler.max_qps <= 100.0) {
        return Err(invalid(
            "controller.sampler.max_qps",
            "must be within (0, 100]",
        ));
    }
    if c.sampler.interval < Duration::from_millis(100) {
        return Err(invalid(
            "controller.sampler.interval",
            "must be at least 100ms",
        ));
    }
    let l = &c.leader;
    if l.retry_period.is_zero()
        || l.renew_deadline >= l.lease_duration
        || l.retry_period >= l.renew_deadline
    {
        return Err(invalid(
            "controller.leader",
            "need 0 < retry_period < renew_deadline < lease_duration",
        ));
    }
    if let Err(e) = c.plan.fan_out.validate() {
        return Err(invalid("controller.plan.fan_out", e.to_string()));
    }
    if !(1..=64).contains(&c.plan.write_concurrency) {
        return Err(invalid(
            "controller.plan.write_concurrency",
            "must be within 1..=64",
        ));
    }
    if c.plan.label_selector.trim().is_empty() {
        return Err(invalid(
            "controller.plan.label_selector",
            "must not be empty (it would select every pod)",
        ));
    }
    Ok(())
}

/// Validates `s`; the first problem found is returned.
pub fn validate(s: &Settings) -> Result<(), ConfigError> {
    if s.agent.name.is_empty() {
        return Err(invalid("agent.name", "must not be empty"));
    }
    if s.agent.node.is_empty() {
        return Err(invalid("agent.node", "must not be empty"));
    }
    let p = &s.probes;
    check_periodic("probes.udp", &p.udp)?;
    check_periodic("probes.tcp", &p.tcp)?;
    check_periodic("probes.icmp", &p.icmp)?;
    check_periodic("probes.tcp_connect", &p.tcp_connect)?;
    check_periodic("probes.http", &p.http)?;
    p.dns.check().map_err(|(k, r)| invalid(&k, r))?;
    p.apiserver.check().map_err(|(k, r)| invalid(&k, r))?;
    if p.rtt_min_window < p.udp.interval {
        return Err(invalid(
            "probes.rtt_min_window",
            "must be at least probes.udp.interval",
        ));
    }
    if p.pmtu.enabled {
        if !(576..=9000).contains(&p.pmtu.min_bytes) {
            return Err(invalid(
                "probes.pmtu.min_bytes",
                "must be within 576..=9000",
            ));
        }
        if p.pmtu.tries == 0 {
            return Err(invalid("probes.pmtu.tries", "must be at least 1"));
        }
    }
    let b = &p.bandwidth;
    if b.enabled {
        if b.max_rate_bits_per_second < 1_000_000
            || b.max_rate_bits_per_second > MAX_RATE_BITS_PER_SECOND
        {
            return Err(invalid(
                "probes.bandwidth.max_rate_bits_per_second",
                format!("must be within 1000000..={MAX_RATE_BITS_PER_SECOND}"),
            ));
        }
        if b.duration < Duration::from_millis(10) || b.duration > MAX_BURST_DURATION {
            return Err(invalid(
                "probes.bandwidth.duration",
                "must be within 10ms..=1s",
            ));
        }
        if b.interval < Duration::from_secs(1) {
            return Err(invalid("probes.bandwidth.interval", "must be at least 1s"));
        }
        if b.schedule == BandwidthSchedule::Slots {
            b.slots
                .validate(b.slot_span() / 2)
                .map_err(|e| invalid("probes.bandwidth.slots", e.to_string()))?;
        }
    }
    let r = &s.responder;
    if r.max_connections == 0 {
        return Err(invalid("responder.max_connections", "must be at least 1"));
    }
    if r.max_burst_bytes > MAX_BURST_BYTES || r.max_burst_duration > MAX_BURST_DURATION {
        return Err(invalid(
            "responder.max_burst_bytes",
            "bursts are capped at 12.5 GB (1s at 100 Gbit/s) and 1s",
        ));
    }
    if r.udp_packets_per_second_per_source == 0
        || r.tcp_connections_per_second_per_source == 0
        || r.max_connections_per_source == 0
    {
        return Err(invalid(
            "responder.*_per_source",
            "per-source budgets must be at least 1",
        ));
    }
    if r.bandwidth_bytes_per_minute_per_source < r.max_burst_bytes {
        return Err(invalid(
            "responder.bandwidth_bytes_per_minute_per_source",
            "must be at least responder.max_burst_bytes, or no burst could ever be served",
        ));
    }
    if r.http_body_bytes > 1 << 20 {
        return Err(invalid(
            "responder.http_body_bytes",
            "must be at most 1 MiB",
        ));
    }
    validate_controller(&s.controller)?;
    let mut names = HashSet::new();
    for (i, peer) in s.discovery.peers.iter().enumerate() {
        let key = format!("discovery.peers[{i}]");
        if peer.name.is_empty() || peer.node.is_empty() {
            return Err(invalid(&key, "name and node must not be empty"));
        }
        if !names.insert(peer.name.as_str()) {
            return Err(invalid(
                &key,
                format!("duplicate peer name {:?}", peer.name),
            ));
        }
    }
    Ok(())
}
