//! An emulated cluster on the network lab: the API test server reachable
//! from every node and pod over HTTPS as a real apiserver is (its socket
//! lives in node 0's host namespace at 10.200.0.1:6443, behind the
//! `kubernetes` Service 10.96.0.1:443 on every node), cluster DNS (dnsmasq
//! behind the `kube-dns` Service 10.96.0.10), a kube-proxy (`super::proxy`),
//! Node objects with heartbeat Leases, the DaemonSet and Deployment
//! controllers and scheduler (`super::workloads`), the lab kubelet
//! (`super::kubelet`) for the lab's nodes, the simulated kubelet of the
//! test kit for the controller's probe pods, and a kube-state-metrics
//! stand-in (`super::ksm`).
//!
//! ```text
//!  node0 (10.200.0.1): control plane (tainted NoSchedule), apiserver :6443,
//!                      DNS :53, kube-state-metrics :8081, Prometheus :9090
//!  node1, node2:       workers (node3 too, in a 4-machine lab; its Node
//!                      registered by [`Cluster::join`])
//!  every node:         a 1 Gbit/s link (tbf on its underlay egress)
//!  win0:               a Node object only (os=windows, tainted): nothing of
//!                      a Linux DaemonSet may be scheduled there
//! ```
//!
//! Why the apiserver's socket lives in the lab: pods must reach it at an
//! address of the lab (the in-cluster client dials KUBERNETES_SERVICE_HOST),
//! and a listener created in node 0's namespace serves from the test
//! process without touching the machine's own network (no veth into the
//! root namespace, no route out of the lab). Test code keeps using the
//! loopback HTTP side of the same server.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject};
use serde_json::Value;

use super::apply::{api_resource, create, namespaced};
use super::control_loop::main_loop;
use super::kubelet::Ctx;
use super::pod::Refusal;
use super::rendering::Rendering;
use super::seed::{register_node, seed};
use super::{events, ksm, workloads};
use crate::apiserver::ApiServer;
use crate::image::Image;
use crate::lab::netlab::{in_ns, poll, Flavour, LabSpec};
use crate::lab::{netlab::Lab, reach};

/// The apiserver's address (node 0's underlay address) and port.
pub const APISERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 200, 0, 1), 6443);
/// The `kubernetes` Service.
pub const KUBERNETES_SERVICE: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 1), 443);
/// The cluster DNS Service's address.
pub const CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The Service ClusterIP range (routed on every node for kube-proxy).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Namespaces whose pods the simulated kubelet serves (the controller's
/// probe pods run the pause image, which is the pod sandbox itself).
pub const PROBE_NAMESPACE: &str = "kubepulse-probes";
/// The image repository the manifests name.
pub const IMAGE_REPOSITORY: &str = "ghcr.io/kubepulse/kubepulse";
/// The Node without a lab namespace.
pub const DECOY_NODE: &str = "win0";
/// Each node's link (its underlay egress, tbf): 1 Gbit/s, the NICs of the
/// seed reports' clusters (about 940 Mbit/s measured everywhere). An
/// unshaped veth moves 10-17 Gbit/s on this machine's CPUs alone, so every
/// bandwidth burst saturated both vCPUs that all three nodes share, and
/// probes on nodes far from the burst ran late: no cluster of separate
/// machines behaves so.
pub const NODE_LINK_MBIT: u32 = 1000;

/// The shape of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSpec {
    /// Lab nodes (2 to 4): the machines on the network.
    pub nodes: usize,
    /// How many of them (the first ones) are registered as Nodes at the
    /// start; [`Cluster::join`] registers the others, as a node joins.
    pub joined: usize,
    /// Pod network flavour.
    pub flavour: Flavour,
}

/// A running emulated cluster. Dropping it stops every pod (containers
/// removed), the loops, the servers and the lab, also on panic.
pub struct Cluster {
    ctx: Arc<Ctx>,
    main: Option<JoinHandle<()>>,
    sim: Option<crate::kubelet::Kubelet>,
    ksm: Option<ksm::Ksm>,
    /// The API test server (its loopback side for the test's own calls).
    pub server: ApiServer,
    /// The runtime the server's tasks run on.
    pub rt: tokio::runtime::Runtime,
    /// CA, serving certificate and the service account token.
    pub pki: tempfile::TempDir,
    _dir: tempfile::TempDir,
    /// The lab.
    pub lab: Arc<Lab>,
    /// The image the pods run.
    pub image: Image,
    /// Node names of the lab (index = lab node).
    pub nodes: Vec<String>,
}

