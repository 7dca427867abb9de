//! Measures what the issue-2 closing note reports, side by side in one run:
//! - the series count of a `kubepulse local` scrape with 4 agents;
//! - one agent's RSS and CPU while idle-probing 3 peers at default cadence;
//! - loopback UDP RTT p50/p99 as kubepulse reports it, next to
//!   `ping -c 100 -i 0.01` on the same machine at the same spacing.
//!
//! Run: `cargo bench --bench agent_cost` (release build; takes about 90 s).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> String {
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

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn series(body: &str) -> usize {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

/// (cumulative upper bound, count) buckets of a histogram series.
fn buckets(body: &str, name: &str, matchers: &[&str]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for l in body.lines() {
        if !l.starts_with(&format!("{name}_bucket{{")) || !matchers.iter().all(|m| l.contains(m)) {
            continue;
        }
        let le = l
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("le");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().expect("le")
        };
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        match out.iter_mut().find(|(b, _)| *b == le) {
            Some(e) => e.1 += v,
            None => out.push((le, v)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// histogram_quantile's linear interpolation within a bucket.
fn quantile(q: f64, b: &[(f64, f64)]) -> f64 {
    let total = b.last().map(|x| x.1).unwrap_or(0.0);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, c) in b {
        if c >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            return prev.0 + (le - prev.0) * (rank - prev.1) / (c - prev.1).max(1e-9);
        }
        prev = (le, c);
    }
    prev.0
}

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

fn config(
    name: &str,
    ip: &str,
    peers: &[(&str, &str)],
    udp_interval: &str,
) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .expect("temp");
    let mut s = format!(
        "agent: {{name: {name}, node: {name}, kind: host, bind_address: {ip}, metrics_listen: '127.0.0.1:0'}}\n\
         probes: {{udp: {{interval: {udp_interval}, timeout: 1s}}, bandwidth: {{enabled: false}}}}\n\
         discovery:\n  peers:\n"
    );
    for (n, a) in peers {
        s.push_str(&format!(
            "    - {{name: {n}, node: {n}, kind: host, address: {a}}}\n"
        ));
    }
    f.write_all(s.as_bytes()).expect("write");
    f
}

fn main() {
    // `cargo test --all-targets` also runs bench targets; only measure when
    // started by `cargo bench` (which passes --bench).
    if !std::env::args().any(|a| a == "--bench") {
        println!("agent_cost: skipped (run with cargo bench)");
        return;
    }
    // 1. Series count of a local scrape with 4 agents.
    let (local, addr) = start(&["local", "--agents", "4", "--listen", "127.0.0.1:0"]);
    std::thread::sleep(Duration::from_secs(5));
    let local_series = series(&scrape(addr));
    drop(local);

    // 2. One agent idle-probing 3 peers at the default cadence.
    let ips = ["127.0.0.51", "127.0.0.52", "127.0.0.53", "127.0.0.54"];
    let names = ["n1", "n2", "n3", "n4"];
    let mut procs = Vec::new();
    let mut cfgs = Vec::new();
    for i in 0..4 {
        let peers: Vec<(&str, &str)> = (0..4)
            .filter(|j| *j != i)
            .map(|j| (names[j], ips[j]))
            .collect();
        let cfg = config(names[i], ips[i], &peers, "1s");
        let path = cfg.path().to_string_lossy().into_owned();
        procs.push(start(&["agent", "--config", &path]));
        cfgs.push(cfg);
    }
    let pid = procs[0].0 .0.id();
    std::thread::sleep(Duration::from_secs(5));
    let (cpu0, _) = proc_stat(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let (cpu1, rss) = proc_stat(pid);
    let cpu_pct = 100.0 * (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    let agent_series = series(&scrape(procs[0].1));
    drop(procs);

    // 3. Loopback UDP RTT at 10 ms spacing, next to ping at the same spacing.
    let a = config("rtt-a", "127.0.0.61", &[("rtt-b", "127.0.0.62")], "10ms");
    let b = config("rtt-b", "127.0.0.62", &[("rtt-a", "127.0.0.61")], "10ms");
    let (_pa, addr_a) = start(&["agent", "--config", &a.path().to_string_lossy()]);
    let (_pb, _) = start(&["agent", "--config", &b.path().to_string_lossy()]);
    // Warm up, then count only the samples taken while ping runs.
    std::thread::sleep(Duration::from_secs(3));
    let before = buckets(
        &scrape(addr_a),
        "kubepulse_probe_rtt_seconds",
        &["protocol=\"udp\""],
    );
    let ping = Command::new("ping")
        .args(["-c", "100", "-i", "0.01", "127.0.0.1"])
        .output()
        .expect("ping (iputils-ping)");
    let mut ping_rtts: Vec<f64> = String::from_utf8_lossy(&ping.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms / 1000.0)
        .collect();
    ping_rtts.sort_by(f64::total_cmp);
    let pq = |q: f64| {
        ping_rtts[((q * ping_rtts.len() as f64).ceil() as usize)
            .saturating_sub(1)
            .min(ping_rtts.len() - 1)]
    };
    let after = buckets(
        &scrape(addr_a),
        "kubepulse_probe_rtt_seconds",
        &["protocol=\"udp\""],
    );
    let b: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let prev = before.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1);
            (*le, c - prev)
        })
        .collect();
    let us = |s: f64| s * 1e6;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "kubepulse agent cost and loopback accuracy (load average: {})",
        load.trim()
    );
    println!("  local mode, 4 agents: {local_series} series in one scrape");
    println!("  one agent probing 3 peers (udp+tcp+icmp 1/s, connect 10s, http 30s, pmtu 10m):");
    println!(
        "    RSS {:.1} MiB, CPU {:.3}% of one core over 60 s, {agent_series} series",
        rss / 1048576.0,
        cpu_pct
    );
    println!(
        "  loopback RTT at 10 ms spacing ({} kubepulse UDP samples, {} ping samples):",
        b.last().map(|x| x.1).unwrap_or(0.0),
        ping_rtts.len()
    );
    println!(
        "    kubepulse udp p50 {:.1} us, p99 {:.1} us (histogram interpolation, doubling buckets)",
        us(quantile(0.5, &b)),
        us(quantile(0.99, &b))
    );
    println!(
        "    ping          p50 {:.1} us, p99 {:.1} us",
        us(pq(0.5)),
        us(pq(0.99))
    );
}
