//! Burst keys: read from a file mounted from a Secret (one hex key per
//! line; the first signs, every one verifies, so a rotation can add the new
//! key before any agent signs with it), or generated once per run when no
//! file is configured (local mode, tests).
//!
//! The file is re-read when its modification time changes, so a rotated
//! Secret takes effect without restarting agents. A missing or invalid file
//! does not stop the agent: it runs without bursts, says so once in the log
//! (with the remedy) and in `kubepulse_burst_key_state`, and takes the keys
//! up when the file appears or is fixed (the kubelet updates a mounted
//! optional Secret in place).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::label_enum::label_enum;
use crate::proto::bandwidth::{Mac, MAC_LEN};

/// Shortest key accepted, bytes (the HMAC-SHA256 output size).
pub(crate) const MIN_KEY_BYTES: usize = 32;
/// Most keys in a file: the current one and the one being rotated in/out.
pub(crate) const MAX_KEYS: usize = 2;

/// Why no key set could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file does not exist (in a cluster: the Secret is not there).
    #[error("burst key file {path} does not exist")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// The key file exists but could not be read.
    #[error("burst key file {path} is unreadable: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error: part of the message the agent logs (not a
        /// `source`, which a chain would print a second time).
        error: std::io::Error,
    },
    /// A line is not a hex key of at least 32 bytes.
    #[error("burst key file {path}, line {line}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// No key, or more than two.
    #[error("burst key file {path}: {count} keys, expected 1 or 2")]
    Count {
        /// The file.
        path: PathBuf,
        /// Keys found.
        count: usize,
    },
    /// The system random generator failed.
    #[error("no random bytes for a burst key")]
    Random,
}

impl KeyError {
    /// A failed look at `path`: missing, or there but unreadable.
    fn read(path: &Path, error: std::io::Error) -> Self {
        let path = path.to_owned();
        if error.kind() == std::io::ErrorKind::NotFound {
            KeyError::Missing { path }
        } else {
            KeyError::Read { path, error }
        }
    }

    /// The key state this error leaves the agent in.
    pub fn state(&self) -> KeyState {
        match self {
            KeyError::Missing { .. } => KeyState::Missing,
            _ => KeyState::Invalid,
        }
    }
}

label_enum! {
    /// Whether the agent holds a usable burst key set: the `state` label
    /// of `kubepulse_burst_key_state`.
    KeyState {
        /// A valid key set is loaded (from the file, or this run's own key
        /// when no file is configured).
        Loaded => "loaded",
        /// The configured key file does not exist.
        Missing => "missing",
        /// The key file exists but is unreadable or holds no valid key set.
        Invalid => "invalid",
    }
}

/// One to two HMAC-SHA256 keys; the first signs.
pub struct KeySet {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "KeySet({} keys)", self.keys.len())
    }
}

impl KeySet {
    /// Keys from raw bytes (each at least `MIN_KEY_BYTES`).
    pub fn from_bytes(keys: &[&[u8]]) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k))
                .collect(),
        }
    }

    /// Parses a key file's text: one hex key per line; blank lines and
    /// lines starting with `#` are ignored.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyError> {
        let mut raw = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what| KeyError::Parse {
                path: path.to_owned(),
                line: i + 1,
                what,
            };
            let bytes = hex::decode(line).map_err(|_| err("not hex"))?;
            if bytes.len() < MIN_KEY_BYTES {
                return Err(err("shorter than 32 bytes (64 hex digits)"));
            }
            raw.push(bytes);
        }
        if raw.is_empty() || raw.len() > MAX_KEYS {
            return Err(KeyError::Count {
                path: path.to_owned(),
                count: raw.len(),
            });
        }
        let refs: Vec<&[u8]> = raw.iter().map(Vec::as_slice).collect();
        Ok(Self::from_bytes(&refs))
    }

    /// A fresh random key.
    pub fn random() -> Result<Self, KeyError> {
        let mut k = [0u8; MIN_KEY_BYTES];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| KeyError::Random)?;
        Ok(Self::from_bytes(&[&k]))
    }

    /// Whether `tag` is the MAC of `msg` under any of the keys (constant
    /// time per key).
    pub fn verify(&self, msg: &[u8], tag: &[u8]) -> bool {
        self.keys.iter().any(|k| hmac::verify(k, msg, tag).is_ok())
    }
}

