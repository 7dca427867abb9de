//! Runs the `kubepulse` binary as a child process; the guard kills it on drop
//! so a failing test leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running kubepulse process.
pub struct Kubepulse {
    /// The child process.
    pub child: Child,
    /// The `/metrics` address it printed.
    pub metrics: SocketAddr,
}

impl Kubepulse {
    /// Starts `kubepulse ARGS` and waits (up to 30 s) for the line that says
    /// where metrics are served.
    pub fn start(args: &[&str]) -> Kubepulse {
        Self::start_with_env(args, &[])
    }

    /// [`Kubepulse::start`] with extra environment variables (e.g. the test
    /// hooks of a `testkit` build).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Kubepulse {
        let mut child = Command::new(crate::kubepulse_bin())
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kubepulse");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let metrics = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("kubepulse did not print its metrics address within 30 s");
                }
            };
            if let Some(rest) = line.split("http://").nth(1) {
                let addr = rest.trim_end_matches("/metrics");
                break addr.parse().expect("metrics address");
            }
        };
        Kubepulse { child, metrics }
    }

    /// Sends a signal by name (TERM, HUP, KILL) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Kubepulse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
