//! The Prometheus rules in `alerts/kubepulse-rules.yaml` and the optional
//! `alerts/kubepulse-mixin-duplicates.yaml`: `promtool check rules`,
//! `promtool test rules alerts/tests/*.yaml`, and the mixin conventions
//! promtool does not check (names, severities, annotations, runbook
//! sections, every alert unit-tested firing and not firing). Also the
//! network lab's test-time rewrite of the rules.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

const RULES: &str = "alerts/kubepulse-rules.yaml";
/// Alerts that duplicate kubernetes-mixin's, off by default (the chart's
/// `prometheusRule.mixinDuplicates` appends them).
const MIXIN_DUPLICATES: &str = "alerts/kubepulse-mixin-duplicates.yaml";
const RUNBOOKS: &str = "docs/runbooks.md";
/// Where `RUNBOOKS` is published (installations may point the chart's
/// `prometheusRule.runbookUrlBase` at their own copy).
const RUNBOOK_BASE: &str = kubepulse_testkit::runbooks::PUBLISHED;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// promtool from `PROMTOOL`, /usr/bin or `PATH`.
fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMTOOL") {
        return PathBuf::from(p);
    }
    let candidates = std::iter::once(PathBuf::from("/usr/bin/promtool")).chain(
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("promtool"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    );
    for c in candidates {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "promtool not found (looked at $PROMTOOL, /usr/bin/promtool and $PATH): \
         install Debian's `prometheus` package (apt-get install prometheus)"
    );
}

