//! The install lab: what kubepulse ships to a cluster (a [`Rendering`] of
//! the chart or the kustomizations), applied to an emulated cluster on the
//! network lab ([`cluster::Cluster`]) and run as shipped: the image CI
//! builds from `deploy/Dockerfile`, run by the lab kubelet with every pod
//! field either honoured or refused by name ([`fields::HONOURED`]).
//!
//! # What the lab kubelet honours
//!
//! - **Placement** (its DaemonSet controller and scheduler): `nodeSelector`,
//!   required node affinity (`matchExpressions`, `matchFields`), preferred
//!   node affinity and preferred/required pod anti-affinity on
//!   `kubernetes.io/hostname`, taints (`NoSchedule`, `NoExecute`) against
//!   `tolerations`, the DaemonSet controller's own tolerations and node
//!   pin, an unschedulable node. Nodes: node0 (control plane, tainted),
//!   node1, node2, and `win0`, a Node object without a lab namespace
//!   (os=windows, tainted): a pod bound there never runs. A fourth machine
//!   (node3) can be on the network from the start and join later
//!   ([`cluster::Cluster::join`] registers its Node).
//! - **Admission**: a missing ServiceAccount or PriorityClass refuses the
//!   pod (`FailedCreate` event on its owner); `priorityClassName` sets
//!   `priority`; a `default` ServiceAccount per namespace.
//! - **The container**: the image (repository `ghcr.io/kubepulse/kubepulse`,
//!   any tag, means the image CI builds), `command`, `args` (with `$(VAR)`
//!   expansion), `env` with `value`, downward-API `fieldRef`s
//!   (`metadata.name|namespace|uid|labels[..]|annotations[..]`,
//!   `spec.nodeName`, `spec.serviceAccountName`, `status.podIP`,
//!   `status.hostIP`), `configMapKeyRef`/`secretKeyRef` (a missing
//!   non-optional one: `CreateContainerConfigError`), service links
//!   (`enableServiceLinks`, default on) and `KUBERNETES_SERVICE_*`.
//! - **Security** (podman flags): `runAsUser`, `runAsGroup`, `fsGroup` and
//!   `supplementalGroups` (as groups), `runAsNonRoot` (refused as a kubelet
//!   does if the user would be root), `readOnlyRootFilesystem` (without
//!   podman's writable tmpfs), `allowPrivilegeEscalation: false`
//!   (no-new-privileges), `privileged`, `capabilities` drop/add,
//!   `seccompProfile` `RuntimeDefault` (podman's default profile) or
//!   `Unconfined` (also when unset, as the kubelet's default), pod
//!   `sysctls` (a `net.*` sysctl on a hostNetwork pod is refused, as the
//!   kubelet does).
//! - **Resources**: memory and CPU limits (podman limits), the CPU request
//!   as CPU shares (the kubelet's formula). Requests do not constrain
//!   placement (no node capacity accounting).
//! - **Network**: `hostNetwork` (the node's namespace) or a sandbox behind
//!   the node's bridge with the next address of its pod CIDR (deleted with
//!   the pod); `dnsPolicy` `ClusterFirst`, `ClusterFirstWithHostNet`,
//!   `Default` (resolv.conf: cluster DNS 10.96.0.10 with the namespace's
//!   search path, or the node's resolver); the hostname; `ports` (named
//!   ports for probes and Services; `hostPort` only on hostNetwork).
//! - **Volumes**: `configMap` and `secret` (with `items`, `defaultMode`,
//!   `mode`, `optional`; written with the kubelet's atomic `..data`
//!   layout, re-synced every 2 s; a missing non-optional source keeps the
//!   pod in `ContainerCreating` with `FailedMount` events until it
//!   appears), `emptyDir` (disk), the projected service account token, CA
//!   and namespace at `/var/run/secrets/kubernetes.io/serviceaccount`
//!   (`automountServiceAccountToken` of the pod or the ServiceAccount).
//! - **Probes**: `readinessProbe`, `livenessProbe`, `startupProbe` with
//!   `httpGet` (HTTP, named or numbered port, path) or `tcpSocket`, from the
//!   node's namespace to the pod's address, with `initialDelaySeconds`,
//!   `periodSeconds`, `timeoutSeconds`, `successThreshold`,
//!   `failureThreshold`; a liveness or startup failure restarts the
//!   container.
//! - **Lifecycle**: `restartPolicy: Always` with the kubelet's back-off
//!   (10 s doubling to 5 min, `CrashLoopBackOff`), graceful deletion within
//!   `terminationGracePeriodSeconds` (or the DELETE's grace), status
//!   written back: phase, `podIP(s)`, `hostIP(s)`, `startTime`, conditions
//!   (`PodScheduled`, `PodReadyToStartContainers`, `Initialized`,
//!   `ContainersReady`, `Ready`), container statuses (state, last state,
//!   ready, started, restart count); events (`Started`, `BackOff`,
//!   `Unhealthy`, `Killing`, `FailedMount`). A crash is a SIGKILL of the
//!   pod's containers ([`cluster::Cluster::crash`], as the OOM killer).
//! - **Around the pods**: Node objects and their heartbeat Leases
//!   (renewed every 10 s), control-plane leader Leases, kube-proxy
//!   ([`proxy`]: ClusterIP and NodePort DNAT to Ready pods or EndpointSlice
//!   addresses), cluster DNS (dnsmasq), DaemonSet/Deployment/ReplicaSet
//!   status, a kube-state-metrics stand-in ([`ksm`]).
//!
//! # What it refuses (the test fails naming the field)
//!
//! Every pod field outside [`fields::HONOURED`] (`initContainers` with
//! entries, `lifecycle`, `hostPID`, `hostIPC`, `dnsConfig`, `subPath`,
//! `envFrom`, `volumeDevices`, `topologySpreadConstraints`, `overhead`,
//! ...), and these values: `restartPolicy` other than `Always`, `dnsPolicy:
//! None`, a `Localhost` seccomp profile, `exec`/`grpc` probes, HTTPS or
//! header-carrying `httpGet` probes, a `hostPort` on the pod network,
//! `workingDir`, volumes other than configMap/secret/emptyDir (hostPath,
//! projected, downwardAPI, ...), a memory-backed emptyDir, an image the
//! lab does not build, a `net.*` sysctl on a hostNetwork pod.
//!
//! # Exceptions and limits (listed, not silent)
//!
//! - The controller's probe pods (`kubepulse-probes`, the pause image) are
//!   run by the test kit's simulated kubelet ([`crate::kubelet`]): the
//!   pause container is the pod sandbox itself, with no process to run.
//! - NetworkPolicies, RBAC, ResourceQuota, LimitRange, PodDisruptionBudget
//!   and APF objects are stored, not enforced; template changes of a
//!   DaemonSet or Deployment are not rolled out; `tolerationSeconds` never
//!   applies (nodes never become NotReady).
//! - Bookworm's Prometheus (2.42.0+ds) is built without Kubernetes
//!   discovery, so the install lab runs trixie's (2.53.3+ds1, a static
//!   binary; `.ci/prometheus-k8s-sd` installs it): [`prometheus`].
//!
//! # What the API test server gained for this
//!
//! HTTPS on a listener made in node 0's namespace (`serve_tls`; pods and
//! Prometheus reach it at 10.200.0.1:6443 or through the `kubernetes`
//! Service 10.96.0.1:443, verifying its certificate against the service
//! account CA), `/livez` `/readyz` `/healthz` (the agents' apiserver
//! probe), `/version`, `/api`, `/apis`, ClusterIP and NodePort allocation
//! with port defaults on Service creation, the User-Agent and Accept of
//! every request (to see what each client asks), and in-process
//! `modify`/`all_objects` for the lab's controllers. Prometheus's discovery
//! (client-go's reflector: a list with `limit=500`, then a watch from the
//! list's resourceVersion with `allowWatchBookmarks` and `timeoutSeconds`,
//! of the pods of the namespace the job names, asking for protobuf and
//! accepting JSON) needed nothing else.

