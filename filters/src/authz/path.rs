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
    /// Decoding made a new escape that a second decoding would turn into a character
    /// policies never saw (`/%%36%31dmin` becomes `/%61dmin`, which an application that
    /// decodes once reads as `/admin`).
    #[error("path is percent-encoded twice")]
    DoubleEncoded,
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
    // Where the escapes the path had, and keeps, start in `out`.
    let mut kept: Vec<usize> = Vec::new();
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
                    kept.push(out.len());
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
    // An escape in the output that is not one the path had was made by decoding (`%%36%31`
    // becomes `%61`): refuse it, as authorization would otherwise match another path than
    // an application that decodes once reads. Envoy forwards such paths; this is stricter
    // on purpose.
    let created = out.windows(3).enumerate().any(|(at, w)| {
        w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some() && !kept.contains(&at)
    });
    if created {
        return Err(InvalidPath::DoubleEncoded);
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
    fn escapes_made_by_decoding_are_refused() {
        for (path, level) in [
            ("/%%36%31dmin", Normalization::Base),
            ("/%%30%30", Normalization::Base),
            ("/a%%32%46b", Normalization::DecodeAndMergeSlashes),
        ] {
            assert_eq!(
                normalize(path, level),
                Err(InvalidPath::DoubleEncoded),
                "{path}"
            );
        }
        // Any escape made by decoding, even of a character that stays encoded.
        assert_eq!(
            normalize("/a%%32%46b", Normalization::Base),
            Err(InvalidPath::DoubleEncoded)
        );
        assert_eq!(
            normalize("/x%%41a", Normalization::Base),
            Err(InvalidPath::DoubleEncoded)
        );
        // Escapes the path had are kept, and a literal `%25` is not an escape.
        assert_eq!(
            normalize("/100%2561", Normalization::Base).unwrap(),
            "/100%2561"
        );
        assert_eq!(normalize("/a%3fb", Normalization::Base).unwrap(), "/a%3Fb");
    }

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
