//! Containers run with podman as a container runtime would run a pod's
//! container: in a network namespace the caller made, with the user,
//! read-only root, capabilities, no-new-privileges, seccomp and sysctls of
//! its security context, its environment, mounts, command and args.
//! [`ContainerSpec::podman_args`] is the pure translation (unit-tested);
//! [`Container`] runs one, and removes it when dropped, also on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use crate::image::{podman, run};

/// Open-file and process limits of every container. podman's defaults (and
/// `--ulimit host`) ask runc for limits these VMs refuse ("error setting
/// rlimit type 6/7: operation not permitted"; measured: nofile 65536 and
/// nproc 65536 refused, 20000 and 32768 accepted); a kubelet's runtime sets
/// its own defaults too.
pub const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=16384:16384",
    "--ulimit",
    "nproc=4096:4096",
];

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host path.
    pub host: PathBuf,
    /// Where it appears in the container.
    pub container: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything podman needs to run one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// podman's name for it (unique on the machine).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Network namespace to join (`/var/run/netns/NAME`); `None`: a
    /// namespace of its own with loopback only.
    pub netns: Option<PathBuf>,
    /// Numeric user (`runAsUser`); `None`: the image's `USER`.
    pub user: Option<u32>,
    /// Numeric primary group (`runAsGroup`).
    pub group: Option<u32>,
    /// Supplementary groups (`supplementalGroups`, `fsGroup`).
    pub groups: Vec<u32>,
    /// Root filesystem read-only, without podman's writable tmpfs mounts.
    pub read_only: bool,
    /// Capabilities dropped (`ALL` or names without `CAP_`).
    pub cap_drop: Vec<String>,
    /// Capabilities added.
    pub cap_add: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// `privileged: true`.
    pub privileged: bool,
    /// `seccompProfile: Unconfined` (else the runtime's default profile).
    pub seccomp_unconfined: bool,
    /// Namespaced sysctls.
    pub sysctls: Vec<(String, String)>,
    /// Environment, in order.
    pub env: Vec<(String, String)>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Replaces the image's entrypoint (a container's `command`).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's CMD (a container's `args`).
    pub args: Option<Vec<String>>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicores.
    pub cpu_millis: Option<u64>,
    /// CPU shares (from the CPU request, as the kubelet computes them).
    pub cpu_shares: Option<u64>,
    /// The container's hostname.
    pub hostname: Option<String>,
    /// resolv.conf nameservers (with a network namespace only).
    pub dns_servers: Vec<String>,
    /// resolv.conf search domains.
    pub dns_search: Vec<String>,
    /// resolv.conf options.
    pub dns_options: Vec<String>,
}

impl ContainerSpec {
    /// The `podman run` arguments (after `run`) for this container.
    pub fn podman_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["--rm".into(), "--name".into(), self.name.clone()];
        a.extend(ULIMITS.iter().map(|s| s.to_string()));
        a.push("--network".into());
        a.push(match &self.netns {
            Some(p) => format!("ns:{}", p.display()),
            None => "none".into(),
        });
        match (self.user, self.group) {
            (Some(u), Some(g)) => a.extend(["--user".into(), format!("{u}:{g}")]),
            (Some(u), None) => a.extend(["--user".into(), u.to_string()]),
            // A group alone keeps the image's user: podman needs a user
            // with it, and the image's is numeric.
            (None, Some(g)) => a.extend(["--group-add".into(), g.to_string()]),
            (None, None) => {}
        }
        for g in &self.groups {
            a.extend(["--group-add".into(), g.to_string()]);
        }
        if self.read_only {
            a.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
        }
        for c in &self.cap_drop {
            a.push(format!("--cap-drop={c}"));
        }
        for c in &self.cap_add {
            a.push(format!("--cap-add={c}"));
        }
        if self.no_new_privileges {
            a.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        if self.privileged {
            a.push("--privileged".into());
        }
        if self.seccomp_unconfined {
            a.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
        }
        for (k, v) in &self.sysctls {
            a.extend(["--sysctl".into(), format!("{k}={v}")]);
        }
        for (k, v) in &self.env {
            a.extend(["--env".into(), format!("{k}={v}")]);
        }
        for m in &self.mounts {
            let ro = if m.read_only { "ro" } else { "rw" };
            a.extend([
                "--volume".into(),
                format!("{}:{}:{ro}", m.host.display(), m.container),
            ]);
        }
        if let Some(b) = self.memory_bytes {
            a.push(format!("--memory={b}b"));
        }
        if let Some(m) = self.cpu_millis {
            a.push(format!("--cpus={}.{:03}", m / 1000, m % 1000));
        }
        if let Some(s) = self.cpu_shares {
            a.push(format!("--cpu-shares={s}"));
        }
        if let Some(h) = &self.hostname {
            a.extend(["--hostname".into(), h.clone()]);
        }
        a.extend(self.dns_servers.iter().map(|d| format!("--dns={d}")));
        a.extend(self.dns_search.iter().map(|d| format!("--dns-search={d}")));
        a.extend(self.dns_options.iter().map(|d| format!("--dns-option={d}")));
        if let Some(e) = &self.entrypoint {
            a.push(format!(
                "--entrypoint={}",
                serde_json::to_string(e).expect("entrypoint JSON")
            ));
        }
        a.push(self.image.clone());
        // Without args, podman (as docker) drops the image's CMD when the
        // entrypoint is replaced, as Kubernetes does for `command`.
        if let Some(args) = &self.args {
            a.extend(args.iter().cloned());
        }
        a
    }
}

