//! An emulated cluster made of network namespaces.
//!
//! ```text
//!  node i ("host" netns, hostNetwork agents live here)
//!    ul   10.200.0.(i+1)/24  underlay: a veth pair (2 nodes) or a port of
//!                            a bridge in a switch netns (3 or 4 nodes)
//!    cbr0 10.244.i.1/24      bridge of this node's pods
//!    vx0  10.245.0.(i+1)/24  vxlan id 42 (overlay flavour only), MTU 1450
//!    dl                      TUN end of the delay line (when added);
//!                            10.201.0.(i+1)/24 when under the overlay
//!  pod j on node i ("pod" netns): eth0 10.244.i.(10+j)/24, default via .1
//!  sandbox k on node i (made later, [`Lab::add_sandbox`]): eth0
//!                            10.244.i.(100+k)/24, default via .1
//! ```
//!
//! Routed flavour: node i reaches pod CIDR k via 10.200.0.(k+1) (host-gw).
//! Overlay flavour: via 10.245.0.(k+1) on vx0, pod MTU 1450.
//! Every address lives inside namespaces this lab creates; nothing is ever
//! routed out of them. Dropping the [`Lab`] stops the delay line, kills every
//! process it spawned and deletes every namespace, also on panic.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::delayline::DelayLine;
use super::sys;

/// How pod traffic crosses nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// host-gw style: plain routes to each node's pod CIDR via that node.
    Routed,
    /// vxlan between the nodes; pod MTU 50 bytes smaller.
    Overlay,
}

/// The shape of a lab.
#[derive(Debug, Clone, Copy)]
pub struct LabSpec {
    /// Emulated nodes (2 to 4).
    pub nodes: usize,
    /// Pod namespaces per node made with the lab (0 to 8); more come and go
    /// as sandboxes ([`Lab::add_sandbox`]).
    pub pods_per_node: usize,
    /// Pod network flavour.
    pub flavour: Flavour,
}

impl LabSpec {
    /// Two nodes with two pods each.
    pub fn two_nodes(flavour: Flavour) -> Self {
        Self {
            nodes: 2,
            pods_per_node: 2,
            flavour,
        }
    }
}

/// Underlay MTU (veth default).
pub const UNDERLAY_MTU: u32 = 1500;
/// vxlan header overhead: outer IP 20 + UDP 8 + vxlan 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Serialises timing-sensitive tests inside one test process (`cargo
/// test` runs a binary's tests as threads): two labs measuring at once on
/// 2 cores would disturb each other's numbers. Under cargo-nextest every
/// test is a process of its own, and `.config/nextest.toml` runs the
/// timing tests alone.
pub static TIMING: Mutex<()> = Mutex::new(());

/// Takes the timing lock even if a previous holder panicked.
pub fn timing_lock() -> std::sync::MutexGuard<'static, ()> {
    TIMING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running lab.
pub struct Lab {
    /// Unique prefix of every namespace name of this lab.
    pub prefix: String,
    /// Its shape.
    pub spec: LabSpec,
    /// Every namespace of the lab, in creation order (deleted in reverse).
    namespaces: Mutex<Vec<String>>,
    /// Sandboxes made so far per node (their numbers are never reused).
    sandboxes: Mutex<Vec<usize>>,
    procs: Mutex<Vec<Child>>,
    delay_line: Option<DelayLine>,
    /// Held for the lab's lifetime (dropped after cleanup): labs of one test
    /// binary run one at a time, because on two cores concurrent labs
    /// measure each other's CPU load rather than the injected faults.
    _serial: SerialSlot,
}

/// Whether a lab of this process exists, and the condition its end signals.
static SERIAL: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// The one lab slot of the process (a flag rather than a held mutex guard,
/// so a lab can be shared between threads).
struct SerialSlot;

impl SerialSlot {
    fn take() -> SerialSlot {
        // A test that panicked while holding the slot released it in Drop;
        // a poisoned lock is still good.
        let mut busy = SERIAL.0.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = SERIAL.1.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        SerialSlot
    }
}

impl Drop for SerialSlot {
    fn drop(&mut self) {
        *SERIAL.0.lock().unwrap_or_else(|e| e.into_inner()) = false;
        SERIAL.1.notify_one();
    }
}

