//! Runs the `kubepulse` binary as a child process; the guard kills it on drop
//! so a failing test leaves nothing behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
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
    /// hooks of a `testkit` build, or `RUST_LOG`, `warn` by default).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Kubepulse {
        Self::spawn(args, env, None)
    }

    /// [`Kubepulse::start_with_env`] that also collects the process's log
    /// (its stderr), still copied to the test's stderr.
    pub fn start_logged(args: &[&str], env: &[(&str, &str)]) -> (Kubepulse, Logs) {
        let logs = Logs::default();
        (Self::spawn(args, env, Some(logs.clone())), logs)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], logs: Option<Logs>) -> Kubepulse {
        let mut child = Command::new(crate::kubepulse_bin())
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(if logs.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("spawn kubepulse");
        if let (Some(logs), Some(stderr)) = (logs, child.stderr.take()) {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    logs.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
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

/// The log lines a child process has written so far (see
/// [`Kubepulse::start_logged`]).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