/// A running container; stopped and removed when dropped.
pub struct Container {
    /// podman's name for it.
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Container {
    /// Starts `spec` (podman attached, its output into `log`).
    pub fn start(spec: &ContainerSpec, log: &Path) -> Container {
        // A leftover of the same name (a killed earlier run) would make
        // the start fail.
        let _ = run(podman().args(["rm", "-f", "-t", "0", &spec.name]), "podman");
        let f = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let f2 = f.try_clone().expect("dup log");
        let child = podman()
            .arg("run")
            .args(spec.podman_args())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run podman ({e}): the install tests need podman"));
        Container {
            name: spec.name.clone(),
            child,
            log: log.to_path_buf(),
        }
    }

    /// The exit status, once the container has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops it as a kubelet does: SIGTERM, then SIGKILL after `grace`;
    /// returns its exit status (`None` if it had to be torn down).
    /// Repeated until the container is gone: a stop that reaches a
    /// container still being created does nothing.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let secs = grace.as_secs().to_string();
        let deadline = std::time::Instant::now() + grace + Duration::from_secs(15);
        loop {
            let _ = run(podman().args(["stop", "-t", &secs, &self.name]), "podman");
            for _ in 0..40 {
                if let Ok(Some(status)) = self.child.try_wait() {
                    let _ = run(podman().args(["rm", "-f", "-t", "0", &self.name]), "podman");
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if std::time::Instant::now() >= deadline {
                let _ = run(podman().args(["rm", "-f", "-t", "0", &self.name]), "podman");
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
        }
    }

    /// What it printed so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The main process's pid on the host, while it runs.
    pub fn pid(&self) -> Option<u32> {
        let out = run(
            podman().args(["inspect", "--format", "{{.State.Pid}}", &self.name]),
            "podman",
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = run(podman().args(["rm", "-f", "-t", "0", &self.name]), "podman");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes containers named `kpl<pid>x...` whose test process is gone (a
/// test killed by a signal cannot run its Drop guards), as the lab sweeps
/// its namespaces.
pub fn sweep_stale() {
    let out = run(
        podman().args([
            "ps",
            "-a",
            "--filter",
            "name=^kpl",
            "--format",
            "{{.Names}}",
        ]),
        "podman",
    );
    for name in String::from_utf8_lossy(&out.stdout).lines() {
        let pid = name
            .strip_prefix("kpl")
            .and_then(|r| r.split_once('x'))
            .and_then(|(p, _)| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = run(podman().args(["rm", "-f", "-t", "0", name]), "podman");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restricted_container_becomes_podman_flags() {
        let spec = ContainerSpec {
            name: "kpl1x0-agent".into(),
            image: "localhost/kubepulse-ci:abc".into(),
            netns: Some("/var/run/netns/kpl1x0h0s1".into()),
            user: Some(65532),
            group: Some(65532),
            read_only: true,
            cap_drop: vec!["ALL".into()],
            no_new_privileges: true,
            sysctls: vec![("net.ipv4.ping_group_range".into(), "0 2147483647".into())],
            env: vec![("A".into(), "b=c".into())],
            mounts: vec![Mount {
                host: "/tmp/v".into(),
                container: "/etc/kubepulse".into(),
                read_only: true,
            }],
            args: Some(vec!["agent".into()]),
            memory_bytes: Some(256 << 20),
            cpu_millis: Some(1500),
            ..Default::default()
        };
        let a = spec.podman_args().join(" ");
        for want in [
            "--network ns:/var/run/netns/kpl1x0h0s1",
            "--user 65532:65532",
            "--read-only --read-only-tmpfs=false",
            "--cap-drop=ALL",
            "--security-opt no-new-privileges",
            "--sysctl net.ipv4.ping_group_range=0 2147483647",
            "--env A=b=c",
            "--volume /tmp/v:/etc/kubepulse:ro",
            "--memory=268435456b",
            "--cpus=1.500",
            "localhost/kubepulse-ci:abc agent",
        ] {
            assert!(a.contains(want), "{want} missing from {a}");
        }
        assert!(a.ends_with("localhost/kubepulse-ci:abc agent"), "{a}");
        assert!(!a.contains("--privileged") && !a.contains("seccomp"), "{a}");
    }

    #[test]
    fn a_command_replaces_the_entrypoint_as_json() {
        let spec = ContainerSpec {
            name: "n".into(),
            image: "i".into(),
            entrypoint: Some(vec!["/kubepulse".into(), "controller".into()]),
            ..Default::default()
        };
        let a = spec.podman_args();
        assert!(a.contains(&r#"--entrypoint=["/kubepulse","controller"]"#.to_string()));
        assert_eq!(a.last().map(String::as_str), Some("i"));
        assert!(a.contains(&"none".to_string()), "no netns: loopback only");
    }
}