mod apply;
pub mod cluster;
mod control_loop;
pub mod events;
pub mod fields;
pub mod ksm;
mod kubelet;
pub mod pod;
pub mod prometheus;
pub mod proxy;
pub mod rendering;
pub mod scheduling;
mod seed;
pub mod volumes;
mod workloads;

pub use cluster::{Cluster, ClusterSpec};
pub use rendering::Rendering;

use serde_json::json;

use crate::apiserver::ApiServer;
use k8s_openapi::api::core::v1::Pod;

/// Now as a `metav1.Time` (1 s resolution).
pub(crate) fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Deletes a pod as the API does for a pod bound to a node: marked
/// terminating with its grace period (its kubelet stops it and removes the
/// object); an unbound pod goes at once.
pub fn delete_pod(server: &ApiServer, namespace: &str, name: &str) {
    let Some(p) = server.get::<Pod>(namespace, name) else {
        return;
    };
    if p["spec"]["nodeName"].is_null() {
        server.delete::<Pod>(namespace, name);
        return;
    }
    let grace = p["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    server.modify::<Pod>(namespace, name, |p| {
        if p["metadata"]["deletionTimestamp"].is_null() {
            p["metadata"]["deletionTimestamp"] = json!(now());
            p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        }
    });
}

/// The burst-key Secret the operator creates (`kubepulse-burst-key` in
/// `kubepulse`, key `burst.key`: one random 32-byte key in hex), until the
/// chart creates it.
pub fn burst_key_secret() -> serde_json::Value {
    use base64::Engine;
    let key: [u8; 32] = rand::random();
    let text = format!("{}\n", hex::encode(key));
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "kubepulse-burst-key", "namespace": "kubepulse"},
        "type": "Opaque",
        "data": {"burst.key": base64::engine::general_purpose::STANDARD.encode(text)}})
}
