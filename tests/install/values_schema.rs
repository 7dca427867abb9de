//! `values.schema.json` refuses unknown and mistyped values, and the
//! message names the key.

use crate::tools;

/// `helm template` with `--set set` (or `--set-string`): must fail, and its
/// message must contain every `want`.
fn refused(flag: &str, set: &str, want: &[&str]) {
    let chart = tools::chart();
    let out = tools::output(
        &tools::helm(),
        &[
            "template",
            "kubepulse",
            chart.to_str().expect("UTF-8"),
            flag,
            set,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{set} was accepted");
    for w in want {
        assert!(err.contains(w), "{set}: expected {w:?} in:\n{err}");
    }
}

#[test]
fn a_misspelt_key_is_refused_by_name() {
    refused(
        "--set",
        "agents.pod.tolerationz[0].operator=Exists",
        &["/agents/pod", "tolerationz"],
    );
    refused("--set", "podMonitr.enabled=true", &["podMonitr"]);
    refused(
        "--set",
        "networkPolicy.nodeCIDRs.ipv5[0]=10.0.0.0/8",
        &["/networkPolicy/nodeCIDRs", "ipv5"],
    );
}

#[test]
fn a_mistyped_value_is_refused_by_name() {
    refused(
        "--set",
        "controller.replicas=two",
        &["/controller/replicas", "integer"],
    );
    refused(
        "--set",
        "podMonitor.enabled=yes please",
        &["/podMonitor/enabled", "boolean"],
    );
    refused("--set-string", "image.digest=latest", &["/image/digest"]);
    refused("--set", "service.type=LoadBalancer", &["/service/type"]);
    refused(
        "--set",
        "networkPolicy.nodeCIDRs.ipv6[0]=everywhere",
        &["/networkPolicy/nodeCIDRs/ipv6/0"],
    );
}

#[test]
fn the_defaults_and_every_ci_values_file_pass_the_schema() {
    // Rendering at all means the schema accepted them (helm validates
    // before rendering); chart.rs renders each file.
    let chart = tools::chart();
    tools::run(
        &tools::helm(),
        &["template", "kubepulse", chart.to_str().expect("UTF-8")],
    );
}
