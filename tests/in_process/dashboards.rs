//! Lints the Grafana dashboards (`dashboards/*.json`) and every dashboard
//! query and rule expression (parsed with `promql-parser`), and checks that
//! the Helm chart's copies (`charts/kubepulse/files/`) and the manifests in
//! `deploy/monitoring/` carry them.
//! Dashboards stay cheap at 1,000 nodes: a panel reads raw kubepulse
//! counters and histograms only where [`RAW_READS_ALLOWED`] says why that
//! is cheap, and recording rules everywhere else.
//!
//! Regenerate both with `cargo xtask deploy`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubepulse::metrics::catalog::{MetricDef, MetricType, CONTROLLER, SECTIONS};
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{display_duration, walk_expr, ExprVisitor};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// Metrics a dashboard or rule may name that are not in the kubepulse
/// catalog, with where they come from.
const EXTERNAL_METRICS: &[(&str, &str)] = &[
    ("up", "Prometheus: scrape health of every target"),
    ("ALERTS", "Prometheus: state of the alerting rules"),
    (
        "kube_daemonset_status_desired_number_scheduled",
        "kube-state-metrics: nodes a DaemonSet should run on",
    ),
    (
        "process_cpu_seconds_total",
        "prometheus crate process collector, exported by kubepulse outside the catalog",
    ),
    (
        "process_resident_memory_bytes",
        "prometheus crate process collector, exported by kubepulse outside the catalog",
    ),
];

/// Every kubepulse metric family: agent, Kubernetes discovery and controller.
fn catalog() -> impl Iterator<Item = &'static MetricDef> {
    SECTIONS.iter().flat_map(|(_, defs)| defs.iter())
}

/// Raw kubepulse counters and histograms a dashboard query may read
/// directly, with why that stays cheap. Every other rate or quantile a
/// panel shows reads a recording rule of alerts/kubepulse-rules.yaml: at
/// 1,000 nodes an agent metric comes from 2,000 scrape targets, a per-peer
/// one with some 60 series each. So only controller metrics qualify, and
/// only those without `target_node`: their series do not grow with the
/// number of nodes (two replicas; the follower's counters stand still).
const RAW_READS_ALLOWED: &[(&str, &str)] = &[
    (
        "kubepulse_apiserver_request_duration_seconds",
        "controller sampler: about a dozen verb/resource/scope/code combinations of 20 lines per replica",
    ),
    (
        "kubepulse_apiserver_watch_event_latency_seconds",
        "controller: 3 event types of 20 lines per replica",
    ),
    ("kubepulse_apiserver_throttled_total", "controller: one series per replica"),
    ("kubepulse_apiserver_conflicts_total", "controller: one series per resource (3) per replica"),
    ("kubepulse_apiserver_client_wait_seconds_total", "controller: one series per replica"),
    ("kubepulse_controller_watch_restarts_total", "controller: one series per watch (4) per replica"),
    ("kubepulse_controller_leader_acquisitions_total", "controller: one series per replica"),
    ("kubepulse_controller_leader_errors_total", "controller: at most one series per error reason (13) per replica"),
    ("kubepulse_plan_writes_total", "controller: op x outcome (4 series) per replica"),
    (
        "kubepulse_node_lease_renew_interval_seconds",
        "controller: one unlabelled histogram per replica, all nodes' renewals in it",
    ),
    ("kubepulse_pod_startup_probes_total", "controller: one series per outcome (8) per replica"),
    (
        "kubepulse_pod_startup_duration_seconds",
        "controller: 7 phases of a histogram per replica; one probe pod every 30 s",
    ),
    ("kubepulse_probe_objects_swept_total", "controller: resource x reason (a handful) per replica"),
];

/// Template variables every dashboard must define.
const REQUIRED_VARIABLES: &[&str] = &["datasource", "cluster", "job"];
/// Grafana's built-in variables that queries may use.
const BUILTIN_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range"];
/// Panel types the dashboards may use.
const PANEL_TYPES: &[&str] = &["row", "stat", "timeseries", "table", "heatmap"];
const DATASOURCE_UID: &str = "${datasource}";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `dashboards/*.json`, sorted by file name.
fn dashboards() -> Vec<(String, Json)> {
    let dir = root().join("dashboards");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("dashboards/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let json: Json = serde_json::from_str(&read(&p))
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            (name, json)
        })
        .collect()
}

