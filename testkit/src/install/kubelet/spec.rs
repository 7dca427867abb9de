//! A container's podman spec from its pod, resolved when it starts: the
//! environment (service links, downward API, ConfigMap and Secret keys,
//! `$(VAR)` expansion), command and args, mounts (declared volumes and the
//! service account's), and the volumes' contents.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use serde_json::Value;

use super::super::pod::{self, Source};
use super::super::volumes;
use super::Worker;
use crate::container::{ContainerSpec, Mount};

impl Worker {
    /// The full podman spec of container `i`: environment (resolved now),
    /// mounts, hostname.
    pub(super) fn container_spec(&self, i: usize, pod: &Value) -> Result<ContainerSpec, String> {
        let spec = &pod["spec"];
        let c = &spec["containers"][i];
        let mut cs = self.ctrs[i].spec.clone();
        cs.name = format!(
            "{}-{}-{}-{}",
            self.ctx.lab.prefix, self.name, self.ctrs[i].name, self.ctrs[i].restarts
        );
        cs.netns = Some(PathBuf::from(format!("/var/run/netns/{}", self.netns)));
        cs.hostname = Some(if spec["hostNetwork"] == true {
            self.at.node.clone()
        } else {
            self.name.clone()
        });
        // Environment: service links first, the container's own after
        // (and overriding), `$(VAR)` expanded against those before.
        let mut env: Vec<(String, String)> = Vec::new();
        let services: Vec<Value> = if spec["enableServiceLinks"] == false {
            Vec::new()
        } else {
            self.ctx.server.objects::<Service>(&self.namespace)
        };
        env.extend(pod::service_env(&services, self.ctx.kubernetes));
        for e in c["env"].as_array().into_iter().flatten() {
            let name = e["name"].as_str().unwrap_or("").to_string();
            let value = if let Some(v) = e["value"].as_str() {
                expand(v, &env)
            } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                pod::field_ref(pod, f, &self.at)?
            } else if let Some(r) = e["valueFrom"].get("configMapKeyRef") {
                self.key_ref::<ConfigMap>(r, false)?
            } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
                self.key_ref::<Secret>(r, true)?
            } else {
                String::new()
            };
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
        }
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array().map(|a| {
                a.iter()
                    .map(|s| expand(s.as_str().unwrap_or(""), &env))
                    .collect()
            })
        };
        cs.entrypoint = strings(&c["command"]);
        cs.args = strings(&c["args"]);
        cs.env = env;
        // Mounts: the declared ones, then the service account's.
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let v = m["name"].as_str().unwrap_or("");
            let api_data = !matches!(self.vols.get(v), Some(Source::EmptyDir));
            cs.mounts.push(Mount {
                host: self.pod_dir.join("volumes").join(v),
                container: m["mountPath"].as_str().unwrap_or("").to_string(),
                // ConfigMap and Secret volumes are always read-only.
                read_only: api_data || m["readOnly"] == true,
            });
        }
        if self.automount(pod) {
            cs.mounts.push(Mount {
                host: self.pod_dir.join("serviceaccount"),
                container: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                read_only: true,
            });
        }
        Ok(cs)
    }

    /// Whether the service account token is mounted (the pod's setting,
    /// else the ServiceAccount's, else yes).
    fn automount(&self, pod: &Value) -> bool {
        let spec = &pod["spec"];
        if let Some(b) = spec["automountServiceAccountToken"].as_bool() {
            return b;
        }
        let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
        self.ctx
            .server
            .get::<k8s_openapi::api::core::v1::ServiceAccount>(&self.namespace, sa)
            .and_then(|s| s["automountServiceAccountToken"].as_bool())
            .unwrap_or(true)
    }

    fn key_ref<K: k8s_openapi::Resource>(&self, r: &Value, secret: bool) -> Result<String, String> {
        let name = r["name"].as_str().unwrap_or("");
        let key = r["key"].as_str().unwrap_or("");
        let optional = r["optional"] == true;
        let obj = self.ctx.server.get::<K>(&self.namespace, name);
        let value = obj.and_then(|o| volumes::keys(&o, secret).remove(key));
        match value {
            Some(v) => Ok(String::from_utf8_lossy(&v).into_owned()),
            None if optional => Ok(String::new()),
            None => Err(format!("couldn't find key {key} in {} {name}", K::KIND)),
        }
    }

    /// Writes every volume (and the service account's projected files);
    /// `Err` names the first missing non-optional source.
    pub(super) fn write_volumes(&self) -> Result<(), String> {
        let stamp = self.ctx.stamp();
        for (name, src) in &self.vols {
            let dir = self.pod_dir.join("volumes").join(name);
            let files = match src {
                Source::EmptyDir => {
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    // Writable by the pod's user, as an emptyDir is.
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
                    continue;
                }
                Source::ConfigMap {
                    name: obj,
                    optional,
                    items,
                    mode,
                } => self.source::<ConfigMap>(obj, *optional, items, *mode, false)?,
                Source::Secret {
                    name: obj,
                    optional,
                    items,
                    mode,
                } => self.source::<Secret>(obj, *optional, items, *mode, true)?,
            };
            volumes::write_atomic(&dir, &files, stamp).map_err(|e| e.to_string())?;
        }
        let mut sa = volumes::Files::new();
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        sa.insert("token".into(), (read(&self.ctx.token)?, 0o644));
        sa.insert("ca.crt".into(), (read(&self.ctx.ca)?, 0o644));
        sa.insert(
            "namespace".into(),
            (self.namespace.as_bytes().to_vec(), 0o644),
        );
        volumes::write_atomic(&self.pod_dir.join("serviceaccount"), &sa, stamp)
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    fn source<K: k8s_openapi::Resource>(
        &self,
        name: &str,
        optional: bool,
        items: &[(String, String, Option<u32>)],
        mode: u32,
        secret: bool,
    ) -> Result<volumes::Files, String> {
        let kind = K::KIND.to_lowercase();
        match self.ctx.server.get::<K>(&self.namespace, name) {
            Some(o) => volumes::select(&volumes::keys(&o, secret), items, mode)
                .map_err(|k| format!("MountVolume.SetUp failed: {kind} {name} has no key {k}")),
            None if optional => Ok(volumes::Files::new()),
            None => Err(format!("MountVolume.SetUp failed for volume of {kind} \"{name}\": {kind} \"{name}\" not found")),
        }
    }
}

/// Expands `$(NAME)` from `env` as the kubelet does (`$$` escapes; an
/// unknown name stays as written).
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&format!("$({name})")),
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_as_the_kubelet_does() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &env), "x-$(B)-$(A)-$");
    }
}
