//! What one agent costs, side by side with fping in the same run.
//!
//! For K = 10, 50 and 200 peers: one prober agent probes K peers at the
//! default cadence (UDP, TCP and ICMP once a second each; TCP connect, HTTP
//! and path MTU at their defaults; bandwidth off), all answered by one
//! responder agent on 127.0.0.1 (K peers with distinct names and nodes, so
//! K series keys). Over a window it prints the prober's whole process CPU
//! per latency probe sent, `fping -l -p 1000` to K loopback addresses
//! (127.0.1.1..K) in the same run and its CPU per probe, their ratio, the
//! prober's RSS and series, and the responder's CPU per echoed probe.
//! Then the loopback UDP RTT as kubepulse reports it next to `fping` at
//! the same spacing.
//!
//! Each K is measured in rounds (kubepulse's window, then fping's), and
//! the table gives the medians with every round's ratio: on a VM the cost
//! of a wake-up drifts between windows by as much as the difference being
//! measured, so one pair of windows is not a result.
//!
//! Run: `cargo build --release && cargo bench --bench agent_cost`
//! (about 8 minutes). Environment: `AGENT_COST_BIN` measures another
//! kubepulse binary (e.g. an older build; set `AGENT_COST_LEGACY=1` if it
//! predates `metrics.max_series`), `AGENT_COST_WINDOW` the window in
//! seconds (default 20), `AGENT_COST_ROUNDS` the rounds per K (default 3),
//! `AGENT_COST_K` a comma-separated list of K.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubepulse_testkit::scrape::Scrape;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> String {
    if let Ok(b) = std::env::var("AGENT_COST_BIN") {
        return b;
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/release/deps/agent_cost-xxxx -> target/release/kubepulse
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("kubepulse").to_string_lossy().into_owned()
}

fn start(args: &[&str]) -> (Proc, SocketAddr) {
    let mut child = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn kubepulse (build it first: cargo build --release)");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("kubepulse exited before printing its address")
            .expect("read");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.trim_end_matches("/metrics").parse().expect("addr");
        }
    };
    (Proc(child), addr)
}

/// One parsed `/metrics` scrape (the test kit's strict view: a series the
/// bench reads that is not there fails it, never reads as 0).
fn scrape(addr: SocketAddr) -> Scrape {
    let body = kubepulse_testkit::http::get_ok(addr, "/metrics").expect("scrape /metrics");
    kubepulse_testkit::scrape::parse(&body)
}

/// histogram_quantile's linear interpolation within a bucket (the
/// report's own implementation); NaN without samples.
fn quantile(q: f64, b: &[(f64, f64)]) -> f64 {
    kubepulse_testkit::scrape::quantile(b, q).unwrap_or(f64::NAN)
}

/// CPU seconds of `pid`, ns-exact: the sum of its threads' time on CPU
/// (`/proc/PID/task/*/schedstat`), with the thread ids it covers. The clock
/// tick counts of `/proc/PID/stat` are too coarse for fping at K = 10 (a few
/// ticks in a window).
fn cpu_ns(pid: u32) -> (f64, Vec<u32>) {
    let mut total = 0u64;
    let mut tids = Vec::new();
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    (total as f64 / 1e9, tids)
}

/// CPU ns of `pid`'s live threads, summed by thread name (`comm`): where
/// the process's time goes (the engine, tokio's workers, the blocking
/// pool, the echo threads).
fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(ns) = ns {
            *out.entry(comm.trim().to_string()).or_insert(0) += ns;
        }
    }
    out
}