fn rules() -> Yaml {
    let text = read(&root().join("alerts/kubepulse-rules.yaml"));
    serde_yaml::from_str(&text).expect("alerts/kubepulse-rules.yaml parses")
}

/// (name or alert, expression) of every rule.
fn rule_exprs(rules: &Yaml) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for g in rules["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["record"]
                .as_str()
                .or_else(|| r["alert"].as_str())
                .expect("record or alert");
            let expr = r["expr"].as_str().expect("expr");
            out.push((name.to_string(), expr.to_string()));
        }
    }
    out
}

fn recorded_names(rules: &Yaml) -> BTreeSet<String> {
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .filter_map(|r| r["record"].as_str().map(str::to_string))
        .collect()
}

/// Every panel, rows' nested panels included.
fn panels(d: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested.iter());
        }
    }
    out
}

/// Grafana's range variables, replaced by sentinel durations so a query
/// parses as PromQL; a range with the sentinel used that variable.
const RANGE_VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "1111s"),
    ("$__interval", "1112s"),
    ("$__range", "1113s"),
];
const RATE_INTERVAL: Duration = Duration::from_secs(1111);

/// What a PromQL expression selects, from its syntax tree.
#[derive(Debug, Default)]
struct Selected {
    /// Every vector selector (plain or inside a range): name and matchers.
    selectors: Vec<(String, Vec<Matcher>)>,
    /// (function, range) of every `rate()`/`irate()` over a range selector.
    rate_ranges: Vec<(&'static str, Duration)>,
}

impl Selected {
    fn selector(&mut self, vs: &VectorSelector) {
        let name = vs.name.clone().or_else(|| {
            vs.matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone())
        });
        if let Some(name) = name {
            self.selectors.push((name, vs.matchers.matchers.clone()));
        }
    }

    fn names(&self) -> BTreeSet<String> {
        self.selectors.iter().map(|(n, _)| n.clone()).collect()
    }
}

impl ExprVisitor for Selected {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, e: &Expr) -> Result<bool, Self::Error> {
        match e {
            Expr::VectorSelector(vs) => self.selector(vs),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs),
            Expr::Call(call) if matches!(call.func.name, "rate" | "irate") => {
                for arg in &call.args.args {
                    if let Expr::MatrixSelector(ms) = arg.as_ref() {
                        self.rate_ranges.push((call.func.name, ms.range));
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

/// Parses a query (Grafana range variables replaced) with `promql-parser`.
fn parse_promql(expr: &str) -> Result<Selected, String> {
    let mut text = expr.to_string();
    for (var, sentinel) in RANGE_VARIABLES {
        text = text.replace(var, sentinel);
    }
    let ast = promql_parser::parser::parse(&text)?;
    let mut selected = Selected::default();
    let Ok(_) = walk_expr(&mut selected, &ast);
    Ok(selected)
}

/// The metric names a PromQL expression selects; panics naming the
/// expression when it does not parse.
fn metric_names(expr: &str) -> BTreeSet<String> {
    parse_promql(expr)
        .unwrap_or_else(|e| panic!("{expr:?} does not parse as PromQL: {e}"))
        .names()
}

/// The raw kubepulse counters and histograms a parsed expression reads, by
/// family name: selectors of a catalog counter, or of a catalog
/// histogram's `_bucket`, `_sum` or `_count` line. Recording rules (names
/// with `:`) are not raw.
fn raw_reads(selected: &Selected) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, _) in &selected.selectors {
        if !name.starts_with("kubepulse_") || name.contains(':') {
            continue;
        }
        if catalog().any(|d| d.name == name && d.kind == MetricType::Counter) {
            out.insert(name.clone());
        }
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                if catalog().any(|d| d.name == base && d.kind == MetricType::Histogram) {
                    out.insert(base.to_string());
                }
            }
        }
    }
    out
}

