//! Integration tests that run kubepulse's code in this process (API test
//! server, simulated kubelet, in-process registries, loopback sockets) or
//! read the repository's files: no child processes, no root, no Prometheus.

mod controller_metrics_contract;
mod controller_nodes;
mod controller_plan;
mod controller_plan_lifecycle;
mod controller_pod_startup;
mod controller_rbac;
mod controller_role;
mod controller_sampler;
mod dashboards;
mod deploy_manifests;
mod k8s_apiserver;
mod k8s_discovery;
mod latency_engine;
mod metrics_contract;
mod responders;
mod scheduled_probes;