impl Cluster {
    /// Builds the lab, the servers and the loops; nothing of kubepulse is
    /// installed yet ([`Cluster::install`]).
    pub fn start(spec: ClusterSpec, image: Image) -> Cluster {
        crate::container::sweep_stale();
        let lab = Arc::new(Lab::new(LabSpec {
            nodes: spec.nodes,
            pods_per_node: 0,
            flavour: spec.flavour,
        }));
        let pki = tempfile::tempdir().expect("tempdir");
        reach::issue_certificates(
            pki.path(),
            "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
             DNS:kubernetes.default.svc.cluster.local,DNS:localhost,\
             IP:10.96.0.1,IP:10.200.0.1,IP:127.0.0.1",
        );
        // Nobody verifies service account tokens here; its shape is a JWT's.
        std::fs::write(
            pki.path().join("token"),
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a3ViZXB1bHNlIn0.bGFi",
        )
        .expect("write token");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt.block_on(ApiServer::start());
        let (ip, port) = APISERVER;
        let listener = in_ns(&lab.host(0), move || {
            std::net::TcpListener::bind((ip, port))
        })
        .unwrap_or_else(|e| panic!("bind the apiserver in node 0: {e}"));
        {
            let _g = rt.enter();
            server.serve_tls(
                listener,
                &pki.path().join("tls.crt"),
                &pki.path().join("tls.key"),
            );
        }
        reach::start_dnsmasq(&lab, &lab.host(0), APISERVER.0, pki.path());
        for i in 0..spec.nodes {
            lab.run(
                &lab.host(i),
                &["ip", "route", "replace", SERVICE_CIDR, "dev", "ul"],
            );
            // The node's own setting (systemd >= 243 sets it): unprivileged
            // ICMP echo for hostNetwork pods, which cannot set pod sysctls.
            lab.run(
                &lab.host(i),
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ping_group_range=0 2147483647",
                ],
            );
        }
        for i in 0..spec.nodes {
            lab.set_tbf(i, NODE_LINK_MBIT, "64kb");
        }
        assert!(
            (2..=spec.nodes).contains(&spec.joined),
            "2 to {} joined nodes",
            spec.nodes
        );
        let machines: Vec<String> = (0..spec.nodes).map(|i| lab.node_name(i)).collect();
        let nodes = machines[..spec.joined].to_vec();
        seed(&server, &lab, &nodes);
        let user = image_user(&image);
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Arc::new(Ctx {
            server: server.clone(),
            lab: lab.clone(),
            nodes: machines
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), (i, lab.host_ip(i))))
                .collect(),
            images: [(IMAGE_REPOSITORY.to_string(), image.reference.clone())].into(),
            image_user: user,
            kubernetes: KUBERNETES_SERVICE,
            cluster_dns: CLUSTER_DNS,
            node_dns: APISERVER.0,
            ca: pki.path().join("ca.crt"),
            token: pki.path().join("token"),
            dir: dir.path().to_path_buf(),
            stop: AtomicBool::new(false),
            refusals: Mutex::new(Vec::new()),
            stamps: AtomicU64::new(1),
            faults: Mutex::new(Vec::new()),
        });
        let sim = {
            let _g = rt.enter();
            crate::kubelet::Kubelet::start(
                &server,
                PROBE_NAMESPACE,
                crate::kubelet::Mode::Normal,
                crate::kubelet::Delays::default(),
            )
        };
        let ksm = ksm::Ksm::start(&lab, server.clone());
        let main = {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name("lab-kubelet".into())
                .spawn(move || main_loop(ctx))
                .expect("spawn the lab kubelet")
        };
        Cluster {
            ctx,
            main: Some(main),
            sim: Some(sim),
            ksm: Some(ksm),
            server,
            rt,
            pki,
            _dir: dir,
            lab,
            image,
            nodes,
        }
    }

    /// Applies every object of `rendering` through the API (POST, as
    /// `kubectl apply` creates them: admission and defaulting run).
    pub fn install(&self, rendering: &Rendering) {
        let _g = self.rt.enter();
        let client = self.server.actor_client("kubectl");
        self.rt.block_on(async {
            for obj in &rendering.objects {
                create(&client, obj).await;
            }
        });
    }

    /// Creates one object through the API (a Secret the operator makes).
    pub fn create(&self, obj: &Value) {
        let _g = self.rt.enter();
        let client = self.server.actor_client("kubectl");
        self.rt.block_on(create(&client, obj));
    }

    /// Deletes one object through the API (`kubectl delete`).
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) {
        let _g = self.rt.enter();
        let client = self.server.actor_client("kubectl");
        let ar = api_resource(api_version, kind);
        self.rt.block_on(async {
            let api: Api<DynamicObject> = if namespaced(kind) {
                Api::namespaced_with(client, namespace, &ar)
            } else {
                Api::all_with(client, &ar)
            };
            api.delete(name, &Default::default())
                .await
                .unwrap_or_else(|e| panic!("delete {kind} {namespace}/{name}: {e}"));
        });
    }

    /// Panics naming every field the lab kubelet refused and every fault
    /// of the lab's own machinery so far.
    pub fn check(&self) {
        let refusals = self.refusals();
        assert!(
            refusals.is_empty(),
            "the lab kubelet cannot honour these fields (they must be supported or the manifests changed):\n{}",
            refusals
                .iter()
                .map(|(p, r)| format!("  {p}: {r}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let faults = self
            .ctx
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        assert!(faults.is_empty(), "the lab failed: {faults:#?}");
    }

    /// Every refusal so far: (namespace/pod, refusal).
    pub fn refusals(&self) -> Vec<(String, Refusal)> {
        self.ctx
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The pods of `namespace` whose labels contain every `labels` pair.
    pub fn pods(&self, namespace: &str, labels: &[(&str, &str)]) -> Vec<Value> {
        self.server
            .objects::<Pod>(namespace)
            .into_iter()
            .filter(|p| {
                labels
                    .iter()
                    .all(|(k, v)| p["metadata"]["labels"][*k] == *v)
            })
            .collect()
    }

    /// Polls until `f` returns `Some` (checking refusals on every round),
    /// or panics after `timeout` with `what` and `dump()`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Cluster) -> Option<T>,
    ) -> T {
        let t0 = Instant::now();
        let got = poll(timeout, Duration::from_millis(500), || {
            self.check();
            f(self)
        });
        match got {
            Some(v) => {
                eprintln!("{what}: after {:.1?}", t0.elapsed());
                v
            }
            None => panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.dump()
            ),
        }
    }

    /// Every pod with its node, phase, readiness, restarts and events (for
    /// failure messages).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let mut pods = self.server.all_objects::<Pod>();
        pods.sort_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        });
        for p in pods {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or("");
            let name = p["metadata"]["name"].as_str().unwrap_or("");
            out.push_str(&format!(
                "pod {ns}/{name} node={} phase={} ready={} ip={} status={}\n",
                p["spec"]["nodeName"],
                p["status"]["phase"],
                workloads::is_ready(&p),
                p["status"]["podIP"],
                p["status"]["containerStatuses"]
            ));
            for e in events::about(&self.server, ns, name) {
                out.push_str(&format!("    {e}\n"));
            }
        }
        for ns in ["kubepulse", "default"] {
            for d in self
                .server
                .objects::<k8s_openapi::api::apps::v1::DaemonSet>(ns)
            {
                let name = d["metadata"]["name"].as_str().unwrap_or("");
                out.push_str(&format!("daemonset {ns}/{name} status={}\n", d["status"]));
                for e in events::about(&self.server, ns, name) {
                    out.push_str(&format!("    {e}\n"));
                }
            }
        }
        out
    }

    /// The log of container `container` of pod `namespace/name` (its
    /// current run).
    pub fn logs(&self, namespace: &str, name: &str) -> String {
        let Some(p) = self.server.get::<Pod>(namespace, name) else {
            return format!("no pod {namespace}/{name}");
        };
        let uid = p["metadata"]["uid"].as_str().unwrap_or("");
        let dir = self.ctx.dir.join(uid);
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "log"))
            {
                out.push_str(&format!("== {}\n", f.display()));
                out.push_str(&std::fs::read_to_string(f).unwrap_or_default());
            }
        }
        out
    }

    /// Kills (SIGKILL, as the OOM killer does) every running container of
    /// pod `name`; the lab kubelet sees them exit and restarts them after
    /// its back-off. Returns how many it killed.
    pub fn crash(&self, name: &str) -> usize {
        let out = crate::image::run(
            crate::image::podman().args([
                "ps",
                "--filter",
                &format!("name=^{}-{name}-", self.lab.prefix),
                "--format",
                "{{.Names}}",
            ]),
            "podman",
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|c| {
                crate::image::run(
                    crate::image::podman().args(["kill", "--signal", "KILL", c]),
                    "podman",
                )
                .status
                .success()
            })
            .count()
    }

    /// Registers the next lab machine that is not a Node yet (a worker,
    /// Ready, as a kubelet registers it) and returns its name: the
    /// DaemonSets place their pods there and the lab kubelet runs them.
    pub fn join(&mut self) -> String {
        let i = self.nodes.len();
        assert!(
            i < self.lab.spec.nodes,
            "every lab machine is a Node already"
        );
        let name = self.lab.node_name(i);
        register_node(&self.server, &self.lab, i, &name);
        self.nodes.push(name.clone());
        name
    }

    /// The lab node index of node `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == name)
    }

    /// The network namespace pod `p` (a stored pod) lives in: its node's
    /// for a hostNetwork pod; else the sandbox with its address.
    pub fn netns_of(&self, p: &Value) -> Option<String> {
        let node = self.node_index(p["spec"]["nodeName"].as_str()?)?;
        if p["spec"]["hostNetwork"] == true {
            return Some(self.lab.host(node));
        }
        let ip: Ipv4Addr = p["status"]["podIP"].as_str()?.parse().ok()?;
        let k = ip.octets()[3].checked_sub(100)?;
        Some(format!("{}h{node}s{k}", self.lab.prefix))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.ctx.stop.store(true, Ordering::Relaxed);
        if let Some(m) = self.main.take() {
            let _ = m.join();
        }
        self.ksm = None;
        let _g = self.rt.enter();
        self.sim = None;
    }
}

/// The image's numeric USER (`65532:65532` → 65532).
fn image_user(image: &Image) -> Option<u32> {
    let cfg = crate::image::inspect(&image.reference);
    cfg["Config"]["User"]
        .as_str()
        .and_then(|u| u.split(':').next())
        .and_then(|u| u.parse().ok())
}
