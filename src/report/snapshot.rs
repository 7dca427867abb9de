//! Samples of one or two `/metrics` snapshots and the window between them.
//!
//! A [`Snapshot`] is what one scrape (or one in-process `gather()`) held; a
//! [`Window`] is what happened between two of them: counters and histogram
//! lines as increases (a reset counts from zero, like PromQL's
//! `increase()`), gauges as their latest value. Queries on a window return
//! `None` when no series matches, never a zero: a missing series is not a
//! measurement.

use std::collections::{BTreeMap, HashMap};

/// Label names to values of one series.
pub type Labels = BTreeMap<String, String>;

/// The type of a metric family, from `# TYPE` or the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter.
    Counter,
    /// Gauge (and untyped).
    Gauge,
    /// Classic histogram: `_bucket{le}`, `_sum`, `_count`.
    Histogram,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Series name as exposed (`_bucket`, `_sum`, `_count` included).
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// A sample from borrowed label pairs.
    pub fn new(name: &str, labels: &[(&str, &str)], value: f64) -> Self {
        Sample {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            value,
        }
    }
}

/// Everything one scrape held.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Family name to type.
    pub types: HashMap<String, Kind>,
    /// Every sample.
    pub samples: Vec<Sample>,
}

impl Snapshot {
    /// The type of the family `name` belongs to (gauge when unknown).
    pub fn kind_of(&self, name: &str) -> Kind {
        if let Some(k) = self.types.get(name) {
            return *k;
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if self.types.get(base) == Some(&Kind::Histogram) {
                    return Kind::Histogram;
                }
            }
        }
        Kind::Gauge
    }

    /// Adds another snapshot's samples (several agents scraped together).
    pub fn merge(&mut self, other: Snapshot) {
        self.types.extend(other.types);
        self.samples.extend(other.samples);
    }

    /// Builds a snapshot from an in-process registry's families.
    pub fn from_families(families: &[prometheus::proto::MetricFamily]) -> Self {
        use prometheus::proto::MetricType;
        let mut s = Snapshot::default();
        for f in families {
            let name = f.name().to_string();
            let kind = match f.get_field_type() {
                MetricType::COUNTER => Kind::Counter,
                MetricType::HISTOGRAM => Kind::Histogram,
                _ => Kind::Gauge,
            };
            s.types.insert(name.clone(), kind);
            for m in f.get_metric() {
                let labels: Labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                let mut push = |n: String, labels: Labels, value: f64| {
                    s.samples.push(Sample {
                        name: n,
                        labels,
                        value,
                    })
                };
                match kind {
                    Kind::Counter => push(name.clone(), labels, m.get_counter().get_value()),
                    Kind::Gauge => push(name.clone(), labels, m.get_gauge().get_value()),
                    Kind::Histogram => {
                        let h = m.get_histogram();
                        for b in h.get_bucket() {
                            let mut l = labels.clone();
                            l.insert("le".into(), format_le(b.upper_bound()));
                            #[allow(clippy::cast_precision_loss)]
                            push(format!("{name}_bucket"), l, b.cumulative_count() as f64);
                        }
                        let mut l = labels.clone();
                        l.insert("le".into(), "+Inf".into());
                        #[allow(clippy::cast_precision_loss)]
                        let count = h.get_sample_count() as f64;
                        push(format!("{name}_bucket"), l, count);
                        push(format!("{name}_sum"), labels.clone(), h.get_sample_sum());
                        push(format!("{name}_count"), labels, count);
                    }
                }
            }
        }
        s
    }
}

fn format_le(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// What happened between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct Window {
    samples: Vec<Sample>,
    /// Length of the window, seconds (0 when unknown).
    pub seconds: f64,
}

/// Selects series by exact label values; `("label", "")` matches a series
/// that lacks the label, as in PromQL.
pub type Matchers<'a> = &'a [(&'a str, &'a str)];

fn matches(labels: &Labels, m: Matchers<'_>) -> bool {
    m.iter()
        .all(|(k, v)| labels.get(*k).map_or(v.is_empty(), |x| x == v))
}

impl Window {
    /// The window from `earlier` to `later`, `seconds` long.
    pub fn between(earlier: &Snapshot, later: &Snapshot, seconds: f64) -> Self {
        let before: HashMap<(&str, &Labels), f64> = earlier
            .samples
            .iter()
            .map(|s| ((s.name.as_str(), &s.labels), s.value))
            .collect();
        let samples = later
            .samples
            .iter()
            .map(|s| {
                let value = match later.kind_of(&s.name) {
                    Kind::Gauge => s.value,
                    Kind::Counter | Kind::Histogram => {
                        match before.get(&(s.name.as_str(), &s.labels)) {
                            // A reset: the counter started again from zero.
                            Some(b) if *b <= s.value => s.value - b,
                            _ => s.value,
                        }
                    }
                };
                Sample { value, ..s.clone() }
            })
            .collect();
        Self { samples, seconds }
    }

