//! `cargo xtask <task>`: kubepulse's repository tasks.
//!
//! - `deploy`: copies `alerts/kubepulse-rules.yaml` and `dashboards/*.json`
//!   into the Helm chart (`charts/kubepulse/files/`) and regenerates the
//!   static manifests of `deploy/` from the chart (`helm template`);
//! - `deploy --check`: fails naming every generated file that is out of
//!   date; `--runbook-url-base URL`, `--job-selector MATCHER` and
//!   `--namespace-selector MATCHER` set the chart's `prometheusRule` values
//!   of the same names;
//! - `modules`: prints the layers of `src/`'s top-level modules, lowest
//!   first, and any cycle among them.

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask deploy [--check] [--runbook-url-base URL] [--job-selector MATCHER] [--namespace-selector MATCHER] | cargo xtask modules";

/// `deploy`'s arguments: whether to check, and the options.
fn deploy_args(args: &[String]) -> Option<(bool, xtask::deploy::Options)> {
    let mut check = false;
    let mut opts = xtask::deploy::Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--check" => {
                check = true;
                continue;
            }
            "--runbook-url-base" => &mut opts.runbook_url_base,
            "--job-selector" => &mut opts.job_selector,
            "--namespace-selector" => &mut opts.namespace_selector,
            _ => return None,
        };
        *slot = Some(it.next()?.clone());
    }
    Some((check, opts))
}

fn deploy(check: bool, opts: &xtask::deploy::Options) -> Result<(), xtask::Error> {
    let root = xtask::repo_root();
    if check {
        let problems = xtask::deploy::check(&root, opts)?;
        if problems.is_empty() {
            println!("deploy/ and charts/kubepulse/files/ are up to date");
            return Ok(());
        }
        return Err(xtask::Error::OutOfDate(problems.join("\n  ")));
    }
    for path in xtask::deploy::write(&root, opts)? {
        println!("wrote {path}");
    }
    Ok(())
}

fn modules() -> Result<(), xtask::Error> {
    let root = xtask::repo_root();
    let scan = xtask::module_graph::scan(&root.join("src"))?;
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
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((task, rest)) if task == "deploy" => match deploy_args(rest) {
            Some((check, opts)) => deploy(check, &opts),
            None => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
        Some((task, [])) if task == "modules" => modules(),
        _ => {
            eprintln!("{USAGE}");
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
