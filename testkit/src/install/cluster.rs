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
//!  node1, node2:       workers
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

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{json, Value};

use super::kubelet::{self, Ctx};
use super::pod::Refusal;
use super::rendering::Rendering;
use super::{events, ksm, proxy, workloads};
use crate::apiserver::ApiServer;
use crate::image::Image;
use crate::lab::netlab::{in_ns, poll, Flavour, Lab, LabSpec};
use crate::lab::reach;

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

/// The shape of the cluster.
#[derive(Debug, Clone, Copy)]
pub struct ClusterSpec {
    /// Lab nodes (2 or 3).
    pub nodes: usize,
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
        let nodes: Vec<String> = (0..spec.nodes).map(|i| lab.node_name(i)).collect();
        seed(&server, &lab, &nodes);
        let user = image_user(&image);
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Arc::new(Ctx {
            server: server.clone(),
            lab: lab.clone(),
            nodes: nodes
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

/// The objects a fresh cluster has before anything is installed.
fn seed(server: &ApiServer, lab: &Lab, nodes: &[String]) {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        server.apply_json::<Namespace>(json!({"metadata": {"name": ns,
            "labels": {"kubernetes.io/metadata.name": ns}}}));
    }
    let (kip, kport) = KUBERNETES_SERVICE;
    let (aip, aport) = APISERVER;
    server.apply_json::<Service>(
        json!({"metadata": {"name": "kubernetes", "namespace": "default",
        "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": kip.to_string(), "clusterIPs": [kip.to_string()],
            "ports": [{"name": "https", "port": kport, "protocol": "TCP", "targetPort": aport}]}}),
    );
    server.apply_json::<EndpointSlice>(
        json!({"metadata": {"name": "kubernetes", "namespace": "default",
        "labels": {"kubernetes.io/service-name": "kubernetes",
            "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [aip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": aport, "protocol": "TCP"}]}),
    );
    server.apply_json::<Service>(json!({"metadata": {"name": "kube-dns", "namespace": "kube-system",
        "labels": {"k8s-app": "kube-dns"}},
        "spec": {"type": "ClusterIP", "clusterIP": CLUSTER_DNS.to_string(), "clusterIPs": [CLUSTER_DNS.to_string()],
            "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}));
    server.apply_json::<EndpointSlice>(json!({"metadata": {"name": "kube-dns", "namespace": "kube-system",
        "labels": {"kubernetes.io/service-name": "kube-dns"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [aip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}));
    for (i, n) in nodes.iter().enumerate() {
        let mut labels = json!({"kubernetes.io/hostname": n, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64"});
        let mut taints = json!([]);
        if i == 0 {
            labels["node-role.kubernetes.io/control-plane"] = json!("");
            taints =
                json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
        }
        server.apply_json::<Node>(node_json(n, labels, taints, lab.host_ip(i), Some(i)));
    }
    server.apply_json::<Node>(node_json(
        DECOY_NODE,
        json!({"kubernetes.io/hostname": DECOY_NODE, "kubernetes.io/os": "windows", "kubernetes.io/arch": "amd64"}),
        json!([{"key": "os", "value": "windows", "effect": "NoSchedule"}]),
        Ipv4Addr::new(10, 200, 0, 200),
        None,
    ));
    heartbeat(server);
}

fn node_json(
    name: &str,
    labels: Value,
    taints: Value,
    ip: Ipv4Addr,
    pod_cidr: Option<usize>,
) -> Value {
    let mut spec = json!({"taints": taints});
    if let Some(i) = pod_cidr {
        spec["podCIDR"] = json!(format!("10.244.{i}.0/24"));
        spec["podCIDRs"] = json!([format!("10.244.{i}.0/24")]);
    }
    json!({"metadata": {"name": name, "labels": labels}, "spec": spec,
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status", "lastHeartbeatTime": super::now(),
                "lastTransitionTime": super::now()}],
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "nodeInfo": {"kubeletVersion": "v1.33.0", "containerRuntimeVersion": "podman://4.3.1",
                "operatingSystem": labels["kubernetes.io/os"], "architecture": "amd64",
                "osImage": "kubepulse lab", "kernelVersion": "", "kubeProxyVersion": "v1.33.0",
                "machineID": "", "systemUUID": "", "bootID": ""}}})
}

/// Renews every node's Lease (as each kubelet does every 10 s) and the
/// control-plane components' leader Leases.
fn heartbeat(server: &ApiServer) {
    let now = micro_now();
    for n in server.all_objects::<Node>() {
        let name = n["metadata"]["name"].as_str().unwrap_or("").to_string();
        lease(server, "kube-node-lease", &name, &name, 40, &now);
    }
    for c in ["kube-scheduler", "kube-controller-manager"] {
        lease(server, "kube-system", c, &format!("node0_{c}"), 15, &now);
    }
}

fn lease(server: &ApiServer, ns: &str, name: &str, holder: &str, secs: u64, now: &str) {
    let spec = json!({"holderIdentity": holder, "leaseDurationSeconds": secs, "renewTime": now});
    if server.get::<Lease>(ns, name).is_some() {
        server.modify::<Lease>(ns, name, |l| l["spec"] = spec);
    } else {
        server.apply_json::<Lease>(
            json!({"metadata": {"name": name, "namespace": ns}, "spec": spec}),
        );
    }
}

/// Now as a `metav1.MicroTime`.
fn micro_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// The kind → (plural, namespaced) of every kind a rendering may hold;
/// anything else is refused by name.
fn resource(kind: &str) -> (&'static str, bool) {
    match kind {
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "ConfigMap" => ("configmaps", true),
        "Secret" => ("secrets", true),
        "Service" => ("services", true),
        "NetworkPolicy" => ("networkpolicies", true),
        "DaemonSet" => ("daemonsets", true),
        "Deployment" => ("deployments", true),
        "ResourceQuota" => ("resourcequotas", true),
        "LimitRange" => ("limitranges", true),
        "PodDisruptionBudget" => ("poddisruptionbudgets", true),
        "PriorityClass" => ("priorityclasses", false),
        "PriorityLevelConfiguration" => ("prioritylevelconfigurations", false),
        "FlowSchema" => ("flowschemas", false),
        "PodMonitor" => ("podmonitors", true),
        "ServiceMonitor" => ("servicemonitors", true),
        "PrometheusRule" => ("prometheusrules", true),
        other => panic!(
            "the install lab does not know kind {other}: add it to install::cluster::resource"
        ),
    }
}

fn namespaced(kind: &str) -> bool {
    resource(kind).1
}

fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        plural: resource(kind).0.to_string(),
    }
}

async fn create(client: &kube::Client, obj: &Value) {
    let kind = obj["kind"].as_str().unwrap_or("");
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let ar = api_resource(api_version, kind);
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let api: Api<DynamicObject> = if namespaced(kind) {
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let d: DynamicObject = serde_json::from_value(obj.clone())
        .unwrap_or_else(|e| panic!("{kind} is not an object: {e}"));
    api.create(&PostParams::default(), &d)
        .await
        .unwrap_or_else(|e| panic!("create {kind} {}: {e}", obj["metadata"]["name"]));
}

/// The loops of the control plane and the kubelet, every 250 ms until the
/// cluster stops; then every pod worker is joined (containers stopped).
fn main_loop(ctx: Arc<Ctx>) {
    let mut workers: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
    let mut done: std::collections::BTreeSet<String> = Default::default();
    let mut last_beat = Instant::now();
    let mut last_rules = String::new();
    while !ctx.stop.load(Ordering::Relaxed) {
        let server = &ctx.server;
        service_accounts(server);
        workloads::daemonsets(server);
        workloads::deployments(server);
        workloads::schedule(server, &[PROBE_NAMESPACE]);
        for p in server.all_objects::<Pod>() {
            let ns = p["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if ns == PROBE_NAMESPACE {
                continue;
            }
            let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
            let uid = p["metadata"]["uid"].as_str().unwrap_or("").to_string();
            let Some(node) = p["spec"]["nodeName"].as_str().map(String::from) else {
                continue;
            };
            if !ctx.nodes.contains_key(&node) {
                // No kubelet of ours there: a deleted pod is just removed.
                if !p["metadata"]["deletionTimestamp"].is_null() {
                    server.delete::<Pod>(&ns, &name);
                }
                continue;
            }
            if workers.contains_key(&uid) || done.contains(&uid) {
                continue;
            }
            let c = ctx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("pod-{name}"))
                .spawn(move || kubelet::run_pod(c, ns, name, uid.clone(), node))
                .expect("spawn a pod worker");
            workers.insert(
                p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                handle,
            );
        }
        let finished: Vec<String> = workers
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(u, _)| u.clone())
            .collect();
        for u in finished {
            if let Some(h) = workers.remove(&u) {
                if h.join().is_err() {
                    ctx.fault(format!("the worker of pod uid {u} panicked"));
                }
            }
            done.insert(u);
        }
        if last_beat.elapsed() >= Duration::from_secs(10) {
            last_beat = Instant::now();
            heartbeat(server);
        }
        let rules = proxy::ruleset(&proxy::rules(
            &server.all_objects::<Service>(),
            &server.all_objects::<Pod>(),
            &server.all_objects::<EndpointSlice>(),
        ));
        if rules != last_rules {
            let ok = (0..ctx.nodes.len()).all(|i| match apply_nft(&ctx.lab.host(i), &rules) {
                Ok(()) => true,
                Err(e) => {
                    ctx.fault(format!("kube-proxy rules on node {i}: {e}\n{rules}"));
                    false
                }
            });
            if ok {
                last_rules = rules;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for (_, h) in workers {
        let _ = h.join();
    }
}

/// The ServiceAccount controller: a `default` ServiceAccount in every
/// namespace.
fn service_accounts(server: &ApiServer) {
    for ns in server.all_objects::<Namespace>() {
        let name = ns["metadata"]["name"].as_str().unwrap_or("");
        if server.get::<ServiceAccount>(name, "default").is_none() {
            server.apply_json::<ServiceAccount>(
                json!({"metadata": {"name": "default", "namespace": name}}),
            );
        }
    }
}

fn apply_nft(ns: &str, rules: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(rules.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
