//! A kube-state-metrics stand-in: serves the one kube-state-metrics series
//! kubepulse's rules read (`kube_daemonset_status_desired_number_scheduled`,
//! from the DaemonSets' status the lab's controller writes) on
//! 10.200.0.1:8081 in node 0's namespace, where the lab's Prometheus
//! scrapes it as a user's Prometheus scrapes the real one.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;

use crate::apiserver::ApiServer;
use crate::lab::netlab::{in_ns, Lab};

/// Where it listens.
pub const ADDR: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 200, 0, 1), 8081);

/// The running stand-in; stops when dropped.
pub struct Ksm {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ksm {
    /// Starts serving in node 0's namespace.
    pub fn start(lab: &Lab, server: ApiServer) -> Ksm {
        let listener = in_ns(&lab.host(0), || TcpListener::bind(ADDR))
            .unwrap_or_else(|e| panic!("bind kube-state-metrics in node 0: {e}"));
        listener.set_nonblocking(true).expect("non-blocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 4096];
                        let _ = conn.read(&mut buf);
                        let body = exposition(&server);
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        Ksm {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ksm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The exposition text, from the stored DaemonSets.
fn exposition(server: &ApiServer) -> String {
    let mut out = String::from(
        "# HELP kube_daemonset_status_desired_number_scheduled The number of nodes that should be running the daemon pod.\n\
         # TYPE kube_daemonset_status_desired_number_scheduled gauge\n",
    );
    for d in server.all_objects::<DaemonSet>() {
        out.push_str(&format!(
            "kube_daemonset_status_desired_number_scheduled{{namespace=\"{}\",daemonset=\"{}\"}} {}\n",
            d["metadata"]["namespace"].as_str().unwrap_or(""),
            d["metadata"]["name"].as_str().unwrap_or(""),
            d["status"]["desiredNumberScheduled"].as_u64().unwrap_or(0)
        ));
    }
    out
}
