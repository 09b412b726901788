//! String comparisons with optional ASCII case folding, done in place: policies compare
//! strings on every request, so no folded copies are made.

/// Whether `a` equals `b`.
pub(crate) fn eq(a: &str, b: &str, ignore_case: bool) -> bool {
    bytes_eq(a.as_bytes(), b.as_bytes(), ignore_case)
}

/// Whether `value` starts with `prefix`.
pub(crate) fn starts_with(value: &str, prefix: &str, ignore_case: bool) -> bool {
    let (v, p) = (value.as_bytes(), prefix.as_bytes());
    v.len() >= p.len() && bytes_eq(&v[..p.len()], p, ignore_case)
}

/// Whether `value` ends with `suffix`.
pub(crate) fn ends_with(value: &str, suffix: &str, ignore_case: bool) -> bool {
    let (v, s) = (value.as_bytes(), suffix.as_bytes());
    v.len() >= s.len() && bytes_eq(&v[v.len() - s.len()..], s, ignore_case)
}

/// Whether `value` contains `needle`.
pub(crate) fn contains(value: &str, needle: &str, ignore_case: bool) -> bool {
    if !ignore_case {
        return value.contains(needle);
    }
    let n = needle.as_bytes();
    n.is_empty()
        || value
            .as_bytes()
            .windows(n.len())
            .any(|w| w.eq_ignore_ascii_case(n))
}

fn bytes_eq(a: &[u8], b: &[u8], ignore_case: bool) -> bool {
    if ignore_case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_with_and_without_folding() {
        assert!(eq("GET", "GET", false) && !eq("GET", "get", false) && eq("GET", "get", true));
        assert!(starts_with("/API/v1", "/api", true) && !starts_with("/API/v1", "/api", false));
        assert!(!starts_with("/a", "/abc", true));
        assert!(ends_with("x.EXAMPLE.com", ".example.com", true));
        assert!(!ends_with("x.EXAMPLE.com", ".example.com", false));
        assert!(!ends_with("com", ".example.com", true));
        assert!(contains("aBc", "bc", true) && !contains("aBc", "bc", false));
        assert!(contains("abc", "", true) && !contains("ab", "abc", true));
        // Multi-byte text: bytes compare, nothing is split or folded beyond ASCII.
        assert!(starts_with("ñandú", "ñan", false) && !eq("Ñ", "ñ", true));
        assert!(!contains("préfixe", "ÉF", false) && contains("prÉfixe", "ÉF", true));
    }
}
