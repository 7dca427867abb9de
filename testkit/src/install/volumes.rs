//! Volume contents as the kubelet writes them: ConfigMap and Secret keys
//! (with `items`, modes), the projected service account token, CA and
//! namespace, through the kubelet's atomic writer layout (files are
//! symlinks through `..data` to a timestamped directory, swapped in one
//! rename when the contents change).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use base64::Engine;
use serde_json::Value;

/// Files of a volume: relative path → (contents, mode).
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// The keys of a ConfigMap (`data` and `binaryData`) or a Secret
/// (`data`, base64).
pub fn keys(object: &Value, secret: bool) -> BTreeMap<String, Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = BTreeMap::new();
    for (k, v) in object["data"].as_object().into_iter().flatten() {
        let s = v.as_str().unwrap_or("");
        let bytes = if secret {
            b64.decode(s).unwrap_or_else(|_| s.as_bytes().to_vec())
        } else {
            s.as_bytes().to_vec()
        };
        out.insert(k.clone(), bytes);
    }
    for (k, v) in object["binaryData"].as_object().into_iter().flatten() {
        if let Ok(b) = b64.decode(v.as_str().unwrap_or("")) {
            out.insert(k.clone(), b);
        }
    }
    out
}

/// The files of a ConfigMap or Secret volume: every key at its own name,
/// or only the `items` (key → path, optional mode); `Err(key)` when an
/// item names a missing key.
pub fn select(
    keys: &BTreeMap<String, Vec<u8>>,
    items: &[(String, String, Option<u32>)],
    mode: u32,
) -> Result<Files, String> {
    if items.is_empty() {
        return Ok(keys
            .iter()
            .map(|(k, v)| (k.clone(), (v.clone(), mode)))
            .collect());
    }
    items
        .iter()
        .map(|(k, path, m)| {
            let v = keys.get(k).ok_or_else(|| k.clone())?;
            Ok((path.clone(), (v.clone(), m.unwrap_or(mode))))
        })
        .collect()
}

/// Writes `files` into `dir` with the atomic writer's layout; returns
/// whether anything changed.
pub fn write_atomic(dir: &Path, files: &Files, stamp: u64) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data = dir.join("..data");
    if let Ok(current) = std::fs::read_link(&data) {
        if read_tree(&dir.join(&current))? == *files {
            return Ok(false);
        }
    }
    let ts = format!("..{stamp}");
    let target = dir.join(&ts);
    std::fs::create_dir_all(&target)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    for (path, (bytes, mode)) in files {
        let p = target.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&ts, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    // Top-level names point through ..data; stale ones go.
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(String::from))
        .collect();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(dir.join(&name));
        }
    }
    for t in &tops {
        let link = dir.join(t);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{t}"), &link)?;
        }
    }
    if let Some(old) = old {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn read_tree(root: &Path) -> io::Result<Files> {
    let mut out = Files::new();
    fn walk(root: &Path, dir: &Path, out: &mut Files) -> io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                let mode = e.metadata()?.permissions().mode() & 0o7777;
                out.insert(rel, (std::fs::read(&p)?, mode));
            }
        }
        Ok(())
    }
    walk(root, root, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_items_and_atomic_swaps() {
        let secret = json!({"data": {"burst.key": "YWJj", "other": "eHl6"}});
        let k = keys(&secret, true);
        assert_eq!(k["burst.key"], b"abc");
        let all = select(&k, &[], 0o644).expect("all keys");
        assert_eq!(all.len(), 2);
        let one =
            select(&k, &[("other".into(), "sub/o".into(), Some(0o400))], 0o644).expect("item");
        assert_eq!(one["sub/o"], (b"xyz".to_vec(), 0o400));
        assert_eq!(
            select(&k, &[("nope".into(), "x".into(), None)], 0o644),
            Err("nope".into())
        );

        let dir = tempfile::tempdir().expect("tempdir");
        assert!(write_atomic(dir.path(), &all, 1).expect("write"));
        assert!(!write_atomic(dir.path(), &all, 2).expect("same"));
        assert_eq!(
            std::fs::read(dir.path().join("burst.key")).expect("read"),
            b"abc"
        );
        assert!(std::fs::symlink_metadata(dir.path().join("burst.key"))
            .expect("meta")
            .file_type()
            .is_symlink());
        let mut changed = all.clone();
        changed.remove("other");
        changed.insert("burst.key".into(), (b"new".to_vec(), 0o644));
        assert!(write_atomic(dir.path(), &changed, 3).expect("swap"));
        assert_eq!(
            std::fs::read(dir.path().join("burst.key")).expect("read"),
            b"new"
        );
        assert!(!dir.path().join("other").exists());
        assert!(
            !dir.path().join("..1").exists(),
            "the old version is removed"
        );
    }
}