/// Whether `matchers` hold `label=~"value"`.
fn has_regex_matcher(matchers: &[Matcher], label: &str, value: &str) -> bool {
    matchers
        .iter()
        .any(|m| m.name == label && m.value == value && matches!(m.op, MatchOp::Re(_)))
}

/// Why `name` is not a metric the dashboards and rules may use, if it is not.
fn unknown_metric(name: &str, recorded: &BTreeSet<String>) -> Option<String> {
    if recorded.contains(name) || EXTERNAL_METRICS.iter().any(|(m, _)| *m == name) {
        return None;
    }
    if catalog().any(|d| d.name == name) {
        return None;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if catalog().any(|d| d.name == base && d.kind == MetricType::Histogram) {
                return None;
            }
        }
    }
    Some(format!(
        "{name} is not in src/metrics/catalog.rs SECTIONS, not a recording rule of \
         alerts/kubepulse-rules.yaml and not in EXTERNAL_METRICS"
    ))
}

/// Lint problems of one query expression of a dashboard.
fn lint_expr(expr: &str, variables: &BTreeSet<String>, recorded: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let selected = match parse_promql(expr) {
        Ok(s) => s,
        Err(e) => return vec![format!("does not parse as PromQL: {e}")],
    };
    for name in selected.names() {
        if let Some(p) = unknown_metric(&name, recorded) {
            problems.push(p);
        }
    }
    // Rates and quantiles over raw series come from recording rules.
    for family in raw_reads(&selected) {
        if !RAW_READS_ALLOWED.iter().any(|(m, _)| *m == family) {
            problems.push(format!(
                "reads the raw {family} series: read a recording rule instead (or list it in \
                 RAW_READS_ALLOWED with why it stays cheap at 1,000 nodes)"
            ));
        }
    }
    // Ranges of rate()/irate() use $__rate_interval.
    for (f, range) in &selected.rate_ranges {
        if *range != RATE_INTERVAL {
            problems.push(format!(
                "{f}(..) must use [$__rate_interval], has [{}]",
                display_duration(range)
            ));
        }
    }
    // Every selector of a kubepulse metric filters by cluster, raw ones by job too.
    for (name, matchers) in &selected.selectors {
        if !name.contains("kubepulse_") {
            continue;
        }
        if !has_regex_matcher(matchers, "cluster", "$cluster") {
            problems.push(format!("{name} is not filtered by cluster=~\"$cluster\""));
        }
        let raw = !name.contains(':');
        if raw && !has_regex_matcher(matchers, "job", "$job") {
            problems.push(format!("{name} is not filtered by job=~\"$job\""));
        }
    }
    // Variables are defined and used with =~ (multi-value and All safe).
    let b = expr.as_bytes();
    for (i, _) in expr.match_indices('$') {
        let tail = &expr[i + 1..];
        let name: String = tail
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if BUILTIN_VARIABLES.contains(&name.as_str()) {
            continue;
        }
        if !variables.contains(&name) {
            problems.push(format!("${name} is not a template variable"));
        }
        if i >= 2 && b[i - 1] == b'"' && b[i - 2] == b'=' && (i < 3 || b[i - 3] != b'~') {
            problems.push(format!("${name} must be matched with =~, not ="));
        }
    }
    problems
}

