//! One view of a `/metrics` scrape for every test: samples parsed by the
//! crate's own strict exposition parser ([`kubepulse::report::exposition`]),
//! selected like PromQL selectors. A read of a series that is not there
//! fails the test naming the selector; [`Scrape::try_sum`] and
//! [`Scrape::is_absent`] are for polling and for checks where absence is the
//! expected answer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kubepulse::report::exposition;
use kubepulse::report::snapshot::Kind;
pub use kubepulse::report::snapshot::Sample;

use crate::http;

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Family name -> type (`counter`, `gauge`, `histogram`) from `# TYPE`.
    pub types: HashMap<String, String>,
    /// The text it was parsed from.
    pub body: String,
}

/// GET `path` from `addr`; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http::get(addr, path)
}

/// Parses the text exposition format; panics naming the line when the text
/// is not valid exposition (our exporter never serves that).
pub fn parse(body: &str) -> Scrape {
    let snap = exposition::parse(body).unwrap_or_else(|e| panic!("bad exposition text: {e}"));
    let types = snap
        .types
        .iter()
        .map(|(name, kind)| {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            (name.clone(), kind.to_string())
        })
        .collect();
    Scrape {
        samples: snap.samples,
        types,
        body: body.to_string(),
    }
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

    /// The single matching sample's value, `None` when none or several
    /// match.
    pub fn one(&self, name: &str, matchers: &[(&str, &str)]) -> Option<f64> {
        match self.select(name, matchers)[..] {
            [s] => Some(s.value),
            _ => None,
        }
    }

    /// The value at this scrape of a counter seen at a later one: 0 when the
    /// series did not exist yet (a counter is born at 0). The one place a
    /// missing series reads as 0, and only for this.
    pub fn counter_born_since(&self, name: &str, matchers: &[(&str, &str)]) -> f64 {
        self.try_sum(name, matchers).unwrap_or(0.0)
    }

    /// Cumulative histogram buckets `(le, count)` of `name` summed over the
    /// matching series, sorted by `le`.
    pub fn buckets(&self, name: &str, matchers: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut m: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.select(&bucket, matchers) {
            let le = match s.labels.get("le").map(String::as_str) {
                Some("+Inf") => f64::INFINITY,
                Some(x) => x.parse().unwrap_or(f64::NAN),
                None => continue,
            };
            let e = m.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += s.value;
        }
        let mut v: Vec<_> = m.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    /// Sum of the selected samples; panics naming the selector when no
    /// series matches, so a misspelt metric or label fails the test instead
    /// of reading 0.
    pub fn sum(&self, name: &str, matchers: &[(&str, &str)]) -> f64 {
        self.try_sum(name, matchers)
            .unwrap_or_else(|| panic!("no series {} in the scrape", selector(name, matchers)))
    }

    /// Sum of the selected samples, `None` when no series matches (for
    /// polling until a series appears).
    pub fn try_sum(&self, name: &str, matchers: &[(&str, &str)]) -> Option<f64> {
        let selected = self.select(name, matchers);
        (!selected.is_empty()).then(|| selected.iter().map(|s| s.value).sum())
    }

    /// Whether no series matches: for the checks where absence is the
    /// expected answer.
    pub fn is_absent(&self, name: &str, matchers: &[(&str, &str)]) -> bool {
        self.select(name, matchers).is_empty()
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

/// Per-bucket difference of two cumulative bucket lists (same layout).
pub fn bucket_delta(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l.to_bits() == le.to_bits())
                .map_or(0.0, |x| x.1);
            (*le, c - b)
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, as PromQL's `histogram_quantile`
/// computes it (the crate's own implementation).
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    kubepulse::report::quantile::histogram_quantile(q, buckets)
}

/// The nearest-rank `q`-quantile of raw samples (sorts them); `None` when
/// there are none. For exact values, where [`quantile`] interpolates
/// within a histogram bucket.
pub fn sample_quantile<T: Ord + Copy>(samples: &mut [T], q: f64) -> Option<T> {
    samples.sort_unstable();
    let rank = (samples.len() as f64 * q).ceil() as usize;
    samples
        .get(rank.saturating_sub(1).min(samples.len().saturating_sub(1)))
        .copied()
}

/// The median of `values` (the upper one of an even count); `None` when
/// there are none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// `name{k="v",...}`, for failure messages.
pub fn selector(name: &str, matchers: &[(&str, &str)]) -> String {
    let labels: Vec<String> = matchers
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    format!("{name}{{{}}}", labels.join(","))
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
    let text = std::fs::read_to_string(crate::repo_root().join("docs/metrics.md"))
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