impl Mac for KeySet {
    fn sign(&self, msg: &[u8]) -> [u8; MAC_LEN] {
        let mut out = [0u8; MAC_LEN];
        if let Some(k) = self.keys.first() {
            out.copy_from_slice(hmac::sign(k, msg).as_ref());
        }
        out
    }
}

/// The random key of this run, shared by every agent of the process (local
/// mode runs all its agents in one process).
fn run_key() -> Result<Arc<KeySet>, KeyError> {
    static KEY: OnceLock<Arc<KeySet>> = OnceLock::new();
    if let Some(k) = KEY.get() {
        return Ok(k.clone());
    }
    let k = Arc::new(KeySet::random()?);
    Ok(KEY.get_or_init(|| k).clone())
}

/// Namespace and name of the Secret the manifests in `deploy/` mount as
/// the key file (its data key is the file's name), for the remedy the
/// warning gives.
const SECRET_NAMESPACE: &str = "kubepulse";
const SECRET_NAME: &str = "kubepulse-burst-key";

/// What a look at the key file found, as far as the log is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// A valid key set.
    Usable,
    /// No usable key, and why (the error's text).
    Unusable(String),
}

/// What a change of [`Status`] calls for in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Notice {
    /// No usable key, at the first look, after keys, or for another
    /// reason than before: one warning.
    Unusable,
    /// Keys again after none: one info line.
    Usable,
}

/// What to log when the status goes from `before` (`None`: the first look)
/// to `now`. The same problem seen again logs nothing, so the log gets one
/// line per change however often the keys are asked for.
fn notice(before: Option<&Status>, now: &Status) -> Option<Notice> {
    match (before, now) {
        (Some(b), n) if b == n => None,
        (_, Status::Unusable(_)) => Some(Notice::Unusable),
        (Some(Status::Unusable(_)), Status::Usable) => Some(Notice::Usable),
        (None | Some(Status::Usable), Status::Usable) => None,
    }
}

/// The warning for an agent without a usable key: what is wrong, what it
/// means and how to fix it in a cluster.
fn warning(e: &KeyError, path: &Path) -> String {
    // A Secret volume names each file after its data key.
    let key = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("burst.key");
    let create = format!(
        "kubectl -n {SECRET_NAMESPACE} create secret generic {SECRET_NAME} \
         --from-literal={key}=$(openssl rand -hex 32)"
    );
    let fix = match e.state() {
        KeyState::Missing => format!("create the Secret: {create}"),
        _ => {
            format!("replace the Secret: {create} --dry-run=client -o yaml | kubectl replace -f -")
        }
    };
    format!(
        "No burst key: {e}. Bandwidth bursts are off (latency probes keep running) \
         until the file holds 1 or 2 hex keys of at least 32 bytes, one per line; \
         in a cluster {fix} (agents re-read the file, no restart needed)"
    )
}

/// The key file's state between looks.
#[derive(Default)]
struct FileState {
    /// The keys last read and the file's modification time then.
    loaded: Option<(SystemTime, Arc<KeySet>)>,
    /// What the last look found.
    status: Option<Status>,
}

impl FileState {
    /// The keys in `path` now: re-read when its modification time changed.
    fn read(&mut self, path: &Path) -> Result<Arc<KeySet>, KeyError> {
        let mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| KeyError::read(path, e))?;
        if let Some((at, keys)) = &self.loaded {
            if *at == mtime {
                return Ok(keys.clone());
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::read(path, e))?;
        let keys = Arc::new(KeySet::parse(&text, path)?);
        self.loaded = Some((mtime, keys.clone()));
        Ok(keys)
    }

