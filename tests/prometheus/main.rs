//! Integration tests that need Prometheus' own tools: a real Prometheus
//! server scraping kubepulse, and promtool on the alert rules.

mod prometheus_e2e;
mod rules;
