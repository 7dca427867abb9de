//! Cluster DNS and apiserver stand-ins for the lab: a real DNS server
//! (Debian's `dnsmasq`), a TLS server answering `GET /livez` (`openssl
//! s_server -WWW`, with a CA and a serving certificate made by the openssl
//! CLI), and the `kubernetes` Service ClusterIP emulated with nftables DNAT
//! in each node's host namespace, as kube-proxy does.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::lab::netlab::Lab;

/// The emulated `kubernetes` Service ClusterIP and port.
pub const SERVICE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 1), 443);
/// Port of the apiserver stand-in.
pub const APISERVER_PORT: u16 = 6443;
/// The cluster domain the lab's resolv.conf names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The address dnsmasq answers for the default probe name.
pub const KUBERNETES_ANSWER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Files of the apiserver stand-in: CA, serving certificate and key, the
/// `/livez` body, and a resolv.conf for the agents.
pub struct ReachFiles {
    /// The directory holding them (also s_server's `-WWW` root).
    pub dir: tempfile::TempDir,
}

impl ReachFiles {
    /// A CA, a certificate for `kubernetes.default.svc` signed by it (an
    /// end-entity certificate, as rustls requires), a `livez` file and a
    /// pod-style resolv.conf naming `nameserver`.
    pub fn new(nameserver: Ipv4Addr) -> ReachFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        issue_certificates(d, "DNS:kubernetes.default.svc,DNS:kubernetes,IP:10.96.0.1");
        std::fs::write(d.join("livez"), "ok").expect("write livez");
        std::fs::write(
            d.join("resolv.conf"),
            format!(
                "search kubepulse.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n\
                 nameserver {nameserver}\noptions ndots:5\n"
            ),
        )
        .expect("write resolv.conf");
        ReachFiles { dir }
    }

    /// Path of one of the files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Writes a CA (`ca.crt`, `ca.key`) and a serving certificate it signed
/// (`tls.crt`, `tls.key`; an end-entity certificate, as rustls requires)
/// for the subject alternative names `sans` (openssl syntax:
/// `DNS:name,IP:addr`) into `dir`, with the openssl CLI.
pub fn issue_certificates(dir: &Path, sans: &str) {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=kubepulse-lab-ca",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
    ]));
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=kube-apiserver",
        "-keyout",
        &p("tls.key"),
        "-out",
        &p("tls.csr"),
    ]));
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n\
             subjectAltName={sans}\n"
        ),
    )
    .expect("write ext");
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &p("tls.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("tls.crt"),
    ]));
}

/// Starts dnsmasq in `ns`, listening on `addr:53`, answering the default
/// probe name (and nothing else from upstream). Returns its pid.
pub fn start_dnsmasq(lab: &Lab, ns: &str, addr: Ipv4Addr, dir: &Path) -> u32 {
    let name = format!("kubernetes.default.svc.{CLUSTER_DOMAIN}");
    let args = [
        "dnsmasq".to_string(),
        "--keep-in-foreground".into(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--user=root".into(),
        "--bind-interfaces".into(),
        format!("--listen-address={addr}"),
        "--port=53".into(),
        format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
        format!("--address=/{name}/{KUBERNETES_ANSWER}"),
        "--log-facility=-".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid = lab.spawn(ns, &args, Some(&dir.join("dnsmasq.log")));
    wait_listening(Some(ns), "-u", 53);
    pid
}

/// Waits until something listens on `port` (`proto`: `-u` or `-t`, as
/// `ss` takes it) in network namespace `ns`, or in the test's own when
/// `None`, so agents started next find the server up rather than booking
/// a start-up failure.
pub fn wait_listening(ns: Option<&str>, proto: &str, port: u16) {
    let filter = format!("sport = :{port}");
    let up = crate::lab::netlab::poll(Duration::from_secs(10), Duration::from_millis(20), || {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "ss"]);
                c
            }
            None => Command::new("ss"),
        };
        let out = cmd.args(["-Hln", proto, &filter]).output().ok()?;
        (!out.stdout.is_empty()).then_some(())
    });
    assert!(
        up.is_some(),
        "nothing listens on port {port} in {} after 10 s",
        ns.unwrap_or("the test's namespace")
    );
}

/// Starts the apiserver stand-in in `ns` on `addr:6443`: openssl s_server
/// serving the files of `files` (`GET /livez` answers 200 "ok"). Returns
/// its pid.
pub fn start_apiserver(lab: &Lab, ns: &str, addr: Ipv4Addr, files: &ReachFiles) -> u32 {
    let d = files.dir.path().display().to_string();
    let script = format!(
        "cd {d} && exec openssl s_server -quiet -WWW -accept {addr}:{APISERVER_PORT} \
         -cert {d}/tls.crt -key {d}/tls.key"
    );
    let pid = lab.spawn(
        ns,
        &["sh", "-c", &script],
        Some(&files.path("s_server.log")),
    );
    wait_listening(Some(ns), "-t", APISERVER_PORT);
    pid
}

/// The apiserver stand-in's address.
pub fn endpoint(addr: Ipv4Addr) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(addr, APISERVER_PORT))
}

/// nftables ruleset of node `ns`'s Service translation (its "kube-proxy"):
/// the ClusterIP DNATed to `backend`, for the node's own traffic (output)
/// and its pods' (prerouting).
pub fn service_rules(backend: Ipv4Addr) -> String {
    let (vip, port) = (SERVICE.ip(), SERVICE.port());
    format!(
        "table ip kplsvc {{
            chain out {{ type nat hook output priority -100; ip daddr {vip} tcp dport {port} dnat to {backend}:{APISERVER_PORT}; }}
            chain pre {{ type nat hook prerouting priority -100; ip daddr {vip} tcp dport {port} dnat to {backend}:{APISERVER_PORT}; }}
        }}"
    )
}

/// Installs the Service translation on node `i` (and a route for the
/// ClusterIP range, so the node's own connects get as far as the DNAT).
pub fn install_service(lab: &Lab, i: usize, backend: Ipv4Addr) {
    let ns = lab.host(i);
    lab.run(
        &ns,
        &["ip", "route", "replace", "10.96.0.0/24", "dev", "ul"],
    );
    lab.nft(&ns, &service_rules(backend));
}

/// Removes node `i`'s Service translation (kube-proxy's rules gone stale).
pub fn break_service(lab: &Lab, i: usize) {
    lab.run(&lab.host(i), &["nft", "delete", "table", "ip", "kplsvc"]);
}
