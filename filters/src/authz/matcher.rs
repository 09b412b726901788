//! Istio's value forms: exact, prefix `x*`, suffix `*x`, presence `*`; path templates
//! `{*}` (one segment) and `{**}` (one or more segments).

use regex::Regex;
use serde::{Serialize, Serializer};

use crate::ascii;

/// A string value in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Equal.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Ends with.
    Suffix(String),
    /// Present (any value).
    Presence,
}

impl Serialize for ValueMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&match self {
            ValueMatch::Exact(v) => v.clone(),
            ValueMatch::Prefix(v) => format!("{v}*"),
            ValueMatch::Suffix(v) => format!("*{v}"),
            ValueMatch::Presence => "*".into(),
        })
    }
}

impl ValueMatch {
    /// Parses Istio's notation.
    pub fn parse(v: &str) -> Self {
        if v == "*" {
            ValueMatch::Presence
        } else if let Some(p) = v.strip_suffix('*') {
            ValueMatch::Prefix(p.to_string())
        } else if let Some(s) = v.strip_prefix('*') {
            ValueMatch::Suffix(s.to_string())
        } else {
            ValueMatch::Exact(v.to_string())
        }
    }

    /// Whether `value` matches; `ignore_case` (ASCII) for hosts. Allocation-free: it runs
    /// for every rule value of every request.
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            ValueMatch::Exact(p) => ascii::eq(value, p, ignore_case),
            ValueMatch::Prefix(p) => ascii::starts_with(value, p, ignore_case),
            ValueMatch::Suffix(s) => ascii::ends_with(value, s, ignore_case),
            ValueMatch::Presence => !value.is_empty(),
        }
    }
}

/// A path in a policy: a value form, or a template with `{*}` / `{**}`.
#[derive(Debug, Clone)]
pub enum PathPattern {
    /// Exact, prefix, suffix or presence.
    Value(ValueMatch),
    /// A URI template.
    Template(String, Regex),
}

impl Serialize for PathPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PathPattern::Value(v) => v.serialize(s),
            PathPattern::Template(t, _) => s.serialize_str(t),
        }
    }
}

impl PathPattern {
    /// Parses a policy path; templates are recognised by `{*}` or `{**}`.
    pub fn parse(v: &str) -> Result<Self, String> {
        if !(v.contains("{*}") || v.contains("{**}")) {
            return Ok(PathPattern::Value(ValueMatch::parse(v)));
        }
        let mut re = String::from("^");
        for (i, seg) in v.split('/').enumerate() {
            if i > 0 {
                re.push('/');
            }
            match seg {
                "{*}" => re.push_str("[^/]+"),
                "{**}" => re.push_str(".+"),
                s if s.contains('{') || s.contains('}') => {
                    return Err(format!(
                        "invalid path template {v:?}: operators must be whole segments"
                    ))
                }
                s => re.push_str(&regex::escape(s)),
            }
        }
        re.push('$');
        Regex::new(&re)
            .map(|r| PathPattern::Template(v.to_string(), r))
            .map_err(|e| format!("invalid path template {v:?}: {e}"))
    }

    /// Whether the (normalized, query-less) `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Value(v) => v.matches(path, false),
            PathPattern::Template(_, r) => r.is_match(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_forms() {
        assert!(ValueMatch::parse("abc").matches("abc", false));
        assert!(!ValueMatch::parse("abc").matches("abcd", false));
        assert!(ValueMatch::parse("ab*").matches("abcd", false));
        assert!(ValueMatch::parse("*cd").matches("abcd", false));
        assert!(ValueMatch::parse("*").matches("x", false));
        assert!(!ValueMatch::parse("*").matches("", false));
        assert!(ValueMatch::parse("Example.COM").matches("example.com", true));
        assert!(!ValueMatch::parse("Example.COM").matches("example.com", false));
        assert!(ValueMatch::parse("*.Example.com").matches("api.EXAMPLE.com", true));
        assert!(ValueMatch::parse("API.*").matches("api.example.com", true));
        assert!(!ValueMatch::parse("api.*").matches("API.example.com", false));
        assert!(!ValueMatch::parse("abcd*").matches("abc", true));
        assert!(!ValueMatch::parse("*abcd").matches("bcd", true));
        // Multi-byte values compare as bytes, never split a character.
        assert!(ValueMatch::parse("*é").matches("café", false));
        assert!(!ValueMatch::parse("é*").matches("e", false));
    }

    #[test]
    fn templates() {
        let one = PathPattern::parse("/path/template/{*}").unwrap();
        assert!(one.matches("/path/template/x"));
        assert!(!one.matches("/path/template/x/y"));
        assert!(!one.matches("/path/template/"));
        let many = PathPattern::parse("/{**}/path/template").unwrap();
        assert!(many.matches("/a/b/path/template"));
        assert!(many.matches("/a/path/template"));
        assert!(!many.matches("/path/template"));
        assert!(PathPattern::parse("/a{*}").is_err());
    }
}
