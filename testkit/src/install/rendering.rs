//! A rendering: the objects a user would apply, from `helm template` of
//! the chart with a values file or from `kubectl kustomize` of `deploy/`
//! directories, parsed into JSON. The install tests take a rendering as
//! their input, so the chart and the kustomizations run the same scenarios.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The objects of one rendering, in the order the tool printed them.
#[derive(Debug, Clone)]
pub struct Rendering {
    /// How it was made (for messages), e.g. `kubectl kustomize deploy`.
    pub source: String,
    /// Every object (empty documents dropped).
    pub objects: Vec<Value>,
}

/// Why a rendering could not be made (a chart refusing its values is one).
#[derive(Debug, Clone)]
pub struct RenderError {
    /// The command that failed.
    pub command: String,
    /// Its standard error.
    pub stderr: String,
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.command, self.stderr)
    }
}

fn tool(cmd: &mut Command, name: &str) -> Result<String, RenderError> {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {name} ({e}): the install tests need {name} in PATH (.ci/run installs it)"
        )
    });
    let command = format!("{cmd:?}");
    if !out.status.success() {
        return Err(RenderError {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    String::from_utf8(out.stdout).map_err(|e| RenderError {
        command,
        stderr: format!("output is not UTF-8: {e}"),
    })
}

impl Rendering {
    /// `kubectl kustomize` of each directory (relative to the repository
    /// root), in order, as `kubectl apply -k` of each would apply them.
    pub fn kustomize(dirs: &[&str]) -> Rendering {
        let root = crate::repo_root();
        let mut objects = Vec::new();
        for d in dirs {
            let text = tool(
                Command::new("kubectl").arg("kustomize").arg(root.join(d)),
                "kubectl",
            )
            .unwrap_or_else(|e| panic!("{e}"));
            objects.extend(parse(&text));
        }
        Rendering {
            source: format!("kubectl kustomize {}", dirs.join(" + ")),
            objects,
        }
    }

    /// `helm template RELEASE CHART --namespace NS [-f VALUES]` (the chart
    /// relative to the repository root), as `helm install` would apply it;
    /// the chart's schema refusing the values is an `Err`.
    pub fn helm(
        chart: &str,
        release: &str,
        namespace: &str,
        values: Option<&Path>,
    ) -> Result<Rendering, RenderError> {
        let chart: PathBuf = crate::repo_root().join(chart);
        let mut cmd = Command::new("helm");
        cmd.args(["template", release])
            .arg(&chart)
            .args(["--namespace", namespace]);
        if let Some(v) = values {
            cmd.arg("-f").arg(v);
        }
        let text = tool(&mut cmd, "helm")?;
        Ok(Rendering {
            source: format!("helm template {release} {}", chart.display()),
            objects: parse(&text),
        })
    }

    /// The object of `kind` named `name`.
    pub fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// Every object of `kind`.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    /// This rendering with `edit` applied to every object (an overlay's
    /// patch), named `what` in its source.
    pub fn with(&self, what: &str, edit: impl Fn(&mut Value)) -> Rendering {
        let mut objects = self.objects.clone();
        objects.iter_mut().for_each(edit);
        Rendering {
            source: format!("{} + {what}", self.source),
            objects,
        }
    }

    /// This rendering without the objects `drop` rejects (e.g. a scenario
    /// without the controller).
    pub fn without(&self, drop: impl Fn(&Value) -> bool) -> Rendering {
        Rendering {
            source: format!("{} (filtered)", self.source),
            objects: self.objects.iter().filter(|o| !drop(o)).cloned().collect(),
        }
    }
}

/// Parses a multi-document YAML stream into JSON objects (empty documents
/// dropped). A document that is not an object with a kind panics, naming it.
pub fn parse(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|doc| {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("bad YAML document: {e}"));
            if v.is_null() {
                return None;
            }
            assert!(v["kind"].is_string(), "a document without a kind: {v}");
            Some(v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_become_objects_and_empty_ones_vanish() {
        let objs = parse(
            "---\n# only a comment\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: b}\ndata: {k: djE=}\n",
        );
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[1]["data"]["k"], "djE=");
        let r = Rendering {
            source: "t".into(),
            objects: objs,
        };
        assert!(r.find("Secret", "b").is_some());
        assert_eq!(r.without(|o| o["kind"] == "Secret").objects.len(), 1);
    }
}