/// Runs `cmd`, returning its output; panics if it cannot be started.
fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and panics with its stderr unless it succeeds.
fn check(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip ARGS` in the test's own namespace (only netns management and
/// `ip -n NS ...`, which acts inside NS).
pub fn ip(args: &[&str]) -> String {
    check(Command::new("ip").args(args))
}

/// Deletes namespaces left by lab runs whose process is gone (a test binary
/// killed by a signal cannot run its Drop guards).
fn sweep_stale() {
    let out = output(Command::new("ip").args(["netns", "list"]));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("kpl") else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = output(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

impl Lab {
    /// Builds the lab. Panics with the failing command on any error (after
    /// cleaning up what was already created).
    pub fn new(spec: LabSpec) -> Lab {
        assert!((2..=4).contains(&spec.nodes), "2 to 4 nodes");
        assert!(spec.pods_per_node <= 8, "0 to 8 pods per node");
        assert!(
            std::path::Path::new("/dev/net/tun").exists(),
            "netlab needs /dev/net/tun"
        );
        let serial = SerialSlot::take();
        sweep_stale();
        let prefix = format!(
            "kpl{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            prefix,
            spec,
            namespaces: Mutex::new(Vec::new()),
            sandboxes: Mutex::new(vec![0; spec.nodes]),
            procs: Mutex::new(Vec::new()),
            delay_line: None,
            _serial: serial,
        };
        lab.build();
        lab
    }

    /// Netns name of node `i`'s host network.
    pub fn host(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    /// Netns name of pod `j` on node `i`.
    pub fn pod(&self, i: usize, j: usize) -> String {
        format!("{}h{i}p{j}", self.prefix)
    }

    /// Node name of node `i` (as agents report it).
    pub fn node_name(&self, i: usize) -> String {
        format!("node{i}")
    }

    /// Underlay (host network) address of node `i`.
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 200, 0, i as u8 + 1)
    }

    /// Address of pod `j` on node `i`.
    pub fn pod_ip(&self, i: usize, j: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, i as u8, 10 + j as u8)
    }

    /// MTU of pod interfaces in this flavour.
    pub fn pod_mtu(&self) -> u32 {
        match self.spec.flavour {
            Flavour::Routed => UNDERLAY_MTU,
            Flavour::Overlay => UNDERLAY_MTU - VXLAN_OVERHEAD,
        }
    }

    fn add_ns(&self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// Adds a pod sandbox on node `i`: a new namespace behind the node's
    /// bridge with the next free address of its pod CIDR (from
    /// 10.244.i.100), as a CNI plugin sets one up for a new pod. Returns
    /// its namespace and address.
    pub fn add_sandbox(&self, i: usize) -> (String, Ipv4Addr) {
        assert!(i < self.spec.nodes, "no node {i}");
        let k = {
            let mut s = self.sandboxes.lock().unwrap_or_else(|e| e.into_inner());
            s[i] += 1;
            s[i] - 1
        };
        assert!(k < 150, "node {i} ran out of sandbox addresses");
        let ns = format!("{}h{i}s{k}", self.prefix);
        let addr = Ipv4Addr::new(10, 244, i as u8, 100 + k as u8);
        self.add_ns(&ns);
        self.attach_pod(i, &ns, &format!("vs{k}"), addr);
        (ns, addr)
    }

    /// Deletes a sandbox made by [`Lab::add_sandbox`] (its veth goes with
    /// it), as a CNI plugin tears down a deleted pod's network.
    pub fn remove_sandbox(&self, ns: &str) {
        let mut all = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = all.iter().position(|n| n == ns) {
            all.remove(pos);
            let _ = output(Command::new("ip").args(["netns", "del", ns]));
        }
    }

    /// Connects pod namespace `ns` to node `i`'s bridge through a veth
    /// (`port` on the node's side, eth0 in the pod) with address `addr`.
    fn attach_pod(&self, i: usize, ns: &str, port: &str, addr: Ipv4Addr) {
        let h = self.host(i);
        let mtu = self.pod_mtu().to_string();
        ip(&[
            "link", "add", port, "netns", &h, "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
            "netns", ns, "mtu", &mtu,
        ]);
        ip(&["-n", &h, "link", "set", port, "master", "cbr0", "up"]);
        let cidr = format!("{addr}/24");
        ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        let gw = format!("10.244.{i}.1");
        ip(&["-n", ns, "route", "add", "default", "via", &gw]);
    }

    /// Runs a command inside `ns` and returns its output (any exit status).
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        output(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Runs a command inside `ns`, panicking unless it succeeds; returns stdout.
    pub fn run(&self, ns: &str, args: &[&str]) -> String {
        check(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Runs a shell snippet inside `ns` (for pipelines like `nft -f -`).
    pub fn sh(&self, ns: &str, script: &str) -> String {
        self.run(ns, &["sh", "-c", script])
    }

    fn sysctl(&self, ns: &str, kv: &[&str]) {
        let mut args = vec!["sysctl", "-q", "-w"];
        args.extend_from_slice(kv);
        self.run(ns, &args);
    }

    fn build(&mut self) {
        let n = self.spec.nodes;
        for i in 0..n {
            let h = self.host(i);
            self.add_ns(&h);
            self.sysctl(
                &h,
                &[
                    "net.ipv4.ip_forward=1",
                    "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0",
                ],
            );
        }
        self.build_underlay();
        for i in 0..n {
            self.build_node_pods(i);
        }
        match self.spec.flavour {
            Flavour::Routed => self.build_routed(),
            Flavour::Overlay => self.build_overlay(),
        }
    }

    fn build_underlay(&mut self) {
        let n = self.spec.nodes;
        if n == 2 {
            let (a, b) = (self.host(0), self.host(1));
            ip(&[
                "link", "add", "ul", "netns", &a, "type", "veth", "peer", "name", "ul", "netns", &b,
            ]);
        } else {
            // Three or more nodes share one L2 segment: a bridge in a switch netns.
            let sw = format!("{}sw", self.prefix);
            self.add_ns(&sw);
            ip(&["-n", &sw, "link", "add", "sw0", "type", "bridge"]);
            ip(&["-n", &sw, "link", "set", "sw0", "up"]);
            for i in 0..n {
                let port = format!("p{i}");
                ip(&[
                    "link",
                    "add",
                    &port,
                    "netns",
                    &sw,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "ul",
                    "netns",
                    &self.host(i),
                ]);
                ip(&["-n", &sw, "link", "set", &port, "master", "sw0", "up"]);
            }
        }
        for i in 0..n {
            let h = self.host(i);
            let addr = format!("{}/24", self.host_ip(i));
            ip(&["-n", &h, "addr", "add", &addr, "dev", "ul"]);
            ip(&["-n", &h, "link", "set", "ul", "up"]);
        }
    }

    fn build_node_pods(&mut self, i: usize) {
        let h = self.host(i);
        let mtu = self.pod_mtu().to_string();
        ip(&["-n", &h, "link", "add", "cbr0", "type", "bridge"]);
        let gw = format!("10.244.{i}.1/24");
        ip(&["-n", &h, "addr", "add", &gw, "dev", "cbr0"]);
        ip(&["-n", &h, "link", "set", "cbr0", "mtu", &mtu, "up"]);
        for j in 0..self.spec.pods_per_node {
            let p = self.pod(i, j);
            self.add_ns(&p);
            self.attach_pod(i, &p, &format!("vp{j}"), self.pod_ip(i, j));
        }
    }

    fn build_routed(&mut self) {
        let n = self.spec.nodes;
        for i in 0..n {
            for k in (0..n).filter(|k| *k != i) {
                let cidr = format!("10.244.{k}.0/24");
                let via = self.host_ip(k).to_string();
                ip(&["-n", &self.host(i), "route", "add", &cidr, "via", &via]);
            }
        }
    }

    fn build_overlay(&mut self) {
        let n = self.spec.nodes;
        let mtu = (UNDERLAY_MTU - VXLAN_OVERHEAD).to_string();
        for i in 0..n {
            let h = self.host(i);
            let local = self.host_ip(i).to_string();
            // No `dev`: the outer packets follow the routing table, so the
            // delay line can take them over with a /32 route.
            ip(&[
                "-n",
                &h,
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "42",
                "dstport",
                "4789",
                "local",
                &local,
                "nolearning",
            ]);
            ip(&["-n", &h, "link", "set", "vx0", "mtu", &mtu, "up"]);
            let addr = format!("10.245.0.{}/24", i + 1);
            ip(&["-n", &h, "addr", "add", &addr, "dev", "vx0"]);
            for k in (0..n).filter(|k| *k != i) {
                // Flood entries towards every other node so ARP over the
                // overlay resolves.
                let remote = self.host_ip(k).to_string();
                check(Command::new("bridge").args([
                    "-n",
                    &h,
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    "vx0",
                    "dst",
                    &remote,
                ]));
                let cidr = format!("10.244.{k}.0/24");
                let via = format!("10.245.0.{}", k + 1);
                ip(&["-n", &h, "route", "add", &cidr, "via", &via, "dev", "vx0"]);
            }
        }
    }

    /// Inserts a userspace delay line between nodes 0 and 1: their underlay
    /// traffic to each other (and, in the routed flavour, pod traffic between
    /// them) goes through TUN devices `dl` and a Rust process that holds each
    /// packet for the one-way delay. Starts with zero delay.
    pub fn add_delay_line(&mut self) {
        assert!(self.delay_line.is_none(), "one delay line per lab");
        let (a, b) = (self.host(0), self.host(1));
        let dl = DelayLine::start(&a, &b, "dl")
            .unwrap_or_else(|e| panic!("cannot start the delay line: {e}"));
        self.delay_line = Some(dl);
        for (me, peer) in [(0usize, 1usize), (1, 0)] {
            let h = self.host(me);
            ip(&["-n", &h, "link", "set", "dl", "up"]);
            let peer_host = format!("{}/32", self.host_ip(peer));
            ip(&["-n", &h, "route", "replace", &peer_host, "dev", "dl"]);
            if self.spec.flavour == Flavour::Routed {
                let cidr = format!("10.244.{peer}.0/24");
                ip(&["-n", &h, "route", "replace", &cidr, "dev", "dl"]);
            }
        }
    }

    /// Inserts the delay line under the overlay only (overlay flavour):
    /// nodes 0 and 1 reach each other's vxlan through TUN devices `dl`
    /// (addresses `10.201.0.(i+1)/24`, the vxlan forwarding entries
    /// pointed at them), while host traffic stays on the underlay. Pod
    /// paths between the two nodes then cost a known 2d more than the host
    /// path, which is what an overlay's extra latency looks like, made
    /// large and exact. Starts with zero delay.
    pub fn add_overlay_delay_line(&mut self) {
        assert_eq!(self.spec.flavour, Flavour::Overlay, "an overlay lab");
        assert!(self.delay_line.is_none(), "one delay line per lab");
        let (a, b) = (self.host(0), self.host(1));
        let dl = DelayLine::start(&a, &b, "dl")
            .unwrap_or_else(|e| panic!("cannot start the delay line: {e}"));
        self.delay_line = Some(dl);
        for (me, peer) in [(0usize, 1usize), (1, 0)] {
            let h = self.host(me);
            let addr = format!("{}/24", overlay_line_ip(me));
            ip(&["-n", &h, "addr", "add", &addr, "dev", "dl"]);
            ip(&["-n", &h, "link", "set", "dl", "up"]);
            let (old, new) = (
                self.host_ip(peer).to_string(),
                overlay_line_ip(peer).to_string(),
            );
            let zero = "00:00:00:00:00:00";
            check(
                Command::new("bridge")
                    .args(["-n", &h, "fdb", "del", zero, "dev", "vx0", "dst", &old]),
            );
            check(
                Command::new("bridge")
                    .args(["-n", &h, "fdb", "append", zero, "dev", "vx0", "dst", &new]),
            );
        }
    }

    /// Sets the delay line's one-way delay (both directions).
    pub fn set_delay(&self, d: Duration) {
        self.delay_line
            .as_ref()
            .expect("add_delay_line first")
            .set_delay(d);
    }

    /// Packets the delay line has carried (both directions).
    pub fn delay_line_packets(&self) -> u64 {
        self.delay_line
            .as_ref()
            .expect("add_delay_line first")
            .packets()
    }

    /// Shapes node `i`'s underlay egress with tbf.
    pub fn set_tbf(&self, i: usize, rate_mbit: u32, burst: &str) {
        self.set_tbf_on(i, "ul", rate_mbit, burst);
    }

    /// Shapes the egress of node `i`'s device `dev` (`ul`, or the delay
    /// line's `dl`) with tbf.
    pub fn set_tbf_on(&self, i: usize, dev: &str, rate_mbit: u32, burst: &str) {
        let rate = format!("{rate_mbit}mbit");
        ip(&[
            "-n",
            &self.host(i),
            "link",
            "set",
            dev,
            "txqueuelen",
            "1000",
        ]);
        check(Command::new("tc").args([
            "-n",
            &self.host(i),
            "qdisc",
            "replace",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &rate,
            "burst",
            burst,
            "latency",
            "20ms",
        ]));
    }

    /// Removes node `i`'s underlay shaper.
    pub fn clear_tbf(&self, i: usize) {
        let _ = output(Command::new("tc").args([
            "-n",
            &self.host(i),
            "qdisc",
            "del",
            "dev",
            "ul",
            "root",
        ]));
    }

    /// Loads an nftables ruleset (text for `nft -f -`) in `ns`.
    pub fn nft(&self, ns: &str, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nft: {e}"));
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin
                .write_all(ruleset.as_bytes())
                .unwrap_or_else(|e| panic!("writing to nft: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("nft: {e}"));
        assert!(
            out.status.success(),
            "nft -f failed: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Reads the packet count of every named counter in `ns`'s table
    /// `inet kpl` (`counter NAME` objects).
    pub fn nft_counter(&self, ns: &str, name: &str) -> u64 {
        let out = self.run(ns, &["nft", "list", "counter", "inet", "kpl", name]);
        // "... packets 123 bytes 4567"
        let mut words = out.split_whitespace();
        while let Some(w) = words.next() {
            if w == "packets" {
                if let Some(v) = words.next().and_then(|v| v.parse().ok()) {
                    return v;
                }
            }
        }
        panic!("no packet count in: {out}");
    }

    /// Starts a long-running process inside `ns`; it is killed when the lab
    /// is dropped (or by [`Lab::kill`]). Returns its pid.
    pub fn spawn(&self, ns: &str, args: &[&str], log: Option<&std::path::Path>) -> u32 {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        cmd.stdin(Stdio::null());
        match log {
            Some(p) => {
                let f = std::fs::File::create(p)
                    .unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
                let f2 = f
                    .try_clone()
                    .unwrap_or_else(|e| panic!("cannot dup log: {e}"));
                cmd.stdout(f).stderr(f2);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {args:?} in {ns}: {e}"));
        let pid = child.id();
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child);
        pid
    }

    /// Kills one spawned process and waits for it.
    pub fn kill(&self, pid: u32) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pos) = procs.iter().position(|c| c.id() == pid) {
            let mut c = procs.remove(pos);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether a spawned process is still running.
    pub fn alive(&self, pid: u32) -> bool {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs
            .iter_mut()
            .find(|c| c.id() == pid)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `f` on a fresh thread that has entered `ns`, so sockets it
    /// creates live in that namespace.
    pub fn in_ns<T, F>(&self, ns: &str, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        in_ns(ns, f)
    }
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`.
pub fn in_ns<T, F>(ns: &str, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = ns.to_string();
    std::thread::spawn(move || {
        sys::enter_netns(&ns).unwrap_or_else(|e| panic!("setns {ns}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Order matters: the delay line first (its threads hold TUN fds),
        // then processes (a netns is not deleted while they run in it),
        // then the namespaces, which takes their links with them.
        self.delay_line = None;
        let mut procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for c in procs.iter_mut() {
            let _ = c.kill();
        }
        for c in procs.iter_mut() {
            let _ = c.wait();
        }
        let namespaces =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in namespaces.iter().rev() {
            let _ = output(Command::new("ip").args(["netns", "del", ns]));
        }
    }
}

/// Node `i`'s end of the delay line under the overlay.
fn overlay_line_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, 0, i as u8 + 1)
}

/// Polls `f` every `every` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(every);
    }
}
