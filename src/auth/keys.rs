//! Burst keys: read from a file mounted from a Secret (one hex key per
//! line; the first signs, every one verifies, so a rotation can add the new
//! key before any agent signs with it), or generated once per run when no
//! file is configured (local mode, tests).
//!
//! The file is re-read when its modification time changes, so a rotated
//! Secret takes effect without restarting agents.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::proto::bandwidth::{Mac, MAC_LEN};

/// Shortest key accepted, bytes (the HMAC-SHA256 output size).
pub(crate) const MIN_KEY_BYTES: usize = 32;
/// Most keys in a file: the current one and the one being rotated in/out.
pub(crate) const MAX_KEYS: usize = 2;

/// Why no key set could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("reading burst key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
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

/// Where the burst keys come from.
pub struct BurstKeys {
    file: Option<PathBuf>,
    /// The last file read: its modification time and keys.
    cached: Mutex<Option<(SystemTime, Arc<KeySet>)>>,
}

impl BurstKeys {
    /// Keys from `file`, or this run's random key when `None`. Reads the
    /// file once now, so a bad file is an error at start-up.
    pub fn new(file: Option<PathBuf>) -> Result<Self, KeyError> {
        let keys = Self {
            file,
            cached: Mutex::new(None),
        };
        keys.current()?;
        Ok(keys)
    }

    /// The keys now: the file is re-read when it changed.
    pub fn current(&self) -> Result<Arc<KeySet>, KeyError> {
        let Some(path) = &self.file else {
            return run_key();
        };
        let read_err = |source| KeyError::Read {
            path: path.clone(),
            source,
        };
        let mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(read_err)?;
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, keys)) = cached.as_ref() {
            if *at == mtime {
                return Ok(keys.clone());
            }
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let keys = Arc::new(KeySet::parse(&text, path)?);
        *cached = Some((mtime, keys.clone()));
        Ok(keys)
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
        assert!(BurstKeys::new(Some(dir.path().join("missing"))).is_err());
        let r1 = BurstKeys::new(None).expect("run key");
        let r2 = BurstKeys::new(None).expect("run key");
        assert_eq!(
            r1.current().expect("k").sign(msg),
            r2.current().expect("k").sign(msg)
        );
    }
}