/// Whether `text` refers to `$name` or `${name}` (not to a longer name
/// that starts with it).
fn uses_variable(text: &str, name: &str) -> bool {
    text.contains(&format!("${{{name}}}"))
        || text.match_indices(&format!("${name}")).any(|(i, m)| {
            !text[i + m.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The cluster variable is hidden, as kubernetes-mixin hides it unless
/// `showMultiCluster` is set: a single-cluster install has nothing to
/// pick, and "All" (`.*`) also matches series without a cluster label
/// (set `hide` to 0 to choose among several clusters). The node variable,
/// where a dashboard has one, is multi-select with an "All" of `.*` (a
/// regex of 1,000 node names would be sent with every query otherwise)
/// and lists the nodes from the one-per-agent build info series.
fn lint_cluster_and_node_variables(vars: &[Json]) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(c) = vars.iter().find(|v| v["name"] == "cluster") {
        if c["hide"] != 2 {
            problems.push("variable cluster must be hidden (hide: 2)".to_string());
        }
    }
    if let Some(n) = vars.iter().find(|v| v["name"] == "node") {
        if n["multi"] != true || n["includeAll"] != true || n["allValue"] != ".*" {
            problems.push(
                "variable node must be multi-select with includeAll and allValue \".*\""
                    .to_string(),
            );
        }
        let q = n["query"]["query"].as_str().unwrap_or("");
        if !q.starts_with("label_values(kubepulse_build_info{") || !q.ends_with(", node)") {
            problems.push(format!(
                "variable node must list label_values(kubepulse_build_info{{..}}, node), has {q:?}"
            ));
        }
    }
    problems
}

fn ds_uid(v: &Json) -> Option<&str> {
    v["uid"].as_str()
}

/// Every lint problem of one dashboard.
fn lint_dashboard(d: &Json, recorded: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut p = |s: String| problems.push(s);
    let uid = d["uid"].as_str().unwrap_or("");
    if uid.is_empty()
        || uid.len() > 40
        || !uid
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        p(format!("uid {uid:?} must be a stable [a-z0-9-]{{1,40}}"));
    }
    for key in ["title", "description"] {
        if d[key].as_str().is_none_or(str::is_empty) {
            p(format!("missing {key}"));
        }
    }
    if !d["tags"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t == "kubepulse"))
    {
        p("missing tag kubepulse".into());
    }
    if !d["schemaVersion"].is_u64() {
        p("schemaVersion must be a number".into());
    }
    if d["time"]["from"].as_str().is_none() || d["time"]["to"].as_str().is_none() {
        p("time.from and time.to must be set".into());
    }
    if d.get("id").is_some_and(|id| !id.is_null()) {
        p("dashboard id must be absent or null (Grafana assigns it)".into());
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: BTreeSet<String> = vars
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect();
    for r in REQUIRED_VARIABLES {
        if !names.contains(*r) {
            p(format!("missing template variable {r}"));
        }
    }
    for v in &vars {
        let name = v["name"].as_str().unwrap_or("?");
        match v["type"].as_str() {
            Some("datasource") => {
                if v["query"] != "prometheus" {
                    p(format!(
                        "variable {name} must select prometheus data sources"
                    ));
                }
            }
            Some("query") => {
                if v["datasource"]
                    .as_object()
                    .and_then(|_| ds_uid(&v["datasource"]))
                    != Some(DATASOURCE_UID)
                {
                    p(format!("variable {name} must query ${{datasource}}"));
                }
                let q = v["query"]["query"].as_str().unwrap_or("");
                // label_values(<selector>, <label>): lint the selector.
                let selector = q
                    .strip_prefix("label_values(")
                    .and_then(|r| r.rsplit_once(',').map(|(sel, _)| sel))
                    .unwrap_or(q);
                for m in metric_names(selector) {
                    if let Some(e) = unknown_metric(&m, recorded) {
                        p(format!("variable {name}: {e}"));
                    }
                }
            }
            Some("custom") => {
                if v["query"].as_str().is_none_or(str::is_empty) {
                    p(format!("custom variable {name} has no values"));
                }
            }
            other => p(format!("variable {name} has unexpected type {other:?}")),
        }
    }
    for problem in lint_cluster_and_node_variables(&vars) {
        p(problem);
    }
    // Every variable but the data source filters something.
    let mut uses = String::new();
    for v in &vars {
        uses.push_str(v["query"]["query"].as_str().unwrap_or(""));
    }
    for panel in panels(d) {
        if let Some(r) = panel["repeat"].as_str() {
            uses.push_str(&format!(" ${r}\n"));
        }
        for t in panel["targets"].as_array().into_iter().flatten() {
            uses.push_str(t["expr"].as_str().unwrap_or(""));
            uses.push('\n');
        }
    }
    for name in &names {
        if name != "datasource" && !uses_variable(&uses, name) {
            p(format!("variable {name} is used by no query"));
        }
    }
    let mut ids = BTreeSet::new();
    for panel in panels(d) {
        let title = panel["title"].as_str().unwrap_or("");
        let what = format!("panel {title:?}");
        match panel["id"].as_u64() {
            Some(id) => {
                if !ids.insert(id) {
                    p(format!("{what}: duplicate panel id {id}"));
                }
            }
            None => p(format!("{what}: id must be a positive integer")),
        }
        if title.is_empty() {
            p(format!("{what}: missing title"));
        }
        let kind = panel["type"].as_str().unwrap_or("");
        if !PANEL_TYPES.contains(&kind) {
            p(format!("{what}: unexpected type {kind:?}"));
        }
        let g = &panel["gridPos"];
        match (
            g["x"].as_u64(),
            g["y"].as_u64(),
            g["w"].as_u64(),
            g["h"].as_u64(),
        ) {
            (Some(x), Some(_), Some(w), Some(h)) if w >= 1 && h >= 1 && x + w <= 24 => {}
            _ => p(format!(
                "{what}: gridPos must have x, y, w, h within 24 columns"
            )),
        }
        if kind == "row" {
            if panel["targets"].as_array().is_some_and(|t| !t.is_empty()) {
                p(format!("{what}: rows have no queries"));
            }
            if let Some(r) = panel["repeat"].as_str() {
                if !names.contains(r) {
                    p(format!("{what}: repeats over undefined variable {r}"));
                }
            }
            continue;
        }
        if panel["description"].as_str().is_none_or(str::is_empty) {
            p(format!("{what}: missing description"));
        }
        if ds_uid(&panel["datasource"]) != Some(DATASOURCE_UID) {
            p(format!("{what}: datasource must be ${{datasource}}"));
        }
        if panel["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            p(format!("{what}: missing fieldConfig.defaults.unit"));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            p(format!("{what}: no queries"));
        }
        let mut refs = BTreeSet::new();
        for t in &targets {
            let r = t["refId"].as_str().unwrap_or("");
            if r.is_empty() || !refs.insert(r.to_string()) {
                p(format!("{what}: refId {r:?} missing or duplicate"));
            }
            if ds_uid(&t["datasource"]) != Some(DATASOURCE_UID) {
                p(format!("{what} {r}: datasource must be ${{datasource}}"));
            }
            let expr = t["expr"].as_str().unwrap_or("");
            if expr.trim().is_empty() {
                p(format!("{what} {r}: empty expr"));
            }
            if !expr.contains("$cluster") {
                p(format!("{what} {r}: query has no cluster selector"));
            }
            for e in lint_expr(expr, &names, recorded) {
                p(format!("{what} {r}: {e}"));
            }
        }
    }
    problems
}

#[test]
fn dashboards_pass_the_lint() {
    let recorded = recorded_names(&rules());
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for (name, d) in dashboards() {
        let uid = d["uid"].as_str().unwrap_or("").to_string();
        if !uids.insert(uid.clone()) {
            problems.push(format!("{name}: uid {uid} used twice"));
        }
        for p in lint_dashboard(&d, &recorded) {
            problems.push(format!("{name}: {p}"));
        }
    }
    assert!(
        problems.is_empty(),
        "dashboard lint:\n  {}",
        problems.join("\n  ")
    );
}

/// Every panel query of every dashboard: (dashboard file, panel title,
/// refId, expression).
fn panel_queries() -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for (name, d) in dashboards() {
        for panel in panels(&d) {
            for t in panel["targets"].as_array().into_iter().flatten() {
                out.push((
                    name.clone(),
                    panel["title"].as_str().unwrap_or("").to_string(),
                    t["refId"].as_str().unwrap_or("").to_string(),
                    t["expr"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn raw_reads_are_only_the_allowed_cheap_ones() {
    let queries = panel_queries();
    let mut read = BTreeSet::new();
    let mut raw_queries = 0;
    for (_, _, _, expr) in &queries {
        let reads = raw_reads(&parse_promql(expr).expect("parses (see the lint)"));
        raw_queries += usize::from(!reads.is_empty());
        read.extend(reads);
    }
    // The lint (dashboards_pass_the_lint) rejects reads not listed here;
    // this checks the list itself.
    let mut problems = Vec::new();
    for (m, why) in RAW_READS_ALLOWED {
        if why.is_empty() {
            problems.push(format!("{m}: no reason"));
        }
        if !read.contains(*m) {
            problems.push(format!("{m}: listed but no dashboard reads it raw"));
        }
        match CONTROLLER.iter().find(|d| d.name == *m) {
            Some(d) if d.labels.contains(&"target_node") => problems.push(format!(
                "{m}: has target_node, so it grows with the nodes: record it"
            )),
            Some(d) if d.kind == MetricType::Gauge => {
                problems.push(format!("{m}: a gauge is no raw counter or histogram read"))
            }
            Some(_) => {}
            None => problems.push(format!(
                "{m}: not a controller metric (agent series grow with the nodes): record it"
            )),
        }
    }
    eprintln!(
        "{raw_queries} of {} dashboard queries read raw kubepulse counters or histograms: {read:?}",
        queries.len()
    );
    assert!(
        problems.is_empty(),
        "RAW_READS_ALLOWED:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_recording_rule_a_dashboard_reads_exists() {
    let recorded = recorded_names(&rules());
    let mut read = BTreeSet::new();
    let mut problems = Vec::new();
    for (file, title, r, expr) in panel_queries() {
        for name in metric_names(&expr).into_iter().filter(|n| n.contains(':')) {
            if !recorded.contains(&name) {
                problems.push(format!(
                    "{file}: panel {title:?} {r}: no recording rule {name}"
                ));
            }
            read.insert(name);
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The dashboards do read recording rules (the check above is not vacuous).
    assert!(
        read.len() > 20,
        "only {} recording rules read: {read:?}",
        read.len()
    );
}

/// The alerts that duplicate kubernetes-mixin's, off by default (their
/// expressions read the recording rules of alerts/kubepulse-rules.yaml).
fn mixin_duplicates() -> Yaml {
    let text = read(&root().join("alerts/kubepulse-mixin-duplicates.yaml"));
    serde_yaml::from_str(&text).expect("alerts/kubepulse-mixin-duplicates.yaml parses")
}

#[test]
fn rule_expressions_name_known_metrics() {
    let rules = rules();
    let recorded = recorded_names(&rules);
    let mut problems = Vec::new();
    let mut exprs = rule_exprs(&rules);
    exprs.extend(rule_exprs(&mixin_duplicates()));
    for (name, expr) in exprs {
        let metrics = match parse_promql(&expr) {
            Ok(selected) => selected.names(),
            Err(e) => {
                problems.push(format!("{name}: does not parse as PromQL: {e}"));
                continue;
            }
        };
        if metrics.is_empty() {
            problems.push(format!("{name}: no metric found in {expr:?}"));
        }
        for m in metrics {
            if let Some(e) = unknown_metric(&m, &recorded) {
                problems.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(problems.is_empty(), "rules:\n  {}", problems.join("\n  "));
}

#[test]
fn every_external_metric_is_used() {
    let rules = rules();
    let mut used = BTreeSet::new();
    for (_, expr) in rule_exprs(&rules) {
        used.extend(metric_names(&expr));
    }
    for (_, _, _, expr) in panel_queries() {
        used.extend(metric_names(&expr));
    }
    for (m, from) in EXTERNAL_METRICS {
        assert!(
            used.contains(*m),
            "EXTERNAL_METRICS lists unused {m} ({from})"
        );
    }
}

/// The metric families a dashboard or rule names (recording rules excluded),
/// histogram series mapped to their family.
fn named_families() -> BTreeSet<String> {
    let rules = rules();
    let recorded = recorded_names(&rules);
    let mut names = BTreeSet::new();
    for (_, expr) in rule_exprs(&rules) {
        names.extend(metric_names(&expr));
    }
    for (_, _, _, expr) in panel_queries() {
        names.extend(metric_names(&expr));
    }
    names
        .into_iter()
        .filter(|n| !recorded.contains(n))
        .map(|n| {
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = n.strip_suffix(suffix) {
                    if catalog().any(|d| d.name == base) {
                        return base.to_string();
                    }
                }
            }
            n
        })
        .collect()
}

#[test]
fn every_named_metric_is_documented() {
    let docs = read(&root().join("docs/metrics.md"));
    let missing: Vec<String> = named_families()
        .into_iter()
        .filter(|n| !docs.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "named by dashboards or rules but not in a docs/metrics.md table: {missing:?}"
    );
}

#[test]
fn lint_catches_mistakes() {
    let recorded = recorded_names(&rules());
    let vars: BTreeSet<String> = ["cluster", "job", "path", "node"].map(String::from).into();
    let ok = r#"sum by (path) (node_path_protocol:kubepulse_probe_lost:rate5m{cluster=~"$cluster",job=~"$job",node=~"$node",path=~"$path"})"#;
    assert_eq!(lint_expr(ok, &vars, &recorded), Vec::<String>::new());
    // Controller metrics are in the catalog too, and an allowed raw read.
    let controller = r#"sum by (le) (rate(kubepulse_apiserver_request_duration_seconds_bucket{cluster=~"$cluster",job=~"$job"}[$__rate_interval])) and on (instance) (kubepulse_controller_leader{cluster=~"$cluster",job=~"$job"} == 1)"#;
    assert_eq!(
        lint_expr(controller, &vars, &recorded),
        Vec::<String>::new()
    );
    let cases = [
        (
            r#"rate(kubepulse_probe_sent_total{cluster=~"$cluster",job=~"$job"}[5m])"#,
            "$__rate_interval",
        ),
        (
            r#"kubepulse_no_such_metric{cluster=~"$cluster",job=~"$job"}"#,
            "kubepulse_no_such_metric is not in",
        ),
        (r#"kubepulse_peers{job=~"$job"}"#, "not filtered by cluster"),
        (
            r#"kubepulse_peers{cluster=~"$cluster"}"#,
            "not filtered by job",
        ),
        (
            r#"kubepulse_peers{cluster=~"$cluster",job=~"$job",path="$path"}"#,
            "must be matched with =~",
        ),
        (
            r#"kubepulse_peers{cluster=~"$cluster",job=~"$job",path=~"$nope"}"#,
            "$nope is not a template variable",
        ),
        (
            r#"kubepulse_probe_sent_total_bucket{cluster=~"$cluster",job=~"$job"}"#,
            "is not in",
        ),
        (
            r#"sum(rate(kubepulse_probe_sent_total{cluster=~"$cluster",job=~"$job"}[$__rate_interval])"#,
            "does not parse as PromQL",
        ),
        (
            r#"irate(kubepulse_probe_sent_total{cluster=~"$cluster",job=~"$job"}[$__interval])"#,
            "irate(..) must use [$__rate_interval]",
        ),
        // Raw per-peer counters and agent histograms: read a recording rule.
        (
            r#"sum(rate(kubepulse_probe_lost_total{cluster=~"$cluster",job=~"$job"}[$__rate_interval]))"#,
            "reads the raw kubepulse_probe_lost_total series",
        ),
        (
            r#"histogram_quantile(0.99, sum by (le) (rate(kubepulse_probe_rtt_seconds_bucket{cluster=~"$cluster",job=~"$job"}[$__rate_interval])))"#,
            "reads the raw kubepulse_probe_rtt_seconds series",
        ),
        (
            r#"sum(rate(kubepulse_tcp_connect_duration_seconds_count{cluster=~"$cluster",job=~"$job"}[$__rate_interval]))"#,
            "reads the raw kubepulse_tcp_connect_duration_seconds series",
        ),
    ];
    for (expr, want) in cases {
        let got = lint_expr(expr, &vars, &recorded);
        assert!(
            got.iter().any(|p| p.contains(want)),
            "{expr}: expected a problem containing {want:?}, got {got:?}"
        );
    }
    // Structural lint of a dashboard with mistakes planted.
    let (_, mut d) = dashboards()
        .into_iter()
        .find(|(name, _)| name == "kubepulse-overview.json")
        .expect("the overview dashboard");
    assert_eq!(lint_dashboard(&d, &recorded), Vec::<String>::new());
    let first = d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .position(|p| p["type"] != "row")
        .expect("a panel with queries");
    let other_id = d["panels"][first + 1]["id"].clone();
    let p = &mut d["panels"][first];
    p["description"] = Json::String(String::new());
    p["fieldConfig"]["defaults"]["unit"] = Json::Null;
    p["targets"][0]["datasource"]["uid"] = Json::String("prometheus".into());
    p["id"] = other_id;
    d["tags"] = serde_json::json!([]);
    let vars = d["templating"]["list"].as_array_mut().expect("variables");
    for v in vars.iter_mut() {
        if v["name"] == "cluster" {
            v["hide"] = 0.into();
        }
        if v["name"] == "node" {
            v["allValue"] = Json::Null;
        }
    }
    vars.push(serde_json::json!({"name": "unused", "type": "custom", "query": "a,b"}));
    let got = lint_dashboard(&d, &recorded).join("\n");
    for want in [
        "missing description",
        "missing fieldConfig.defaults.unit",
        "A: datasource must be ${datasource}",
        "duplicate panel id",
        "missing tag kubepulse",
        "variable cluster must be hidden",
        "variable node must be multi-select",
        "variable unused is used by no query",
    ] {
        assert!(got.contains(want), "expected {want:?} in:\n{got}");
    }
    assert_eq!(
        metric_names(
            r#"sum by (cluster, le) (rate(a_total{x="y"}[5m] offset 1w)) / on (cluster) group_left () b:c:d > bool 1e-3 and label_replace(up == 1, "d", "$1", "pod", "(.+)")"#
        ),
        ["a_total", "b:c:d", "up"].map(String::from).into()
    );
    assert!(uses_variable("x{a=~\"$node\"}", "node"));
    assert!(uses_variable("x{a=~\"${node}\"}", "node"));
    assert!(!uses_variable("x{a=~\"$nodes\"}", "node"));
}

// ------------------------------------------------------------------ deploy/

/// The chart's copies of the rules and dashboards are the sources, byte
/// for byte, and the manifests of deploy/ carry them: the dashboard
/// ConfigMaps hold exactly `dashboards/*.json` with what the Grafana
/// sidecar needs, the PrometheusRule and the rules ConfigMap exactly the
/// source rules (the chart's default substitutions are the source's own
/// literals). tests/install checks that deploy/ is what the chart renders.
#[test]
fn chart_and_deploy_carry_the_sources() {
    let want = xtask::deploy::chart_files::generate(&root()).expect("read the sources");
    let stale: Vec<&String> = want
        .iter()
        .filter(|(path, text)| fs::read_to_string(root().join(path)).ok().as_ref() != Some(*text))
        .map(|(path, _)| path)
        .collect();
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}; regenerate with `cargo xtask deploy`"
    );

    let objects = |rel: &str| -> Vec<Yaml> {
        serde_yaml::Deserializer::from_str(&read(&root().join(rel)))
            .map(|d| serde::Deserialize::deserialize(d).expect("generated YAML parses"))
            .collect()
    };
    let sources = dashboards();
    let maps = objects("deploy/monitoring/dashboards/dashboards.yaml");
    assert_eq!(maps.len(), sources.len(), "one ConfigMap per dashboard");
    for (file, json) in &sources {
        let cm = maps
            .iter()
            .find(|m| m["data"][file.as_str()].is_string())
            .unwrap_or_else(|| panic!("no ConfigMap carries {file}"));
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "{file}");
        assert!(cm["metadata"]["annotations"]["grafana_folder"].is_string());
        let carried: Json = serde_json::from_str(cm["data"][file.as_str()].as_str().unwrap_or(""))
            .expect("dashboard JSON in the ConfigMap parses");
        assert_eq!(&carried, json, "{file}");
    }
    let rule = &objects("deploy/monitoring/prometheus-operator/prometheusrule.yaml")[0];
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["spec"]["groups"], rules()["groups"]);
    let cm = &objects("deploy/monitoring/plain-prometheus/rules-configmap.yaml")[0];
    let file: Yaml = serde_yaml::from_str(
        cm["data"]["kubepulse-rules.yaml"]
            .as_str()
            .expect("the rules file in the ConfigMap"),
    )
    .expect("the ConfigMap's rules parse");
    assert_eq!(file["groups"], rules()["groups"]);
}