/// `after - before` per thread name, as "name share%" (largest first),
/// out of `total_ns`.
fn thread_shares(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> String {
    let mut d: Vec<(String, u64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .collect();
    let total: u64 = d.iter().map(|x| x.1).sum::<u64>().max(1);
    d.sort_by_key(|x| std::cmp::Reverse(x.1));
    d.iter()
        .filter(|x| x.1 > 0)
        .map(|(k, v)| format!("{k} {:.0}%", 100.0 * *v as f64 / total as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU seconds spent by `pid` between two readings: ns-exact when the same
/// threads ran throughout, else (a thread exited) from the tick counts,
/// which keep the time of exited threads.
fn cpu_between(a: &(f64, Vec<u32>, f64), b: &(f64, Vec<u32>, f64)) -> f64 {
    if b.1.iter().all(|t| a.1.contains(t)) && a.1.iter().all(|t| b.1.contains(t)) {
        b.0 - a.0
    } else {
        eprintln!("  (threads changed during the window: using clock ticks)");
        b.2 - a.2
    }
}

fn cpu_reading(pid: u32) -> (f64, Vec<u32>, f64) {
    let (ns, tids) = cpu_ns(pid);
    (ns, tids, proc_stat(pid).0)
}

/// (CPU seconds, user + system, of every thread that ever ran; RSS bytes).
fn proc_stat(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .expect("stat")
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    (ticks / 100.0, rss_kb * 1024.0)
}

const RESPONDER_PORTS: [u16; 4] = [39_101, 39_102, 39_103, 39_104];
const PROBER_PORTS: [u16; 4] = [39_201, 39_202, 39_203, 39_204];

fn ports_yaml(p: [u16; 4]) -> String {
    format!(
        "{{udp_echo: {}, tcp_echo: {}, bandwidth: {}, http: {}}}",
        p[0], p[1], p[2], p[3]
    )
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp");
    f.write_all(text.as_bytes()).expect("write");
    f
}

fn peer_ip(i: usize) -> String {
    format!("127.0.1.{}", i + 1)
}

/// A prober probing `k` peers, all served by the responder's ports.
fn prober_config(k: usize, legacy: bool) -> tempfile::NamedTempFile {
    let mut s = format!(
        "agent: {{name: prober, node: prober, kind: host, bind_address: 127.0.0.2, \
         metrics_listen: '127.0.0.1:0', ports: {}}}\n\
         probes: {{bandwidth: {{enabled: false}}}}\n",
        ports_yaml(PROBER_PORTS)
    );
    if !legacy {
        // Measure the engine on all K targets, not the default budget's cap.
        s.push_str("metrics: {max_series: 1000000}\n");
    }
    s.push_str("discovery:\n  peers:\n");
    for i in 0..k {
        s.push_str(&format!(
            "    - {{name: p{i}, node: n{i}, kind: host, address: 127.0.0.1, ports: {}}}\n",
            ports_yaml(RESPONDER_PORTS)
        ));
    }
    write_config(&s)
}

/// The responder answers every prober stream: its per-source budgets
/// (sized for many sources, one stream each) would otherwise refuse most
/// of K = 200 TCP connections from the one prober address.
fn responder_config() -> tempfile::NamedTempFile {
    write_config(&format!(
        "agent: {{name: responder, node: responder, kind: host, bind_address: 127.0.0.1, \
         metrics_listen: '127.0.0.1:0', ports: {}}}\n\
         probes: {{bandwidth: {{enabled: false}}}}\n\
         responder: {{max_connections: 4096, max_connections_per_source: 4096, \
         tcp_connections_per_second_per_source: 100000, \
         udp_packets_per_second_per_source: 100000}}\n\
         discovery:\n  peers: []\n",
        ports_yaml(RESPONDER_PORTS)
    ))
}

struct Row {
    k: usize,
    kp_cpu_per_probe: f64,
    fping_cpu_per_probe: f64,
    rss: f64,
    series: usize,
    responder_cpu_per_echo: f64,
    probes_per_s: f64,
    /// The prober's CPU by thread name.
    threads: String,
    /// Every round's kubepulse / fping ratio.
    ratios: Vec<f64>,
}

/// The median of `v` (the upper one of an even count).
fn median(v: &[f64]) -> f64 {
    kubepulse_testkit::scrape::median(v).unwrap_or(f64::NAN)
}

/// `rounds` alternating rounds at `k`: the median round (by prober CPU per
/// probe) with the median fping cost and every round's ratio.
fn measure_rounds(k: usize, window: Duration, rounds: usize, legacy: bool) -> Row {
    let mut all = Vec::new();
    for round in 1..=rounds {
        let mut row = measure_kubepulse(k, window, legacy);
        row.fping_cpu_per_probe = measure_fping(k, window);
        eprintln!(
            "K={k} round {round}: {:.1} us/probe ({:.0} probes/s), fping {:.1} us/probe; prober CPU by thread: {}",
            row.kp_cpu_per_probe * 1e6,
            row.probes_per_s,
            row.fping_cpu_per_probe * 1e6,
            row.threads
        );
        all.push(row);
    }
    let ratios: Vec<f64> = all
        .iter()
        .map(|r| r.kp_cpu_per_probe / r.fping_cpu_per_probe)
        .collect();
    let fping = median(
        &all.iter()
            .map(|r| r.fping_cpu_per_probe)
            .collect::<Vec<_>>(),
    );
    all.sort_by(|a, b| a.kp_cpu_per_probe.total_cmp(&b.kp_cpu_per_probe));
    let mut row = all.swap_remove(all.len() / 2);
    row.fping_cpu_per_probe = fping;
    row.ratios = ratios;
    row
}

fn latency_probes(s: &Scrape) -> f64 {
    s.sum("kubepulse_probe_sent_total", &[])
}

fn echoed(s: &Scrape) -> f64 {
    let requests = |responder| {
        s.sum(
            "kubepulse_responder_requests_total",
            &[("responder", responder)],
        )
    };
    requests("udp_echo") + requests("tcp_echo")
}

fn measure_kubepulse(k: usize, window: Duration, legacy: bool) -> Row {
    let rcfg = responder_config();
    let (responder, raddr) = start(&["agent", "--config", &rcfg.path().to_string_lossy()]);
    let pcfg = prober_config(k, legacy);
    let (prober, paddr) = start(&["agent", "--config", &pcfg.path().to_string_lossy()]);
    // Connections up, first PMTU searches and HTTP probes done.
    std::thread::sleep(Duration::from_secs(6));
    let (ppid, rpid) = (prober.0.id(), responder.0.id());
    let p0 = cpu_reading(ppid);
    let r0 = cpu_reading(rpid);
    let threads0 = cpu_by_thread(ppid);
    let sent0 = latency_probes(&scrape(paddr));
    let echo0 = echoed(&scrape(raddr));
    let t0 = Instant::now();
    std::thread::sleep(window);
    let p1 = cpu_reading(ppid);
    let r1 = cpu_reading(rpid);
    let threads = thread_shares(&threads0, &cpu_by_thread(ppid));
    let (_, rss) = proc_stat(ppid);
    let elapsed = t0.elapsed().as_secs_f64();
    let body = scrape(paddr);
    let sent1 = latency_probes(&body);
    let echo1 = echoed(&scrape(raddr));
    let probes = sent1 - sent0;
    assert!(probes > 0.0, "the prober sent nothing");
    Row {
        k,
        kp_cpu_per_probe: cpu_between(&p0, &p1) / probes,
        fping_cpu_per_probe: 0.0,
        rss,
        series: body.series_count(),
        responder_cpu_per_echo: cpu_between(&r0, &r1) / (echo1 - echo0).max(1.0),
        probes_per_s: probes / elapsed,
        threads,
        ratios: Vec::new(),
    }
}

/// fping's CPU per probe to `k` loopback addresses, each once a second.
fn measure_fping(k: usize, window: Duration) -> f64 {
    let mut args: Vec<String> = ["-l", "-q", "-p", "1000", "-i", "1"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend((0..k).map(peer_ip));
    let child = Command::new("fping")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fping (apt-get install fping)");
    let fping = Proc(child);
    std::thread::sleep(Duration::from_secs(2));
    let pid = fping.0.id();
    let c0 = cpu_reading(pid);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let c1 = cpu_reading(pid);
    // Open loop: every target once per period.
    let probes = k as f64 * t0.elapsed().as_secs_f64();
    cpu_between(&c0, &c1) / probes
}

fn main() {
    // `cargo test --all-targets` also runs bench targets; only measure when
    // started by `cargo bench` (which passes --bench).
    if !std::env::args().any(|a| a == "--bench") {
        println!("agent_cost: skipped (run with cargo bench)");
        return;
    }
    let window = Duration::from_secs(
        std::env::var("AGENT_COST_WINDOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    let rounds = std::env::var("AGENT_COST_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize)
        .max(1);
    let legacy = std::env::var("AGENT_COST_LEGACY").is_ok_and(|v| v == "1");
    let ks: Vec<usize> = std::env::var("AGENT_COST_K")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 50, 200]);

    let mut rows = Vec::new();
    for &k in &ks {
        rows.push(measure_rounds(k, window, rounds, legacy));
    }

    // Loopback UDP RTT at 10 ms spacing, next to ping at the same spacing.
    let rtt_cfg = |name: &str, ip: &str, peer: &str, peer_ip: &str| {
        write_config(&format!(
            "agent: {{name: {name}, node: {name}, kind: host, bind_address: {ip}, metrics_listen: '127.0.0.1:0'}}\n\
             probes: {{udp: {{interval: 10ms, timeout: 1s}}, bandwidth: {{enabled: false}}}}\n\
             discovery:\n  peers:\n    - {{name: {peer}, node: {peer}, kind: host, address: {peer_ip}}}\n"
        ))
    };
    let a = rtt_cfg("rtt-a", "127.0.0.61", "rtt-b", "127.0.0.62");
    let b = rtt_cfg("rtt-b", "127.0.0.62", "rtt-a", "127.0.0.61");
    let (_pa, addr_a) = start(&["agent", "--config", &a.path().to_string_lossy()]);
    let (_pb, _) = start(&["agent", "--config", &b.path().to_string_lossy()]);
    // Warm up, then count only the samples taken while ping runs.
    std::thread::sleep(Duration::from_secs(3));
    let udp_rtt = || scrape(addr_a).buckets("kubepulse_probe_rtt_seconds", &[("protocol", "udp")]);
    let before = udp_rtt();
    // `fping -C`: one line "addr : t1 t2 ..." in ms on stderr.
    let ping = Command::new("fping")
        .args(["-C", "100", "-p", "10", "-q", "127.0.0.1"])
        .output()
        .expect("fping");
    let mut ping_rtts: Vec<f64> = String::from_utf8_lossy(&ping.stderr)
        .split(" : ")
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|t| t.parse::<f64>().ok())
        .map(|ms| ms / 1000.0)
        .collect();
    assert!(!ping_rtts.is_empty(), "no fping samples");
    ping_rtts.sort_by(f64::total_cmp);
    let pq = |q: f64| {
        ping_rtts[((q * ping_rtts.len() as f64).ceil() as usize)
            .saturating_sub(1)
            .min(ping_rtts.len() - 1)]
    };
    let hist = kubepulse_testkit::scrape::bucket_delta(&udp_rtt(), &before);
    let udp_samples = hist.last().map(|x| x.1).expect("UDP RTT histogram buckets");

    let us = |s: f64| s * 1e6;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "kubepulse agent cost ({}; {rounds} rounds of {} s windows per K, medians; load average: {})",
        bin(),
        window.as_secs(),
        load.trim()
    );
    println!(
        "one prober, K peers, udp+tcp+icmp 1/s, tcp connect 10 s, http 30 s, pmtu 10 m, bandwidth off"
    );
    println!();
    println!("| K peers | prober CPU per probe | fping CPU per probe | ratio (median of rounds) | every round's ratio | RSS | series | responder CPU per echoed probe |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let each: Vec<String> = r.ratios.iter().map(|x| format!("{x:.2}")).collect();
        println!(
            "| {} | {:.1} µs | {:.1} µs | {:.2}x | {} | {:.1} MiB | {} | {:.1} µs |",
            r.k,
            us(r.kp_cpu_per_probe),
            us(r.fping_cpu_per_probe),
            median(&r.ratios),
            each.join(", "),
            r.rss / 1_048_576.0,
            r.series,
            us(r.responder_cpu_per_echo),
        );
    }
    println!();
    for r in &rows {
        println!("K={}: prober CPU by thread: {}", r.k, r.threads);
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "\ncost per probe at K={} / at K={}: {:.2}x",
            last.k,
            first.k,
            last.kp_cpu_per_probe / first.kp_cpu_per_probe
        );
    }
    println!(
        "\nloopback RTT at 10 ms spacing ({} kubepulse UDP samples, {} fping samples):",
        udp_samples,
        ping_rtts.len()
    );
    println!(
        "  kubepulse udp p50 {:.1} us, p99 {:.1} us (histogram interpolation, doubling buckets)",
        us(quantile(0.5, &hist)),
        us(quantile(0.99, &hist))
    );
    println!(
        "  fping         p50 {:.1} us, p99 {:.1} us",
        us(pq(0.5)),
        us(pq(0.99))
    );
}
