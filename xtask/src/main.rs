//! `cargo xtask <task>`: kubepulse's repository tasks.
//!
//! - `deploy`: copies `alerts/kubepulse-rules.yaml` and `dashboards/*.json`
//!   into the Helm chart (`charts/kubepulse/files/`) and regenerates the
//!   static manifests of `deploy/` from the chart (`helm template`);
//! - `deploy --check`: fails naming every generated file that is out of
//!   date; `--runbook-url-base URL`, `--job-selector MATCHER` and
//!   `--namespace-selector MATCHER` set the chart's `prometheusRule` values
//!   of the same names, `--with-mixin-duplicates` sets its
//!   `mixinDuplicates` (the alerts that duplicate kubernetes-mixin's);
//! - `slowest JUNIT [N]`: prints the N (10) slowest tests of a
//!   cargo-nextest JUnit report, slowest first;
//! - `modules`: prints the layers of `src/`'s top-level modules, lowest
//!   first, and any cycle among them.

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask deploy [--check] [--runbook-url-base URL] [--job-selector MATCHER] [--namespace-selector MATCHER] [--with-mixin-duplicates] | cargo xtask modules | cargo xtask slowest JUNIT [N]";

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
            "--with-mixin-duplicates" => {
                opts.mixin_duplicates = true;
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
        Some((task, [path, n @ ..])) if task == "slowest" && n.len() <= 1 => {
            match n.first().map(|n| n.parse::<usize>()).unwrap_or(Ok(10)) {
                Ok(n) => slowest(std::path::Path::new(path), n),
                Err(_) => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            }
        }
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
