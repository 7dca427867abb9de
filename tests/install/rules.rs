//! The rules as installed: the chart substitutes the runbook base, the job
//! selector and the namespace selector into the source rules and appends
//! the alerts that duplicate kubernetes-mixin only when asked to, every
//! `runbook_url` is absolute and resolves to a section of
//! docs/runbooks.md, promtool accepts the result, and the promtool tests
//! of `alerts/tests/selectors/` pass against the rendering with the
//! default values and with changed ones.

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

/// The rules file of the kubepulse-rules ConfigMap rendered with `extra`.
fn rendered_rules(extra: &[&str]) -> String {
    let mut args = vec!["--set", "prometheusRule.configMap=true"];
    args.extend_from_slice(extra);
    let objs = parse(&render::helm_template(
        &values("default"),
        "kubepulse",
        &args,
    ));
    find(&objs, "ConfigMap", "kubepulse-rules")["data"]["kubepulse-rules.yaml"]
        .as_str()
        .expect("rules file")
        .to_string()
}

fn alert_names(groups: &Value) -> std::collections::BTreeSet<String> {
    alerts(groups)
        .into_iter()
        .filter_map(|a| a["alert"].as_str().map(str::to_string))
        .collect()
}

/// `promtool test rules` of `alerts/tests/selectors/<test>` against
/// `rules`, written beside it as the kubepulse-rules.yaml it names.
fn promtool_test(rules: &str, test: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("kubepulse-rules.yaml"), rules).expect("write rules");
    let src = tools::root().join("alerts/tests/selectors").join(test);
    let dst = dir.path().join(test);
    std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let out = tools::run(
        &tools::promtool(),
        &["test", "rules", dst.to_str().expect("UTF-8")],
    );
    assert!(out.contains("SUCCESS"), "{test}: {out}");
}

/// The alerts of alerts/kubepulse-mixin-duplicates.yaml are in the rules
/// only with `prometheusRule.mixinDuplicates`, substituted like the rest.
#[test]
fn mixin_duplicates_are_off_by_default() {
    let source: Value = serde_yaml::from_str(
        &std::fs::read_to_string(tools::root().join("alerts/kubepulse-mixin-duplicates.yaml"))
            .expect("mixin duplicates file"),
    )
    .expect("parses");
    let duplicates = alert_names(&source["groups"]);
    assert!(duplicates.len() >= 3, "{duplicates:?}");
    let objs = parse(&render::helm_template(
        &values("default"),
        "kubepulse",
        &["--set", "prometheusRule.enabled=true"],
    ));
    let default = alert_names(&find(&objs, "PrometheusRule", "kubepulse")["spec"]["groups"]);
    assert!(default.len() > 20, "{default:?}");
    assert!(
        default.is_disjoint(&duplicates),
        "duplicates rendered by default: {:?}",
        default.intersection(&duplicates).collect::<Vec<_>>()
    );
    let objs = parse(&render::helm_template(
        &values("default"),
        "kubepulse",
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "prometheusRule.mixinDuplicates=true",
            "--set",
            "prometheusRule.runbookUrlBase=https://wiki.example.com/runbooks.md",
        ],
    ));
    let groups = &find(&objs, "PrometheusRule", "kubepulse")["spec"]["groups"];
    let with = alert_names(groups);
    assert!(with.is_superset(&duplicates), "{with:?}");
    assert_eq!(with.len(), default.len() + duplicates.len());
    check_runbooks(groups, "https://wiki.example.com/runbooks.md");
}

/// The same promtool series, against the default selectors and against
/// changed ones (with the mixin duplicates on): each rendering fires the
/// alerts its selectors select.
#[test]
fn promtool_tests_pass_with_the_default_and_changed_selectors() {
    let default = rendered_rules(&[]);
    assert!(!default.contains("kubepulse-mixin-duplicates.alerts"));
    promtool_test(&default, "default.yaml");
    let changed = rendered_rules(&[
        "--set-string",
        "prometheusRule.jobSelector=job=~\"netmon-.*\"",
        "--set-string",
        "prometheusRule.namespaceSelector=namespace=\"monitoring\"",
        "--set",
        "prometheusRule.mixinDuplicates=true",
    ]);
    assert!(changed.contains("kubepulse-mixin-duplicates.alerts"));
    promtool_test(&changed, "changed.yaml");
}