    /// Everything since the counters were created (a page "since start").
    pub fn since_start(now: &Snapshot) -> Self {
        Self::between(&Snapshot::default(), now, 0.0)
    }

    /// A window whose increases were computed elsewhere (Prometheus).
    pub fn from_samples(samples: Vec<Sample>, seconds: f64) -> Self {
        Self { samples, seconds }
    }

    /// Every sample of `name` matching `m`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        m: Matchers<'a>,
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && matches(&s.labels, m))
    }

    /// Sum over the matching series; `None` when none matches.
    pub fn sum(&self, name: &str, m: Matchers<'_>) -> Option<f64> {
        self.select(name, m)
            .map(|s| s.value)
            .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
    }

    /// Smallest value over the matching series.
    pub fn min(&self, name: &str, m: Matchers<'_>) -> Option<f64> {
        self.select(name, m)
            .map(|s| s.value)
            .filter(|v| !v.is_nan())
            .reduce(f64::min)
    }

    /// Mean over the matching series.
    pub fn mean(&self, name: &str, m: Matchers<'_>) -> Option<f64> {
        let (n, total) = self
            .select(name, m)
            .fold((0u32, 0.0), |(n, t), s| (n + 1, t + s.value));
        (n > 0).then(|| total / f64::from(n))
    }

    /// The buckets of histogram `base` summed over the matching series:
    /// (upper bound, cumulative count), sorted, `+Inf` last.
    pub fn buckets(&self, base: &str, m: Matchers<'_>) -> Vec<(f64, f64)> {
        let name = format!("{base}_bucket");
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.select(&name, m) {
            let Some(le) = s.labels.get("le").and_then(|v| parse_value(v)) else {
                continue;
            };
            // Order by bound; the total order of f64 bits fits non-negative bounds.
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += s.value;
        }
        let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }

    /// The distinct values of `label` over the series of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Parses a sample value as the text format writes it.
pub fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample::new(name, labels, value)
    }

    fn snap(samples: Vec<Sample>) -> Snapshot {
        let mut types = HashMap::new();
        types.insert("c_total".to_string(), Kind::Counter);
        types.insert("g".to_string(), Kind::Gauge);
        Snapshot { types, samples }
    }

    #[test]
    fn counters_become_increases_and_gauges_stay() {
        let a = snap(vec![
            sample("c_total", &[("p", "x")], 10.0),
            sample("g", &[], 5.0),
        ]);
        let b = snap(vec![
            sample("c_total", &[("p", "x")], 15.0),
            sample("c_total", &[("p", "y")], 3.0),
            sample("g", &[], 7.0),
        ]);
        let w = Window::between(&a, &b, 10.0);
        assert_eq!(w.sum("c_total", &[("p", "x")]), Some(5.0));
        assert_eq!(w.sum("c_total", &[("p", "y")]), Some(3.0), "new series");
        assert_eq!(w.sum("c_total", &[]), Some(8.0));
        assert_eq!(w.sum("g", &[]), Some(7.0));
        assert_eq!(w.sum("c_total", &[("p", "z")]), None, "missing is None");
    }

    #[test]
    fn a_reset_counts_from_zero() {
        let a = snap(vec![sample("c_total", &[], 10.0)]);
        let b = snap(vec![sample("c_total", &[], 4.0)]);
        assert_eq!(Window::between(&a, &b, 1.0).sum("c_total", &[]), Some(4.0));
    }

    #[test]
    fn empty_matcher_value_means_label_absent() {
        let b = snap(vec![
            sample("g", &[("agent", "a")], 1.0),
            sample("g", &[], 2.0),
        ]);
        let w = Window::since_start(&b);
        assert_eq!(w.sum("g", &[("agent", "")]), Some(2.0));
    }

    #[test]
    fn buckets_are_summed_across_series_and_sorted() {
        let mut s = snap(vec![
            sample("h_bucket", &[("le", "+Inf"), ("a", "1")], 4.0),
            sample("h_bucket", &[("le", "0.1"), ("a", "1")], 3.0),
            sample("h_bucket", &[("le", "0.1"), ("a", "2")], 1.0),
            sample("h_bucket", &[("le", "+Inf"), ("a", "2")], 2.0),
        ]);
        s.types.insert("h".into(), Kind::Histogram);
        let w = Window::since_start(&s);
        assert_eq!(w.buckets("h", &[]), vec![(0.1, 4.0), (f64::INFINITY, 6.0)]);
    }
}
