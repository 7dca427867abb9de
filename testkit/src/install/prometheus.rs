//! Discovering and scraping the install as a user's Prometheus would: the
//! scrape job docs/deploy.md gives for plain Prometheus, taken from the
//! document itself with its relabelings unchanged; only where to reach the
//! API is added to each `kubernetes_sd_configs` entry (in a cluster it is
//! found in-cluster: the same address, CA and token a pod gets).
//! kube-state-metrics (the lab's stand-in) is scraped as a static target.
//!
//! Debian's Prometheus (2.42.0+ds, the one installable here) is built
//! without Kubernetes discovery ("field kubernetes_sd_configs not found in
//! type config.ScrapeConfig"). So the discovery and the scrapes are
//! vmagent's (Debian's `victoria-metrics`: its own Kubernetes discovery,
//! list and watch of pods with bookmarks, Prometheus's relabeling and
//! `up` semantics), remote-writing every sample into the real Prometheus,
//! which stores them and evaluates the shipped rules; queries and alerts
//! are Prometheus's.

use serde_json::{json, Value};

use super::cluster::{Cluster, APISERVER};
use crate::lab::prometheus::Prom;

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

/// The vmagent scraping for a Prometheus; stops when dropped.
pub struct Scraper {
    lab: std::sync::Arc<crate::lab::netlab::Lab>,
    pid: u32,
    dir: tempfile::TempDir,
}

impl Scraper {
    /// vmagent's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vmagent.log")).unwrap_or_default()
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.lab.kill(self.pid);
    }
}

/// vmagent's address in node 0.
pub const VMAGENT_ADDR: (std::net::Ipv4Addr, u16) = (std::net::Ipv4Addr::new(10, 200, 0, 1), 8429);

/// Starts Prometheus (the test rules, remote-write receiver) in node 0 and
/// vmagent with the documented jobs every `scrape_interval`.
pub fn start(cluster: &Cluster, scrape_interval: &str) -> (Prom, Scraper) {
    let prom = Prom::start_with(
        &cluster.lab,
        "  []\n",
        scrape_interval,
        &["--web.enable-remote-write-receiver"],
    );
    let jobs = documented_jobs();
    let ca = cluster.pki.path().join("ca.crt");
    let token = cluster.pki.path().join("token");
    let configs = scrape_configs(
        &jobs,
        &ca.display().to_string(),
        &token.display().to_string(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("scrape.yml");
    std::fs::write(
        &cfg,
        format!("global:\n  scrape_interval: {scrape_interval}\n  scrape_timeout: 1s\nscrape_configs:\n{configs}"),
    )
    .expect("write the scrape config");
    let (ip, port) = VMAGENT_ADDR;
    let bin = std::env::var("KUBEPULSE_VMAGENT").unwrap_or("/usr/bin/vmagent".into());
    let args = [
        bin,
        format!("-promscrape.config={}", cfg.display()),
        "-promscrape.config.strictParse=true".into(),
        format!("-remoteWrite.url=http://{}/api/v1/write", prom.addr()),
        "-remoteWrite.flushInterval=1s".into(),
        format!(
            "-remoteWrite.tmpDataPath={}",
            dir.path().join("queue").display()
        ),
        format!("-httpListenAddr={ip}:{port}"),
        "-loggerLevel=WARN".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = dir.path().join("vmagent.log");
    let pid = cluster.lab.spawn(&cluster.lab.host(0), &args, Some(&log));
    let scraper = Scraper {
        lab: cluster.lab.clone(),
        pid,
        dir,
    };
    let up = crate::lab::netlab::poll(
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(200),
        || {
            assert!(cluster.lab.alive(pid), "vmagent exited: {}", scraper.log());
            crate::lab::netlab::in_ns(&cluster.lab.host(0), move || {
                crate::http::get_ok(std::net::SocketAddr::from((ip, port)), "/health").ok()
            })
        },
    );
    assert!(up.is_some(), "vmagent not up: {}", scraper.log());
    (prom, scraper)
}

/// The targets vmagent scrapes, as (labels, health) per target.
pub fn targets(cluster: &Cluster) -> Vec<(serde_json::Map<String, Value>, String)> {
    let (ip, port) = VMAGENT_ADDR;
    let body = crate::lab::netlab::in_ns(&cluster.lab.host(0), move || {
        crate::http::get_ok(std::net::SocketAddr::from((ip, port)), "/api/v1/targets")
    })
    .expect("vmagent's targets");
    let v: Value = serde_json::from_str(&body).expect("targets JSON");
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
