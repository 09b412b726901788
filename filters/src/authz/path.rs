//! Path normalization before authorization (Istio's `pathNormalization`). The normalized
//! path is what policies match and what goes upstream.

/// Istio's normalization levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalization {
    /// No normalization at all.
    None,
    /// RFC 3986: decode percent-encoded unreserved characters, backslash to slash, resolve
    /// `.` and `..` segments; `%00` is rejected.
    #[default]
    Base,
    /// `Base`, then merge repeated slashes.
    MergeSlashes,
    /// `MergeSlashes`, after decoding `%2F` and `%5C` too.
    DecodeAndMergeSlashes,
}

/// Why a path cannot be normalized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPath {
    /// The path contains an encoded NUL.
    #[error("path contains %00")]
    Nul,
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Whether `path` is already normalized at `level`: no escapes, backslashes or dot
/// segments (and no repeated slashes where those merge). Most paths are, and skip the
/// rewrite.
pub fn is_normal(path: &str, level: Normalization) -> bool {
    let merge = matches!(
        level,
        Normalization::MergeSlashes | Normalization::DecodeAndMergeSlashes
    );
    let bytes = path.as_bytes();
    level == Normalization::None
        || (bytes.first() == Some(&b'/')
            && !bytes.iter().any(|b| matches!(b, b'%' | b'\\'))
            && !bytes
                .windows(2)
                .any(|w| w == b"/." || (merge && w == b"//")))
}

/// Normalizes `path` (no query) at `level`.
pub fn normalize(path: &str, level: Normalization) -> Result<String, InvalidPath> {
    if level == Normalization::None {
        return Ok(path.to_string());
    }
    let bytes = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = h * 16 + l;
                if c == 0 {
                    return Err(InvalidPath::Nul);
                }
                let slash = matches!(c, b'/' | b'\\');
                if unreserved(c) || (slash && level == Normalization::DecodeAndMergeSlashes) {
                    out.push(if c == b'\\' { b'/' } else { c });
                } else {
                    // Keep the escape, hex upper-cased (RFC 3986 §6.2.2.1).
                    out.push(b'%');
                    out.push(bytes[i + 1].to_ascii_uppercase());
                    out.push(bytes[i + 2].to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(if b == b'\\' { b'/' } else { b });
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&out).into_owned();
    let mut normalized = remove_dot_segments(&decoded);
    if matches!(
        level,
        Normalization::MergeSlashes | Normalization::DecodeAndMergeSlashes
    ) {
        let mut merged = String::with_capacity(normalized.len());
        for c in normalized.chars() {
            if !(c == '/' && merged.ends_with('/')) {
                merged.push(c);
            }
        }
        normalized = merged;
    }
    Ok(normalized)
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let absolute = path.starts_with('/');
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        if i == 0 && absolute {
            continue;
        }
        match *seg {
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut s = String::new();
    if absolute {
        s.push('/');
    }
    s.push_str(&out.join("/"));
    if trailing && !s.ends_with('/') {
        s.push('/');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_normalization() {
        let n = |p| normalize(p, Normalization::Base).unwrap();
        assert_eq!(n("/a/b"), "/a/b");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/a/../b"), "/b");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/../a"), "/a");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a\\b"), "/a/b");
        assert_eq!(n("/a//b"), "/a//b");
        assert_eq!(n("/%2e%2e/admin"), "/admin");
        assert_eq!(
            normalize("/a%00b", Normalization::Base),
            Err(InvalidPath::Nul)
        );
    }

    #[test]
    fn normal_paths_are_recognised() {
        for level in [
            Normalization::Base,
            Normalization::MergeSlashes,
            Normalization::DecodeAndMergeSlashes,
        ] {
            // Conservative: a path it calls normal must normalize to itself.
            for path in [
                "/", "/a/b", "/a/./b", "/a/../b", "/a/b/..", "/%61", "/a\\b", "/a//b", "/a.b/c.",
                "/.hidden", "//", "a/b",
            ] {
                if is_normal(path, level) {
                    assert_eq!(normalize(path, level).unwrap(), path, "{level:?}");
                }
            }
            for path in ["/", "/a/b", "/api/v1/items", "/a.b/c.", "/a-b_c~d"] {
                assert!(is_normal(path, level), "{path} at {level:?}");
            }
            for path in ["/a/./b", "/a/../b", "/%61", "/a\\b"] {
                assert!(!is_normal(path, level), "{path} at {level:?}");
            }
        }
        assert!(is_normal("/a//b", Normalization::Base));
        assert!(!is_normal("/a//b", Normalization::MergeSlashes));
        assert!(is_normal("/a/../b", Normalization::None));
    }

    #[test]
    fn slash_options() {
        assert_eq!(
            normalize("/a//b", Normalization::MergeSlashes).unwrap(),
            "/a/b"
        );
        assert_eq!(
            normalize("/a%2F%2fb", Normalization::MergeSlashes).unwrap(),
            "/a%2F%2Fb"
        );
        assert_eq!(
            normalize("/a%2F%2fb", Normalization::DecodeAndMergeSlashes).unwrap(),
            "/a/b"
        );
        assert_eq!(
            normalize("/a/../b", Normalization::None).unwrap(),
            "/a/../b"
        );
    }
}
