//! The image builds and runs: CI's image (`deploy/Dockerfile`'s `prebuilt`
//! stage over the static binary `deploy/build-binary.sh` made, the build
//! stage's own command) is a single static binary in an empty image, run
//! as user 65532; it answers `--help` under the pod agent DaemonSet's
//! security context; and the lab kubelet runs the rendered pod agent
//! DaemonSet with it (ConfigMap, service account, burst-key Secret): the
//! container process has exactly the user, groups, capabilities,
//! no-new-privileges, seccomp, read-only root and sysctl the DaemonSet
//! asks for, becomes Ready through its readiness probe and answers a probe
//! from another node.

use std::time::Duration;

use kubepulse_testkit::container::{Container, ContainerSpec};
use kubepulse_testkit::image;
use kubepulse_testkit::install::{burst_key_secret, pod, Cluster, ClusterSpec, Rendering};
use kubepulse_testkit::lab::{self, netlab::Flavour};
use serde_json::json;

use super::netlab_install::rendering;

/// Whether an ELF file asks for a dynamic loader (a PT_INTERP header).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "64-bit ELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]]) == 3
    })
}

#[test]
fn the_image_is_one_static_binary_run_as_65532() {
    if !lab::require_root() {
        return;
    }
    let img = image::image();
    let elf = std::fs::read(&img.binary).expect("read the binary");
    assert!(
        !has_interpreter(&elf),
        "{} is dynamically linked (PT_INTERP): a FROM scratch image cannot run it",
        img.binary.display()
    );
    let cfg = image::inspect(&img.reference);
    assert_eq!(cfg["Config"]["User"], "65532:65532", "{cfg:#}");
    assert_eq!(
        cfg["Config"]["Entrypoint"],
        json!(["/kubepulse"]),
        "{cfg:#}"
    );
    assert_eq!(cfg["Config"]["Cmd"], json!(["agent"]), "{cfg:#}");
    assert_eq!(
        cfg["RootFS"]["Layers"].as_array().map(Vec::len),
        Some(1),
        "one layer: the binary"
    );
    for l in [
        "org.opencontainers.image.title",
        "org.opencontainers.image.source",
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
        "org.opencontainers.image.licenses",
    ] {
        assert!(
            cfg["Config"]["Labels"][l].is_string(),
            "label {l} missing: {cfg:#}"
        );
    }
    let size = cfg["Size"].as_u64().unwrap_or(0);
    assert!(
        size < 40 << 20,
        "image of {size} bytes: the binary should be stripped"
    );
    eprintln!("image {} ({:.1} MB)", img.reference, size as f64 / 1e6);

    // --help under the pod agent DaemonSet's security context.
    let r = rendering();
    let ds = r
        .find("DaemonSet", "kubepulse-agent-pod")
        .expect("the pod agent DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let mut c = ContainerSpec {
        name: format!("kpl{}x-help", std::process::id()),
        image: img.reference.clone(),
        args: Some(vec!["--help".into()]),
        ..Default::default()
    };
    pod::security(spec, 0, Some(65532), &mut c).expect("the DaemonSet's security context");
    // No network namespace of ours: net.* sysctls need one.
    c.sysctls.clear();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("help.log");
    let mut help = Container::start(&c, &log);
    let status = lab::netlab::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        help.exited()
    })
    .expect("--help did not exit within 30 s");
    let out = help.log();
    assert!(status.success(), "--help failed ({status}): {out}");
    for word in ["agent", "controller", "report"] {
        assert!(out.contains(word), "--help does not mention {word}: {out}");
    }
}

