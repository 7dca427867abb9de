//! `cargo xtask <task>`: kubepulse's repository tasks.
//!
//! - `monitoring`: regenerates `deploy/monitoring/` (the PrometheusRule and
//!   the Grafana dashboard ConfigMaps) from `alerts/` and `dashboards/`;
//! - `monitoring --check`: fails when `deploy/monitoring/` is out of date;
//! - `modules`: prints the layers of `src/`'s top-level modules, lowest
//!   first, and any cycle among them.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = xtask::repo_root();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["monitoring"] => xtask::monitoring::write(&root).map(|written| {
            for name in written {
                println!("wrote deploy/monitoring/{name}");
            }
        }),
        ["monitoring", "--check"] => xtask::monitoring::check(&root).and_then(|problems| {
            if problems.is_empty() {
                println!("deploy/monitoring is up to date");
                Ok(())
            } else {
                Err(xtask::Error::OutOfDate(problems.join(", ")))
            }
        }),
        ["modules"] => xtask::module_graph::scan(&root.join("src")).and_then(|scan| {
            let layers = xtask::module_graph::layers(&scan.modules, &scan.edges);
            for (i, layer) in layers.iter().enumerate() {
                println!("{i}: {}", layer.join(" "));
            }
            let cycles = xtask::module_graph::cycles(&scan.edges);
            for c in &cycles {
                println!("{c}");
            }
            if cycles.is_empty() {
                Ok(())
            } else {
                Err(xtask::Error::Cycles(cycles.len()))
            }
        }),
        _ => {
            eprintln!("usage: cargo xtask monitoring [--check] | cargo xtask modules");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
