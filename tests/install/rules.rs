//! The rules as installed: the chart substitutes the runbook base, the job
//! selector and the namespace selector into the source rules, every
//! `runbook_url` is absolute and resolves to a section of
//! docs/runbooks.md, and promtool accepts the result.

use serde_yaml::Value;

use crate::render::{self, find, parse};
use crate::tools;

fn alerts(groups: &Value) -> Vec<&Value> {
    groups
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .filter(|r| r["alert"].is_string())
        .collect()
}

/// Every alert's runbook_url is `<base>#<anchor>` with an anchor of
/// docs/runbooks.md.
fn check_runbooks(groups: &Value, base: &str) {
    let anchors = kubepulse_testkit::runbooks::repo_anchors();
    let all = alerts(groups);
    assert!(!all.is_empty());
    for a in all {
        let url = a["annotations"]["runbook_url"]
            .as_str()
            .expect("runbook_url");
        let anchor = url
            .strip_prefix(&format!("{base}#"))
            .unwrap_or_else(|| panic!("{url} is not under {base}"));
        assert!(
            anchors.contains(anchor),
            "{url}: no such section in docs/runbooks.md"
        );
    }
}

fn values(name: &str) -> std::path::PathBuf {
    tools::chart()
        .join("ci")
        .join(format!("{name}-values.yaml"))
}

#[test]
fn runbook_urls_are_absolute_and_resolve() {
    let defaults: Value = serde_yaml::from_str(
        &std::fs::read_to_string(tools::chart().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values parse");
    let default_base = defaults["prometheusRule"]["runbookUrlBase"]
        .as_str()
        .expect("a default base");
    let objs = parse(&render::helm_template(
        &values("default"),
        "kubepulse",
        &["--set", "prometheusRule.enabled=true"],
    ));
    check_runbooks(
        &find(&objs, "PrometheusRule", "kubepulse")["spec"]["groups"],
        default_base,
    );
    // A base of the installation's own.
    let objs = parse(&render::helm_template(
        &values("prometheus-operator"),
        "kubepulse",
        &[],
    ));
    check_runbooks(
        &find(&objs, "PrometheusRule", "kubepulse")["spec"]["groups"],
        "https://wiki.example.com/kubepulse/runbooks.md",
    );
}

/// The selectors from values reach the rule expressions, and promtool
/// accepts the rules file as a plain Prometheus would load it.
#[test]
fn selectors_are_substituted_and_promtool_accepts_the_result() {
    let objs = parse(&render::helm_template(
        &values("plain-prometheus"),
        "kubepulse",
        &[
            "--set-string",
            "prometheusRule.namespaceSelector=namespace=\"kubepulse\"",
        ],
    ));
    let cm = find(&objs, "ConfigMap", "kubepulse-rules");
    let text = cm["data"]["kubepulse-rules.yaml"]
        .as_str()
        .expect("rules file");
    assert!(text.contains(r#"up{job=~"kubepulse.*"}"#), "jobSelector");
    assert!(
        !text.contains(r#"job=~".*kubepulse.*""#),
        "every default replaced"
    );
    assert!(
        text.contains(r#"{namespace="kubepulse",daemonset=~"kubepulse.*"}"#),
        "namespaceSelector"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("kubepulse-rules.yaml");
    std::fs::write(&file, text).expect("write");
    let out = tools::run(
        &tools::promtool(),
        &["check", "rules", file.to_str().expect("UTF-8")],
    );
    assert!(out.contains("SUCCESS"), "{out}");
    let parsed: Value = serde_yaml::from_str(text).expect("rules parse");
    check_runbooks(&parsed["groups"], kubepulse_testkit::runbooks::PUBLISHED);
}
