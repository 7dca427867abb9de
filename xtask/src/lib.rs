//! kubepulse's repository tasks, run as `cargo xtask <task>` and used by the
//! tests that check their output is committed: the static manifests and the
//! chart's copied files ([`deploy`]), and the module graph check
//! ([`module_graph`]).

use std::path::{Path, PathBuf};

pub mod deploy;
pub mod junit;
pub mod module_graph;

/// What can go wrong in a task.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A source file is not what it should be.
    #[error("{path}: {what}")]
    Source {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Generated files differ from what their sources give.
    #[error("generated files are out of date:\n  {0}\nregenerate with `cargo xtask deploy`")]
    OutOfDate(String),
    /// An external tool (helm) failed or is missing.
    #[error("{tool}: {what}")]
    Tool {
        /// The tool.
        tool: String,
        /// What happened.
        what: String,
    },
    /// `src/`'s top-level modules depend on each other in cycles.
    #[error("{0} module cycle(s) in src/")]
    Cycles(usize),
}

/// The repository root (the parent of `xtask/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Reads a file, naming it in the error.
fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}