#[test]
fn the_pod_agent_runs_from_the_image_as_its_daemonset_says() {
    if !lab::require_root() {
        return;
    }
    let r = rendering();
    let keep = |o: &serde_json::Value| {
        let (kind, name) = (
            o["kind"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or(""),
        );
        matches!(
            (kind, name),
            ("ServiceAccount", "kubepulse-agent")
                | ("Role", "kubepulse-agent")
                | ("RoleBinding", "kubepulse-agent")
                | ("ConfigMap", "kubepulse-agent")
                | ("DaemonSet", "kubepulse-agent-pod")
        )
    };
    let only_agent = Rendering {
        source: format!("{} (pod agent only)", r.source),
        objects: r.objects.iter().filter(|o| keep(o)).cloned().collect(),
    };
    assert_eq!(only_agent.objects.len(), 5, "{:#?}", only_agent.objects);
    let cluster = Cluster::start(
        ClusterSpec {
            nodes: 2,
            joined: 2,
            flavour: Flavour::Routed,
        },
        image::image(),
    );
    // `helm install --create-namespace`.
    cluster.create(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "kubepulse", "labels": {"kubernetes.io/metadata.name": "kubepulse"}}}));
    cluster.install(&only_agent);
    cluster.create(&burst_key_secret());
    let labels = [("kubepulse.io/network", "pod")];
    let pods = cluster.wait_for(
        "the pod agent Ready on both nodes",
        Duration::from_secs(90),
        |c| {
            let pods: Vec<_> = c
                .pods("kubepulse", &labels)
                .into_iter()
                .filter(|p| {
                    c.node_index(p["spec"]["nodeName"].as_str().unwrap_or(""))
                        .is_some()
                })
                .collect();
            (pods.len() == 2 && pods.iter().all(ready)).then_some(pods)
        },
    );
    let p = &pods[0];
    let ctr_name = p["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("podman://"))
        .expect("a running container")
        .to_string();
    let pid = String::from_utf8_lossy(
        &image::podman()
            .args(["inspect", "--format", "{{.State.Pid}}", &ctr_name])
            .output()
            .expect("podman inspect")
            .stdout,
    )
    .trim()
    .to_string();
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's /proc status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("Uid"), "65532 65532 65532 65532", "{status}");
    assert_eq!(field("Gid"), "65532 65532 65532 65532", "{status}");
    assert_eq!(
        field("CapEff"),
        "0000000000000000",
        "capabilities dropped: {status}"
    );
    assert_eq!(
        field("CapBnd"),
        "0000000000000000",
        "capabilities dropped: {status}"
    );
    assert_eq!(
        field("NoNewPrivs"),
        "1",
        "allowPrivilegeEscalation: false: {status}"
    );
    assert_eq!(
        field("Seccomp"),
        "2",
        "RuntimeDefault seccomp (filter mode): {status}"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    assert!(
        root.split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|x| x == "ro")),
        "readOnlyRootFilesystem: {root}"
    );
    let ns = cluster.netns_of(p).expect("the pod's namespace");
    let range = cluster
        .lab
        .run(&ns, &["sysctl", "-n", "net.ipv4.ping_group_range"]);
    assert_eq!(
        range.split_whitespace().collect::<Vec<_>>(),
        ["0", "2147483647"],
        "the pod's sysctl"
    );

    // A probe from the other node's host network: the HTTP responder.
    let ip: std::net::Ipv4Addr = p["status"]["podIP"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("podIP");
    let node = cluster
        .node_index(p["spec"]["nodeName"].as_str().unwrap_or(""))
        .expect("lab node");
    let other = cluster.lab.host(1 - node);
    let got = lab::netlab::in_ns(&other, move || {
        kubepulse_testkit::http::get(std::net::SocketAddr::from((ip, 9480)), "/probe")
    })
    .expect("the HTTP responder answers across nodes");
    assert_eq!(got.0, 200, "{got:?}");
    // The agent reached the API in-cluster: KUBERNETES_SERVICE_HOST, the
    // projected token and CA, TLS through the kubernetes Service.
    let ns_other = other.clone();
    cluster.wait_for(
        "the agent in sync with the API",
        Duration::from_secs(30),
        move |_| {
            let ns = ns_other.clone();
            let s =
                kubepulse_testkit::lab::prom::scrape(&ns, std::net::SocketAddr::from((ip, 9477)))
                    .ok()?;
            (s.try_sum("kubepulse_discovery_up", &[]) == Some(1.0)).then_some(())
        },
    );
    cluster.check();
}

fn ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
