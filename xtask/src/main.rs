//! `cargo xtask <task>`: kubepulse's repository tasks.
//!
//! - `monitoring`: regenerates `deploy/monitoring/` (the PrometheusRule and
//!   the Grafana dashboard ConfigMaps) from `alerts/` and `dashboards/`;
//! - `monitoring --check`: fails when `deploy/monitoring/` is out of date;
//! - `slowest JUNIT [N]`: prints the N (10) slowest tests of a
//!   cargo-nextest JUnit report, slowest first;
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
        ["slowest", path] | ["slowest", path, _] => {
            let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10);
            slowest(std::path::Path::new(path), n)
        }
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
            eprintln!(
                "usage: cargo xtask monitoring [--check] | cargo xtask modules | cargo xtask slowest JUNIT [N]"
            );
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

/// Prints the `n` slowest tests of the JUnit report at `path`.
fn slowest(path: &std::path::Path, n: usize) -> Result<(), xtask::Error> {
    let xml = std::fs::read_to_string(path).map_err(|source| xtask::Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let cases = xtask::junit::cases(&xml).map_err(|what| xtask::Error::Source {
        path: path.to_path_buf(),
        what,
    })?;
    for c in xtask::junit::slowest(cases, n) {
        println!("{:>9.1} s  {} {}", c.seconds, c.binary, c.name);
    }
    Ok(())
}
