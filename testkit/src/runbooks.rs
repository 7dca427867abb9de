//! `docs/runbooks.md` as the alerts link to it: every alert's
//! `runbook_url` is `<base>#<anchor>`, the anchor one GitHub generates for
//! a `## ` heading of the file.

use std::collections::BTreeSet;

/// Where `docs/runbooks.md` is published: the base of every `runbook_url`
/// in `alerts/kubepulse-rules.yaml` and the chart's default
/// `prometheusRule.runbookUrlBase`.
pub const PUBLISHED: &str = "https://github.com/kubepulse/kubepulse/blob/main/docs/runbooks.md";

/// The anchors GitHub generates for the `## Heading` lines of `md`.
pub fn anchors(md: &str) -> BTreeSet<String> {
    md.lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// The anchors of the repository's `docs/runbooks.md`.
pub fn repo_anchors() -> BTreeSet<String> {
    let path = crate::repo_root().join("docs/runbooks.md");
    let md = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    anchors(&md)
}
