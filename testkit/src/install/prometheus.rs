//! Discovering and scraping the install as a user's Prometheus would: the
//! scrape job docs/deploy.md gives for plain Prometheus, taken from the
//! document itself with its relabelings unchanged; only where to reach the
//! API is added to each `kubernetes_sd_configs` entry (in a cluster it is
//! found in-cluster: the same address, CA and token a pod gets).
//! kube-state-metrics (the lab's stand-in) is scraped as a static target.
//!
//! The Prometheus is Debian trixie's (2.53, `.ci/prometheus-k8s-sd`
//! installs it as `prometheus-k8s-sd`): bookworm's (2.42.0+ds) is built
//! without Kubernetes discovery. Its discovery is client-go's reflector (a
//! list, then a watch from the list's resourceVersion), talking to the API
//! test server over HTTPS; it also stores the data and evaluates the
//! shipped rules with test-time windows ([`RULE_TIME`]).

use serde_json::{json, Value};

use super::cluster::{Cluster, APISERVER};
use crate::lab::prometheus::{Prom, RuleTime};

/// The scrape jobs of docs/deploy.md's plain-Prometheus section: every
/// YAML block of the document that holds a `kubernetes_sd_configs` job.
pub fn documented_jobs() -> Vec<Value> {
    let path = crate::repo_root().join("docs/deploy.md");
    let text = std::fs::read_to_string(&path).expect("read docs/deploy.md");
    let mut jobs = Vec::new();
    let mut block: Option<Vec<String>> = None;
    for line in text.lines() {
        let t = line.trim_start();
        match &mut block {
            None if t.starts_with("```yaml") => block = Some(Vec::new()),
            Some(lines) if t.starts_with("```") => {
                // Code blocks inside a list item are indented; YAML needs
                // the common indentation removed.
                let indent = lines
                    .iter()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.len() - l.trim_start().len())
                    .min()
                    .unwrap_or(0);
                let yaml: String = lines
                    .iter()
                    .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
                    .collect();
                if yaml.contains("kubernetes_sd_configs") {
                    let v: Value = serde_yaml::from_str(&yaml).unwrap_or_else(|e| {
                        panic!("docs/deploy.md scrape job is not YAML: {e}\n{yaml}")
                    });
                    jobs.extend(v.as_array().cloned().unwrap_or_else(|| vec![v]));
                }
                block = None;
            }
            Some(lines) => lines.push(line.to_string()),
            None => {}
        }
    }
    assert!(
        !jobs.is_empty(),
        "docs/deploy.md has no kubernetes_sd_configs scrape job"
    );
    jobs
}

/// The documented jobs pointed at the cluster's API (`api_server`, the CA
/// and token files in `dir`), plus kube-state-metrics.
pub fn scrape_configs(jobs: &[Value], ca: &str, token: &str) -> String {
    let (ip, port) = APISERVER;
    let mut out: Vec<Value> = jobs
        .iter()
        .map(|job| {
            let mut job = job.clone();
            for sd in job["kubernetes_sd_configs"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                sd["api_server"] = json!(format!("https://{ip}:{port}"));
                sd["tls_config"] = json!({"ca_file": ca});
                sd["authorization"] = json!({"credentials_file": token});
            }
            job
        })
        .collect();
    let (kip, kport) = super::ksm::ADDR;
    out.push(json!({"job_name": "kube-state-metrics",
        "static_configs": [{"targets": [format!("{kip}:{kport}")]}]}));
    // JSON is YAML; indented as the items of `scrape_configs:`.
    out.iter().map(|j| format!("  - {j}\n")).collect()
}

/// The Prometheus with Kubernetes discovery: `KUBEPULSE_PROMETHEUS_K8S_SD`,
/// or `prometheus-k8s-sd` where `.ci/prometheus-k8s-sd` installs it.
pub fn binary() -> String {
    let bin = std::env::var("KUBEPULSE_PROMETHEUS_K8S_SD")
        .unwrap_or("/usr/local/bin/prometheus-k8s-sd".into());
    assert!(
        std::path::Path::new(&bin).exists(),
        "no Prometheus with Kubernetes discovery at {bin}: run .ci/prometheus-k8s-sd \
         (bookworm's prometheus has no kubernetes_sd_configs), or set KUBEPULSE_PROMETHEUS_K8S_SD"
    );
    bin
}

/// The install lab's rule time: a thirtieth of production's (`for: 15m`
/// becomes 30 s, `[5m]` 10 s, `for: 2h` 4 minutes), so the 3-minute quiet
/// window is an hour and a half of a real cluster's, and each alert keeps
/// its tolerance relative to the others. With every `for:` at 2 s
/// ([`RuleTime::Fast`]) a single blip of a few seconds (a probe lost while
/// the 2 vCPUs that all three nodes share stall) fired alerts whose
/// production `for:` is 15 or 30 minutes.
pub const RULE_TIME: RuleTime = RuleTime::Scaled(30);

/// Starts Prometheus in node 0 with the test rules and the documented jobs
/// (discovering through the API test server) every `scrape_interval`.
pub fn start(cluster: &Cluster, scrape_interval: &str) -> Prom {
    start_with(cluster, scrape_interval, RULE_TIME)
}

/// [`start`] with the rules' time shortened as `time` says.
pub fn start_with(cluster: &Cluster, scrape_interval: &str, time: RuleTime) -> Prom {
    let jobs = documented_jobs();
    let ca = cluster.pki.path().join("ca.crt");
    let token = cluster.pki.path().join("token");
    let configs = scrape_configs(
        &jobs,
        &ca.display().to_string(),
        &token.display().to_string(),
    );
    Prom::start_bin(
        &cluster.lab,
        &binary(),
        time,
        &configs,
        scrape_interval,
        &[],
    )
}

/// The targets Prometheus scrapes, as (labels, health) per target.
pub fn targets(prom: &Prom) -> Vec<(serde_json::Map<String, Value>, String)> {
    let v = prom.get_json("/api/v1/targets?state=active");
    v["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["labels"].as_object().cloned().unwrap_or_default(),
                t["health"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_job_is_found_and_pointed_at_the_lab() {
        let jobs = documented_jobs();
        assert!(jobs.iter().any(|j| j["job_name"]
            .as_str()
            .is_some_and(|n| n.contains("kubepulse"))));
        let text = scrape_configs(&jobs, "/ca", "/token");
        assert!(
            text.contains("\"api_server\":\"https://10.200.0.1:6443\""),
            "{text}"
        );
        assert!(text.contains("kube-state-metrics"), "{text}");
        // The relabelings are the document's.
        assert!(
            text.contains("__meta_kubernetes_pod_annotation_prometheus_io_scrape"),
            "{text}"
        );
    }
}
