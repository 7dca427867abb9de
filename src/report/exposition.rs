//! A parser for the Prometheus text exposition format (version 0.0.4), the
//! one thing `kubepulse report --scrape` reads from agents without a
//! Prometheus server. Strict: a malformed line is an error naming the line,
//! not a silently missing series.

use super::snapshot::{parse_value, Kind, Labels, Sample, Snapshot};

/// A line that is not valid exposition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub what: &'static str,
    /// The line (cut to 120 characters).
    pub text: String,
}

/// Parses a whole exposition body.
pub fn parse(body: &str) -> Result<Snapshot, ParseError> {
    let mut snap = Snapshot::default();
    for (i, raw) in body.lines().enumerate() {
        let line = raw.trim();
        let err = |what| ParseError {
            line: i + 1,
            what,
            text: line.chars().take(120).collect(),
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut it = rest.split_whitespace();
            if it.next() == Some("TYPE") {
                let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                    return Err(err("TYPE needs a name and a type"));
                };
                let kind = match kind {
                    "counter" => Kind::Counter,
                    "histogram" => Kind::Histogram,
                    "gauge" | "untyped" | "summary" => Kind::Gauge,
                    _ => return Err(err("unknown metric type")),
                };
                snap.types.insert(name.to_string(), kind);
            }
            continue;
        }
        snap.samples.push(sample(line).map_err(err)?);
    }
    Ok(snap)
}

fn sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = parse_value(value).ok_or("bad value")?;
    // An optional timestamp may follow; anything after it is an error.
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing text");
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` and returns the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), &'static str> {
    let mut labels = Labels::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err("bad label name");
        }
        s = s[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape in label value"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value"),
            }
        };
        labels.insert(key.to_string(), value);
        s = s[end + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_types_labels_escapes_and_special_values() {
        let body = "# HELP x_total help text\n# TYPE x_total counter\n\
            x_total{a=\"1\",b=\"q\\\"uote\\\\\"} 3\n\
            # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2 1700000000000\ng NaN\n";
        let s = parse(body).expect("parses");
        assert_eq!(s.types.get("x_total"), Some(&Kind::Counter));
        assert_eq!(s.kind_of("h_bucket"), Kind::Histogram);
        assert_eq!(s.samples.len(), 3);
        assert_eq!(
            s.samples[0].labels.get("b").map(String::as_str),
            Some("q\"uote\\")
        );
        assert_eq!(s.samples[0].value, 3.0);
        assert_eq!(
            s.samples[1].labels.get("le").map(String::as_str),
            Some("+Inf")
        );
        assert!(s.samples[2].value.is_nan());
    }

    #[test]
    fn malformed_lines_name_the_line() {
        for bad in [
            "x{a=\"1\" 3",
            "x{a=1} 3",
            "x 3 4 5",
            "x{a=\"1\"} abc",
            "x",
            "x-y 1",
        ] {
            let e = parse(&format!("ok 1\n{bad}\n")).expect_err(bad);
            assert_eq!(e.line, 2, "{bad}: {e}");
        }
    }
}
