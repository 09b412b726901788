//! Envoy's `uri_template` path matcher (`UriTemplateMatchConfig.path_template`).
//!
//! A template is `/` followed by `/`-separated segments. A segment is a literal of path
//! characters (RFC 3986 pchar minus `*` and `=`: unreserved, `%`, `!$&'()+,;`, `:@`), the
//! operator `*` (one segment: one or more path characters), the operator `**` (zero or more
//! path characters or `/`; no operator may follow it), or a variable `{name}` /
//! `{name=ops/and/literals}` (captures are not used by RBAC). A literal may directly follow
//! the last segment as a suffix (`/**.mpd`). The template is matched against the whole path
//! without its query and fragment.

use regex::Regex;

const PCHAR: &str = r"a-zA-Z0-9\-._~%!$&'()+,;:@";

/// A compiled path template.
#[derive(Debug, Clone)]
pub struct UriTemplate {
    template: String,
    regex: Regex,
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    One,
    Many,
}

fn op_regex(op: Op) -> String {
    match op {
        Op::One => format!("[{PCHAR}]+"),
        Op::Many => format!("[{PCHAR}/]*"),
    }
}

fn literal(s: &str, t: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~%!$&'()+,;:@".contains(c));
    if !valid {
        return Err(format!("path template {t:?}: invalid literal {s:?}"));
    }
    Ok(regex::escape(s))
}

/// Parses one operator at the start of `s`; returns it and the rest.
fn operator(s: &str) -> Option<(Op, &str)> {
    if let Some(rest) = s.strip_prefix("**") {
        Some((Op::Many, rest))
    } else {
        s.strip_prefix('*').map(|rest| (Op::One, rest))
    }
}

/// One `{name}` or `{name=ops/and/literals}` variable (the part after `{`): its regex
/// (a capture group), the operators it holds, and the text after its `}`.
fn variable<'a>(rest: &'a str, t: &str, ops: &mut Vec<Op>) -> Result<(String, &'a str), String> {
    let close = rest
        .find('}')
        .ok_or_else(|| format!("path template {t:?}: unmatched '{{'"))?;
    let body = &rest[1..close];
    let (name, matcher) = match body.split_once('=') {
        Some((n, m)) => (n, Some(m)),
        None => (body, None),
    };
    let name_ok = name.len() <= 16
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !name_ok {
        return Err(format!(
            "path template {t:?}: invalid variable name {name:?}"
        ));
    }
    let re = match matcher {
        None => {
            ops.push(Op::One);
            op_regex(Op::One)
        }
        Some("") => return Err(format!("path template {t:?}: empty variable match")),
        Some(m) => {
            let mut pieces = Vec::new();
            for piece in m.split('/') {
                match operator(piece) {
                    Some((op, "")) => {
                        ops.push(op);
                        pieces.push(op_regex(op));
                    }
                    _ => pieces.push(literal(piece, t)?),
                }
            }
            pieces.join("/")
        }
    };
    Ok((format!("({re})"), &rest[close + 1..]))
}

/// One segment at the start of `rest` (an operator, a variable or a literal): its regex
/// and the text after it.
fn segment<'a>(rest: &'a str, t: &str, ops: &mut Vec<Op>) -> Result<(String, &'a str), String> {
    if let Some((op, after)) = operator(rest) {
        ops.push(op);
        Ok((op_regex(op), after))
    } else if rest.starts_with('{') {
        variable(rest, t, ops)
    } else {
        let end = rest.find('/').unwrap_or(rest.len());
        Ok((literal(&rest[..end], t)?, &rest[end..]))
    }
}

impl UriTemplate {
    /// Compiles `template`; an invalid one is an error naming it.
    pub fn new(template: &str) -> Result<Self, String> {
        let t = template;
        if !t.starts_with('/') || !t.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!(
                "path template {t:?}: must start with '/' and contain only printable ASCII"
            ));
        }
        let mut rest = &t[1..];
        let mut parts: Vec<String> = Vec::new();
        let mut suffix = String::new();
        let mut ops: Vec<Op> = Vec::new();
        while !rest.is_empty() {
            let (re, after) = segment(rest, t, &mut ops)?;
            parts.push(re);
            rest = after;
            if rest.is_empty() {
                break;
            }
            if rest == "/" {
                parts.push(String::new());
                break;
            }
            if let Some(r) = rest.strip_prefix('/') {
                rest = r;
            } else {
                if rest.contains('/') {
                    return Err(format!(
                        "path template {t:?}: text after an operator must be a final suffix"
                    ));
                }
                suffix = literal(rest, t)?;
                break;
            }
        }
        if let Some(i) = ops.iter().position(|o| *o == Op::Many) {
            if i + 1 < ops.len() {
                return Err(format!("path template {t:?}: no operator may follow '**'"));
            }
        }
        let re = format!("^/{}{}$", parts.join("/"), suffix);
        let regex = Regex::new(&re).map_err(|e| format!("path template {t:?}: {e}"))?;
        Ok(Self {
            template: t.to_string(),
            regex,
        })
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.template
    }

    /// Whether `path` (query and fragment are ignored) matches.
    pub fn matches(&self, path: &str) -> bool {
        let end = path.find(['?', '#']).unwrap_or(path.len());
        self.regex.is_match(&path[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_segment() {
        let t = UriTemplate::new("/path/template/*").unwrap();
        assert!(t.matches("/path/template/x"));
        assert!(t.matches("/path/template/x?q=1"));
        assert!(!t.matches("/path/template/x/y"));
        assert!(!t.matches("/path/template/"));
        assert!(
            !t.matches("/path/template/a b"),
            "space is not a path character"
        );
    }

    #[test]
    fn many_segments() {
        let t = UriTemplate::new("/**/path/template").unwrap();
        assert!(t.matches("/a/b/path/template"));
        assert!(t.matches("/a/path/template"));
        assert!(t.matches("//path/template"), "'**' matches zero characters");
        assert!(!t.matches("/path/template"));
        let s = UriTemplate::new("/**.mpd").unwrap();
        assert!(s.matches("/content/123/dash/manifest.mpd"));
        assert!(!s.matches("/content/manifest.mp4"));
    }

    #[test]
    fn variables_and_errors() {
        let v = UriTemplate::new("/api/{version}/users/{rest=*/x/**}").unwrap();
        assert!(v.matches("/api/v1/users/a/x/b/c"));
        assert!(!v.matches("/api/v1/users/a/y/b"));
        assert!(UriTemplate::new("/**/*").is_err());
        assert!(UriTemplate::new("path").is_err());
        assert!(UriTemplate::new("/a b").is_err());
        assert!(UriTemplate::new("/{1x}").is_err());
        assert!(UriTemplate::new("/a/").unwrap().matches("/a/"));
    }
}
