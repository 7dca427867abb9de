//! Label and field selectors of the API test server.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Key, Route};

/// The selection a list or watch asks for.
pub(super) struct Filter {
    gv: String,
    resource: String,
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    pub(super) fn new(route: &Route, q: &BTreeMap<String, String>) -> Result<Filter, String> {
        Ok(Filter {
            gv: route.gv.clone(),
            resource: route.resource.clone(),
            namespace: route.namespace.clone(),
            labels: parse_labels(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
            fields: parse_fields(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?,
        })
    }

    pub(super) fn in_collection(&self, key: &Key) -> bool {
        key.gv == self.gv
            && key.resource == self.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        let labels = obj["metadata"]["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.labels.iter().all(|r| r.matches(label(&r.key)))
            && self.fields.iter().all(|(path, eq, want)| {
                let got = path
                    .split('.')
                    .try_fold(obj, |v, seg| v.get(seg))
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .unwrap_or_default();
                (got == *want) == *eq
            })
    }
}

#[derive(Debug)]
pub(super) enum LabelOp {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug)]
pub(super) struct LabelReq {
    key: String,
    op: LabelOp,
}

impl LabelReq {
    fn matches(&self, v: Option<&str>) -> bool {
        match (&self.op, v) {
            (LabelOp::Eq(w), Some(v)) => v == w,
            (LabelOp::Eq(_), None) => false,
            (LabelOp::Ne(w), v) => v != Some(w.as_str()),
            (LabelOp::In(set), Some(v)) => set.iter().any(|s| s == v),
            (LabelOp::In(_), None) => false,
            (LabelOp::NotIn(set), v) => v.is_none_or(|v| !set.iter().any(|s| s == v)),
            (LabelOp::Exists, v) => v.is_some(),
            (LabelOp::NotExists, v) => v.is_none(),
        }
    }
}

/// Splits on commas outside parentheses.
pub(super) fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

pub(super) fn parse_labels(s: &str) -> Result<Vec<LabelReq>, String> {
    split_top(s)
        .into_iter()
        .map(|p| {
            let set = |rest: &str| -> Result<Vec<String>, String> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| format!("bad set in {p:?}"))?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let (key, op) = if let Some((k, v)) = p.split_once("!=") {
                (k, LabelOp::Ne(v.trim().into()))
            } else if let Some((k, v)) = p.split_once("==") {
                (k, LabelOp::Eq(v.trim().into()))
            } else if let Some((k, v)) = p.split_once('=') {
                (k, LabelOp::Eq(v.trim().into()))
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                (k, LabelOp::NotIn(set(rest)?))
            } else if let Some((k, rest)) = p.split_once(" in ") {
                (k, LabelOp::In(set(rest)?))
            } else if let Some(k) = p.strip_prefix('!') {
                (k, LabelOp::NotExists)
            } else {
                (p, LabelOp::Exists)
            };
            Ok(LabelReq {
                key: key.trim().to_string(),
                op,
            })
        })
        .collect()
}

pub(super) fn parse_fields(s: &str) -> Result<Vec<(String, bool, String)>, String> {
    split_top(s)
        .into_iter()
        .map(|p| {
            if let Some((k, v)) = p.split_once("!=") {
                Ok((k.trim().into(), false, v.trim().into()))
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Ok((k.trim().into(), true, v.trim().into()))
            } else {
                Err(format!("bad field selector {p:?}"))
            }
        })
        .collect()
}

#[cfg(test)]
mod selftest {
    use super::super::http::decode;
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors() {
        let obj = json!({"metadata": {"name": "a", "labels": {"app": "x", "tier": "web"}},
                         "spec": {"nodeName": "n1"}});
        let f = |l: &str, fs: &str| Filter {
            gv: "v1".into(),
            resource: "pods".into(),
            namespace: None,
            labels: parse_labels(l).expect("labels"),
            fields: parse_fields(fs).expect("fields"),
        };
        assert!(f("app=x,tier in (web, db)", "spec.nodeName=n1").matches(&obj));
        assert!(!f("app!=x", "").matches(&obj));
        assert!(f("!missing,app", "metadata.name!=b").matches(&obj));
        assert!(!f("tier notin (web)", "").matches(&obj));
        assert_eq!(decode("a%3Db+c"), "a=b c");
    }
}
