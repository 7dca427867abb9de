//! The pod startup probe's node rotation (pure): each probe goes to the
//! next node in name order.

/// Round-robin choice of the next probe target: the first node after
/// `last` in name order, wrapping, so joins and leaves keep the rotation.
pub(crate) fn next_target<'a>(
    sorted_nodes: &'a [String],
    last: Option<&str>,
) -> Option<&'a String> {
    let after = last.and_then(|l| sorted_nodes.iter().find(|n| n.as_str() > l));
    after.or_else(|| sorted_nodes.first())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin() {
        let n: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(next_target(&n, None).map(String::as_str), Some("a"));
        assert_eq!(next_target(&n, Some("a")).map(String::as_str), Some("b"));
        assert_eq!(next_target(&n, Some("c")).map(String::as_str), Some("a"));
        // "b" left: after "b" comes "c".
        let m: Vec<String> = ["a", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(next_target(&m, Some("b")).map(String::as_str), Some("c"));
        assert_eq!(next_target(&[], Some("b")), None);
    }
}
