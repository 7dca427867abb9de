//! Fetch `/metrics` over plain HTTP and parse the Prometheus
//! text format into samples, so assertions read like PromQL selectors.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::text::parse_labels;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// Family name -> type from `# TYPE` lines.
    pub types: HashMap<String, String>,
    pub body: String,
}

/// GET `path` from `addr`; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, body.to_string()))
}

/// Parses the text exposition format.
pub fn parse(body: &str) -> Scrape {
    let mut sc = Scrape {
        body: body.to_string(),
        ..Default::default()
    };
    for line in body.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut it = t.split_whitespace();
            if let (Some(n), Some(ty)) = (it.next(), it.next()) {
                sc.types.insert(n.to_string(), ty.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().expect("numeric sample value"),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n.to_string(), parse_labels(l.trim_end_matches('}'))),
            None => (series.to_string(), BTreeMap::new()),
        };
        sc.samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    sc
}

impl Scrape {
    /// Samples named `name` whose labels include all of `matchers`.
    pub fn select(&self, name: &str, matchers: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && matchers
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// Sum of the selected samples.
    pub fn sum(&self, name: &str, matchers: &[(&str, &str)]) -> f64 {
        self.select(name, matchers).iter().map(|s| s.value).sum()
    }

    /// The family a sample belongs to (strips histogram suffixes).
    pub fn family_of(&self, sample: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if self.types.get(base).map(String::as_str) == Some("histogram") {
                    return base.to_string();
                }
            }
        }
        sample.to_string()
    }

    /// Family name -> label names seen (without `le`).
    pub fn family_labels(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in &self.samples {
            let e = out.entry(self.family_of(&s.name)).or_default();
            e.extend(s.labels.keys().filter(|k| *k != "le").cloned());
        }
        out
    }

    /// Number of sample lines (series).
    pub fn series_count(&self) -> usize {
        self.samples.len()
    }
}

/// Scrapes `addr` until `ok` accepts the result or `timeout` passes; returns
/// the last scrape and whether `ok` accepted it.
pub fn scrape_until(
    addr: SocketAddr,
    timeout: Duration,
    mut ok: impl FnMut(&Scrape) -> bool,
) -> (Scrape, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let sc = match http_get(addr, "/metrics") {
            Ok((200, body)) => parse(&body),
            _ => Scrape::default(),
        };
        if ok(&sc) {
            return (sc, true);
        }
        if Instant::now() >= deadline {
            return (sc, false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that every family in `sc` is listed in one of the docs
/// `sections` with the same type and labels (ignoring `extra_labels`, e.g.
/// local mode's `agent`), and that every metric in `required` is present.
pub fn assert_documented(
    sc: &Scrape,
    sections: &[&str],
    extra_labels: &[&str],
    required: &[kubepulse::metrics::catalog::MetricDef],
) {
    let docs = doc_rows();
    let mut documented: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for section in sections {
        let rows = docs
            .get(*section)
            .unwrap_or_else(|| panic!("docs/metrics.md has no '{section}' section"));
        for (n, k, l) in rows {
            documented.insert(n.clone(), (k.clone(), l.iter().cloned().collect()));
        }
    }
    let families = sc.family_labels();
    for (family, labels) in &families {
        let (kind, doc_labels) = documented
            .get(family)
            .unwrap_or_else(|| panic!("{family} appears in a scrape but not in docs/metrics.md"));
        assert_eq!(sc.types.get(family), Some(kind), "{family}: type");
        let labels: BTreeSet<String> = labels
            .iter()
            .filter(|l| !extra_labels.contains(&l.as_str()))
            .cloned()
            .collect();
        assert_eq!(&labels, doc_labels, "{family}: labels");
    }
    for d in required {
        assert!(
            families.contains_key(d.name),
            "{} missing from the scrape",
            d.name
        );
    }
}

/// A documented metric: (name, type, label names).
pub type DocRow = (String, String, Vec<String>);

/// Reads the rows of the tables in `docs/metrics.md`, by section heading.
pub fn doc_rows() -> BTreeMap<String, Vec<DocRow>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
        .expect("docs/metrics.md");
    let mut section = String::new();
    let mut out: BTreeMap<String, Vec<DocRow>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            section = h.trim().to_string();
            continue;
        }
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = rest.split('|').map(str::trim).collect();
        let name = cells[0].trim_end_matches('`').to_string();
        let kind = cells.get(1).copied().unwrap_or_default().to_string();
        let labels = cells
            .get(2)
            .copied()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty() && *l != "—")
            .map(String::from)
            .collect();
        out.entry(section.clone())
            .or_default()
            .push((name, kind, labels));
    }
    out
}