    /// Reads `path` and logs a change of status, once.
    fn look(&mut self, path: &Path) -> Result<Arc<KeySet>, KeyError> {
        let found = self.read(path);
        let status = match &found {
            Ok(_) => Status::Usable,
            Err(e) => {
                // Whatever was cached is not what the file holds now.
                self.loaded = None;
                Status::Unusable(e.to_string())
            }
        };
        match (notice(self.status.as_ref(), &status), &found) {
            (Some(Notice::Unusable), Err(e)) => {
                tracing::warn!(state = %e.state(), "{}", warning(e, path));
            }
            (Some(Notice::Usable), Ok(keys)) => {
                tracing::info!(state = %KeyState::Loaded, keys = keys.keys.len(),
                    "Burst key loaded from {}: bandwidth bursts resume", path.display());
            }
            _ => {}
        }
        self.status = Some(status);
        found
    }
}

/// Where the burst keys come from.
enum Source {
    /// This run's random key (no file configured).
    Run(Arc<KeySet>),
    /// The key file, looked at whenever keys are asked for.
    File {
        path: PathBuf,
        state: Mutex<FileState>,
    },
}

/// The burst keys of an agent. A missing or invalid key file does not stop
/// the agent: it runs without bursts (its probers skip them, its responder
/// refuses them), logs one warning with the remedy, and takes the keys up
/// as soon as the file holds them.
pub struct BurstKeys {
    source: Source,
}

impl BurstKeys {
    /// Keys from `file`, or this run's random key when `None` (an error
    /// only when the system has no random bytes). Looks at the file once
    /// now, so a missing or bad one is logged at start-up.
    pub fn new(file: Option<PathBuf>) -> Result<Self, KeyError> {
        let source = match file {
            None => Source::Run(run_key()?),
            Some(path) => {
                let mut state = FileState::default();
                // Logged inside; the agent starts either way.
                let _ = state.look(&path);
                Source::File {
                    path,
                    state: Mutex::new(state),
                }
            }
        };
        Ok(Self { source })
    }

    fn look(&self) -> Result<Arc<KeySet>, KeyError> {
        match &self.source {
            Source::Run(keys) => Ok(keys.clone()),
            Source::File { path, state } => {
                state.lock().unwrap_or_else(|p| p.into_inner()).look(path)
            }
        }
    }