fn run_promtool(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(root())
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

fn test_files() -> Vec<String> {
    let mut files: Vec<String> = fs::read_dir(root().join("alerts/tests"))
        .expect("alerts/tests exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            p.strip_prefix(root())
                .expect("under the crate")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no unit tests in alerts/tests");
    files
}

#[test]
fn promtool_check_rules() {
    let out = run_promtool(&["check", "rules", RULES, MIXIN_DUPLICATES]);
    assert_eq!(out.matches("SUCCESS").count(), 2, "{out}");
}

/// The lab's Prometheus loads the rules with test-time windows
/// (`kubepulse_testkit::lab::prometheus::test_rules`): they must stay
/// valid, and no production window or delay may survive the rewrite.
#[test]
fn the_lab_rewrite_of_the_rules_passes_promtool() {
    let text = kubepulse_testkit::lab::prometheus::test_rules();
    for long in ["[5m]", "[10m]", "for: 5m", "for: 15m"] {
        assert!(!text.contains(long), "{long} survived the lab rewrite");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rules.yaml");
    fs::write(&file, text).expect("write");
    let out = run_promtool(&["check", "rules", file.to_str().expect("UTF-8")]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn mixin_duplicates_are_alerts_only_and_not_in_the_default_rules() {
    let default: BTreeSet<String> = alert_names(&read(RULES));
    let duplicates = alert_names(&read(MIXIN_DUPLICATES));
    assert!(!duplicates.is_empty());
    for d in &duplicates {
        assert!(!default.contains(d), "{d} is in both files");
    }
    let v: Value = serde_yaml::from_str(&read(MIXIN_DUPLICATES)).expect("parses");
    for g in v["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            assert!(
                r["alert"].is_string(),
                "{MIXIN_DUPLICATES}: only alerts (their recording rules stay in {RULES}): {r:?}"
            );
        }
    }
}

fn alert_names(text: &str) -> BTreeSet<String> {
    let v: Value = serde_yaml::from_str(text).expect("rules parse");
    v["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn promtool_test_rules() {
    let files = test_files();
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let out = run_promtool(&args);
    assert_eq!(
        out.matches("SUCCESS").count(),
        files.len(),
        "every test file must pass:\n{out}"
    );
}

/// Every rule of both files.
fn rules() -> Vec<Value> {
    let mut out = Vec::new();
    for file in [RULES, MIXIN_DUPLICATES] {
        let v: Value = serde_yaml::from_str(&read(file)).expect("rules parse");
        for g in v["groups"].as_sequence().expect("groups") {
            out.extend(g["rules"].as_sequence().expect("rules").iter().cloned());
        }
    }
    out
}

/// Parses a Prometheus duration like `1h30m` into seconds.
fn seconds(d: &str) -> u64 {
    let mut total = 0;
    let mut n = 0;
    for c in d.chars() {
        if let Some(digit) = c.to_digit(10) {
            n = n * 10 + u64::from(digit);
            continue;
        }
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 604_800,
            _ => panic!("unsupported duration {d}"),
        };
        n = 0;
    }
    total
}

#[test]
fn alerts_follow_the_conventions() {
    let anchors = kubepulse_testkit::runbooks::anchors(&read(RUNBOOKS));
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for r in rules() {
        if let Some(record) = r["record"].as_str() {
            let parts: Vec<&str> = record.split(':').collect();
            let well_formed = parts.len() == 3
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
                && parts[1].starts_with("kubepulse_");
            if !well_formed {
                problems.push(format!(
                    "record {record}: not level:kubepulse_metric:operations"
                ));
            }
            if !seen.insert(format!("record {record}")) {
                problems.push(format!("record {record} defined twice"));
            }
            continue;
        }
        let name = r["alert"].as_str().expect("alert or record");
        let severity = r["labels"]["severity"].as_str().unwrap_or("");
        let what = format!("{name} ({severity})");
        let camel = name.strip_prefix("Kubepulse").is_some_and(|rest| {
            rest.starts_with(|c: char| c.is_ascii_uppercase())
                && rest.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !camel {
            problems.push(format!(
                "{what}: name must be CamelCase with the Kubepulse prefix"
            ));
        }
        if !["critical", "warning"].contains(&severity) {
            problems.push(format!("{what}: severity must be critical or warning"));
        }
        if !seen.insert(format!("{name}/{severity}")) {
            problems.push(format!(
                "{what}: two alerts with the same name and severity"
            ));
        }
        match r["for"].as_str().map(seconds) {
            Some(s) if s >= 300 => {}
            other => problems.push(format!("{what}: for must be at least 5m, is {other:?}")),
        }
        let a = &r["annotations"];
        let summary = a["summary"].as_str().unwrap_or("");
        if !summary.ends_with('.') || summary.contains("{{") {
            problems.push(format!(
                "{what}: summary must be a static sentence with a period"
            ));
        }
        // absent() alerts have no labels or value worth templating.
        let absent = r["expr"]
            .as_str()
            .unwrap_or("")
            .trim_start()
            .starts_with("absent(");
        if !absent && !a["description"].as_str().unwrap_or("").contains("{{ $") {
            problems.push(format!("{what}: description must be templated"));
        }
        // Absolute (Alertmanager and Grafana show it outside the
        // repository), and resolving to this alert's section.
        let anchor = name.to_lowercase();
        if a["runbook_url"].as_str() != Some(&format!("{RUNBOOK_BASE}#{anchor}")) {
            problems.push(format!(
                "{what}: runbook_url must be {RUNBOOK_BASE}#{anchor}"
            ));
        }
        if !anchors.contains(&anchor) {
            problems.push(format!("{what}: {RUNBOOKS} has no section ## {name}"));
        }
    }
    assert!(problems.is_empty(), "rules:\n  {}", problems.join("\n  "));
}

#[test]
fn the_chart_defaults_to_the_published_runbooks() {
    let values: Value =
        serde_yaml::from_str(&read("charts/kubepulse/values.yaml")).expect("values parse");
    assert_eq!(values["prometheusRule"]["runbookUrlBase"], RUNBOOK_BASE);
}

#[test]
fn every_runbook_section_is_an_alert() {
    let alerts: BTreeSet<String> = rules()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(str::to_lowercase))
        .collect();
    for a in kubepulse_testkit::runbooks::anchors(&read(RUNBOOKS)) {
        if a.starts_with("kubepulse") {
            assert!(
                alerts.contains(&a),
                "{RUNBOOKS} has a section for no alert: {a}"
            );
        }
    }
}

/// What the unit tests cover for one alert name.
#[derive(Default, Debug)]
struct Coverage {
    /// Severities seen firing with full exp_labels and exp_annotations.
    firing: BTreeSet<String>,
    /// Tested with exp_alerts: [] at least once.
    quiet: bool,
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let mut cov: BTreeMap<String, Coverage> = BTreeMap::new();
    for f in test_files() {
        let v: Value = serde_yaml::from_str(&read(&f)).expect("test file parses");
        for t in v["tests"].as_sequence().expect("tests") {
            for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = case["alertname"].as_str().expect("alertname").to_string();
                let c = cov.entry(name.clone()).or_default();
                let exp = case["exp_alerts"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default();
                if exp.is_empty() {
                    c.quiet = true;
                }
                for e in exp {
                    let complete = e["exp_labels"].as_mapping().is_some_and(|m| !m.is_empty())
                        && ["summary", "description", "runbook_url"]
                            .iter()
                            .all(|k| e["exp_annotations"][k].is_string());
                    assert!(
                        complete,
                        "{f}: {name}: expected alerts need exp_labels and all annotations"
                    );
                    if let Some(s) = e["exp_labels"]["severity"].as_str() {
                        c.firing.insert(s.to_string());
                    }
                }
            }
        }
    }
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for r in rules() {
        let Some(name) = r["alert"].as_str() else {
            continue;
        };
        names.insert(name.to_string());
        let severity = r["labels"]["severity"].as_str().unwrap_or("");
        match cov.get(name) {
            None => problems.push(format!("{name}: no unit test")),
            Some(c) => {
                if !c.firing.contains(severity) {
                    problems.push(format!(
                        "{name}: never tested firing with severity {severity}"
                    ));
                }
                if !c.quiet {
                    problems.push(format!("{name}: never tested not firing"));
                }
            }
        }
    }
    for tested in cov.keys() {
        if !names.contains(tested) {
            problems.push(format!("unit tests name an unknown alert {tested}"));
        }
    }
    assert!(
        problems.is_empty(),
        "alert tests:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn helpers() {
    assert_eq!(seconds("1h30m"), 5400);
    assert_eq!(seconds("15m"), 900);
    let a = kubepulse_testkit::runbooks::anchors("# T\n## KubepulseFoo\ntext\n## Other thing\n");
    assert!(
        a.contains("kubepulsefoo") && a.contains("other-thing"),
        "{a:?}"
    );
    assert!(Path::new(RULES).is_relative());
}
