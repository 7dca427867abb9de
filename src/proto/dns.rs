//! DNS names and resolver limits: what the settings check, the DNS probe
//! and the series budget agree on, with `hickory-proto` for the names.

use hickory_proto::rr::Name;

/// Most nameservers queried: glibc's resolver uses the first three
/// (MAXNS), so a pod never asks a fourth.
pub(crate) const MAX_NAMESERVERS: usize = 3;

/// A name that cannot be queried.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name:?} is not a DNS name: {reason}")]
pub(crate) struct BadName {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses `name` as a fully qualified name (a trailing dot is optional):
/// the probe asks exactly this name, without walking the search list, so
/// one lookup is one exchange.
pub(crate) fn query_name(name: &str) -> Result<Name, BadName> {
    let bad = |reason: &str| BadName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(bad("must have 1 to 253 characters"));
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("every label must have 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("only letters, digits, '-' and '_' are allowed"));
        }
    }
    let mut n = Name::from_ascii(trimmed).map_err(|e| bad(&e.to_string()))?;
    n.set_fqdn(true);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(query_name("kubernetes.default.svc.cluster.local.").is_ok());
        assert!(query_name("_dns._udp.example").is_ok());
        for bad in ["", ".", "a..b", "has space.example", "x/y", &"a".repeat(64)] {
            assert!(query_name(bad).is_err(), "{bad:?}");
        }
    }
}