    /// The keys now, `None` without a usable key (why is logged once per
    /// change). The file is re-read when it changed.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.look().ok()
    }

    /// The key state now (the file is looked at as by [`Self::current`]).
    pub fn state(&self) -> KeyState {
        match self.look() {
            Ok(_) => KeyState::Loaded,
            Err(e) => e.state(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1eff";

    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        let k = KeySet::from_bytes(&[b"Jefe"]);
        let tag = k.sign(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn rotation_accepts_both_keys_and_signs_with_the_first() {
        let p = Path::new("k");
        let old = KeySet::parse(A, p).expect("one key");
        let both = KeySet::parse(&format!("# rotating\n{B}\n\n{A}\n"), p).expect("two keys");
        let new = KeySet::parse(B, p).expect("one key");
        let msg = b"burst";
        assert!(both.verify(msg, &old.sign(msg)));
        assert!(both.verify(msg, &new.sign(msg)));
        assert_eq!(both.sign(msg), new.sign(msg));
        assert!(!old.verify(msg, &new.sign(msg)));
        assert!(!old.verify(b"other", &old.sign(msg)));
        assert!(!old.verify(msg, &[0u8; 5]));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let p = Path::new("k");
        for (text, want) in [
            ("", "0 keys"),
            ("zz", "not hex"),
            ("0011", "shorter than 32 bytes"),
            (&*format!("{A}\n{A}\n{B}"), "3 keys"),
        ] {
            let e = KeySet::parse(text, p).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_file_is_reread_when_it_changes_and_the_run_key_is_shared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, A).expect("write");
        let keys = BurstKeys::new(Some(path.clone())).expect("loads");
        let msg = b"m";
        let a = KeySet::parse(A, &path).expect("a");
        assert_eq!(keys.current().expect("keys").sign(msg), a.sign(msg));
        std::fs::write(&path, B).expect("write");
        // Make the change visible even on a coarse-mtime filesystem.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(later))
            .expect("touch");
        let b = KeySet::parse(B, &path).expect("b");
        assert_eq!(keys.current().expect("keys").sign(msg), b.sign(msg));
        let r1 = BurstKeys::new(None).expect("run key");
        let r2 = BurstKeys::new(None).expect("run key");
        assert_eq!(
            r1.current().expect("k").sign(msg),
            r2.current().expect("k").sign(msg)
        );
    }

    #[test]
    fn each_change_of_status_is_noticed_once() {
        let missing = Status::Unusable("burst key file k does not exist".into());
        let invalid = Status::Unusable("burst key file k, line 1: not hex".into());
        let looks = [
            &missing,
            &missing,
            &missing,
            &invalid,
            &invalid,
            &Status::Usable,
            &Status::Usable,
            &missing,
        ];
        let mut before = None;
        let mut got = Vec::new();
        for now in looks {
            got.extend(notice(before, now));
            before = Some(now);
        }
        use Notice::{Unusable, Usable};
        assert_eq!(got, [Unusable, Unusable, Usable, Unusable]);
        // Keys from the start: nothing to say.
        assert_eq!(notice(None, &Status::Usable), None);
        assert_eq!(notice(Some(&Status::Usable), &Status::Usable), None);
    }

    #[test]
    fn the_warning_names_the_file_the_problem_and_the_remedy() {
        let path = Path::new("/var/run/secrets/kubepulse/burst.key");
        let create = "kubectl -n kubepulse create secret generic kubepulse-burst-key \
                      --from-literal=burst.key=$(openssl rand -hex 32)";
        let w = warning(
            &KeyError::Missing {
                path: path.to_owned(),
            },
            path,
        );
        assert!(
            w.starts_with("No burst key: burst key file /var/run/secrets/kubepulse/burst.key does not exist. Bandwidth bursts are off"),
            "{w}"
        );
        assert!(w.contains(&format!("create the Secret: {create} (")), "{w}");
        let bad = KeySet::parse(&format!("{A}\nzz\n"), path).expect_err("line 2");
        assert_eq!(bad.state(), KeyState::Invalid);
        let w = warning(&bad, path);
        assert!(w.contains("burst.key, line 2: not hex."), "{w}");
        assert!(
            w.contains(&format!(
                "replace the Secret: {create} --dry-run=client -o yaml | kubectl replace -f -"
            )),
            "{w}"
        );
        // The data key follows the configured file's name.
        let w = warning(
            &KeyError::Missing {
                path: "/keys/hmac".into(),
            },
            Path::new("/keys/hmac"),
        );
        assert!(w.contains("--from-literal=hmac=$("), "{w}");
    }

    #[test]
    fn an_agent_without_a_key_file_gets_the_keys_when_it_appears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("burst.key");
        let keys = BurstKeys::new(Some(path.clone())).expect("starts without the file");
        assert_eq!(keys.state(), KeyState::Missing);
        assert!(keys.current().is_none());
        std::fs::write(&path, "zz\n").expect("write");
        assert_eq!(keys.state(), KeyState::Invalid);
        assert!(keys.current().is_none());
        std::fs::write(&path, format!("{A}\n")).expect("write");
        assert_eq!(keys.state(), KeyState::Loaded);
        let a = KeySet::parse(A, &path).expect("a");
        assert_eq!(keys.current().expect("keys").sign(b"m"), a.sign(b"m"));
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(keys.state(), KeyState::Missing);
        assert!(keys.current().is_none());
        // There but unreadable (a directory): invalid, not missing.
        std::fs::create_dir(&path).expect("mkdir");
        assert_eq!(keys.state(), KeyState::Invalid);
        assert_eq!(
            BurstKeys::new(None).expect("run key").state(),
            KeyState::Loaded
        );
    }
}
