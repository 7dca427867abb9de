//! Installing kubepulse as a user would: the Helm chart (`charts/kubepulse`)
//! and the static manifests generated from it (`deploy/`), rendered and
//! validated with the real tools run as child processes: `helm lint` and
//! `helm template` for every values file in `charts/kubepulse/ci/`,
//! `kubectl kustomize` for every kustomization, `kubernetes-validate
//! --strict` against the Kubernetes 1.29 and 1.34 schemas, and
//! `validate_crds.py` (beside this file) against prometheus-operator's CRD
//! schema. `.ci/k8s-tools` installs the tools; a missing one fails the test
//! naming it.

mod chart;
mod kustomize;
mod render;
mod rules;
mod schemas;
mod tools;
mod values_schema;
