//! The health series of the agent's Kubernetes discovery.

use prometheus::{Gauge, IntGauge, Registry};

use super::{catalog, MetricsError};

/// The discovery health metrics, the only owner of their two series (the
/// agent's Kubernetes discovery sets them).
#[derive(Clone)]
pub struct DiscoveryMetrics {
    up: IntGauge,
    last_sync: Gauge,
}

impl DiscoveryMetrics {
    /// Registers `kubepulse_discovery_up` and
    /// `kubepulse_discovery_last_sync_timestamp_seconds` in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, MetricsError> {
        let d = &catalog::DISCOVERY_UP;
        let up = IntGauge::new(d.name, d.help).map_err(MetricsError::Register)?;
        let d = &catalog::DISCOVERY_LAST_SYNC;
        let last_sync = Gauge::new(d.name, d.help).map_err(MetricsError::Register)?;
        registry
            .register(Box::new(up.clone()))
            .map_err(MetricsError::Register)?;
        registry
            .register(Box::new(last_sync.clone()))
            .map_err(MetricsError::Register)?;
        Ok(Self { up, last_sync })
    }

    /// Sets `kubepulse_discovery_up`: whether the plan watch is in sync.
    pub(crate) fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    /// Sets `kubepulse_discovery_last_sync_timestamp_seconds` to `unix_seconds`.
    pub(crate) fn set_last_sync(&self, unix_seconds: f64) {
        self.last_sync.set(unix_seconds);
    }
}
