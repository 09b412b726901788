//! Envoy's `StringMatcher` (exact, prefix, suffix, contains, `safe_regex`; `ignore_case`)
//! and RE2 regexes compiled once, matched in full as Envoy's `safe_regex` is.

use std::fmt;

use regex::Regex;
use serde::{Deserialize, Deserializer};

use crate::ascii;

/// A regex from `safe_regex` (`{google_re2: {}, regex: "..."}`), compiled once and always
/// matched against the whole value (Envoy's `safe_regex` is a full match).
#[derive(Clone)]
pub struct SafeRegex {
    source: String,
    full: Regex,
}

impl SafeRegex {
    /// Compiles `pattern` (RE2 syntax) anchored at both ends.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let full = Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("invalid regex {pattern:?}: {e}"))?;
        Ok(Self {
            source: pattern.to_string(),
            full,
        })
    }

    /// The pattern as configured.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.full.is_match(value)
    }
}

impl fmt::Debug for SafeRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafeRegex({:?})", self.source)
    }
}

/// `envoy.type.matcher.v3.RegexMatcher` in proto-JSON.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRegex {
    #[serde(default)]
    google_re2: Option<serde::de::IgnoredAny>,
    regex: String,
}

impl<'de> Deserialize<'de> for SafeRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawRegex::deserialize(d)?;
        let _ = raw.google_re2;
        SafeRegex::new(&raw.regex).map_err(serde::de::Error::custom)
    }
}

/// What a [`StringMatcher`] compares with.
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// Equal.
    Exact(String),
    /// Starts with (non-empty).
    Prefix(String),
    /// Ends with (non-empty).
    Suffix(String),
    /// Contains (non-empty).
    Contains(String),
    /// Full regex match; `ignore_case` does not apply.
    Regex(SafeRegex),
}

/// `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub struct StringMatcher {
    /// The comparison.
    pub kind: StringMatch,
    /// ASCII case-insensitive (not for regexes), as Envoy's `ignore_case`.
    pub ignore_case: bool,
}

impl StringMatcher {
    /// A matcher from its parts.
    pub fn new(kind: StringMatch, ignore_case: bool) -> Self {
        Self { kind, ignore_case }
    }

    /// An exact, case-sensitive matcher.
    pub fn exact(v: &str) -> Self {
        Self::new(StringMatch::Exact(v.to_string()), false)
    }

    /// Whether `value` matches. Allocation-free: it runs for every matcher of every
    /// request.
    pub fn matches(&self, value: &str) -> bool {
        let ic = self.ignore_case;
        match &self.kind {
            StringMatch::Exact(e) => ascii::eq(value, e, ic),
            StringMatch::Prefix(p) => ascii::starts_with(value, p, ic),
            StringMatch::Suffix(s) => ascii::ends_with(value, s, ic),
            StringMatch::Contains(c) => ascii::contains(value, c, ic),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// `StringMatcher` in proto-JSON: one of the match fields plus `ignoreCase`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawStringMatcher {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    contains: Option<String>,
    #[serde(default)]
    safe_regex: Option<SafeRegex>,
    #[serde(default)]
    ignore_case: bool,
}

impl TryFrom<RawStringMatcher> for StringMatcher {
    type Error = String;

    fn try_from(r: RawStringMatcher) -> Result<Self, String> {
        let non_empty = |what: &str, v: String| {
            if v.is_empty() {
                Err(format!("{what}: must not be empty"))
            } else {
                Ok(v)
            }
        };
        let mut kinds = Vec::new();
        if let Some(v) = r.exact {
            kinds.push(StringMatch::Exact(v));
        }
        if let Some(v) = r.prefix {
            kinds.push(StringMatch::Prefix(non_empty("prefix", v)?));
        }
        if let Some(v) = r.suffix {
            kinds.push(StringMatch::Suffix(non_empty("suffix", v)?));
        }
        if let Some(v) = r.contains {
            kinds.push(StringMatch::Contains(non_empty("contains", v)?));
        }
        if let Some(v) = r.safe_regex {
            kinds.push(StringMatch::Regex(v));
        }
        if kinds.len() != 1 {
            return Err(format!(
                "a string matcher needs exactly one of exact, prefix, suffix, contains, safeRegex (found {})",
                kinds.len()
            ));
        }
        Ok(StringMatcher::new(kinds.remove(0), r.ignore_case))
    }
}

impl<'de> Deserialize<'de> for StringMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StringMatcher::try_from(RawStringMatcher::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let m = |k, ic| StringMatcher::new(k, ic);
        assert!(m(StringMatch::Exact("a".into()), false).matches("a"));
        assert!(!m(StringMatch::Exact("a".into()), false).matches("A"));
        assert!(m(StringMatch::Exact("a".into()), true).matches("A"));
        assert!(m(StringMatch::Prefix("Ab".into()), true).matches("aBc"));
        assert!(m(StringMatch::Suffix(".com".into()), false).matches("x.com"));
        assert!(m(StringMatch::Contains("mid".into()), false).matches("amidb"));
        let re = SafeRegex::new("a.c").unwrap();
        assert!(re.is_match("abc"));
        assert!(!re.is_match("xabc"), "full match");
        assert!(!re.is_match("abcd"), "full match");
        assert!(SafeRegex::new("a|b").unwrap().is_match("b"));
        assert!(SafeRegex::new("(").is_err());
    }

    #[test]
    fn proto_json() {
        let m: StringMatcher = serde_yaml::from_str("{prefix: x, ignoreCase: true}").unwrap();
        assert!(m.matches("XY"));
        let e = serde_yaml::from_str::<StringMatcher>("{prefix: x, exact: y}").unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = serde_yaml::from_str::<StringMatcher>("{custom: {}}").unwrap_err();
        assert!(e.to_string().contains("unknown field `custom`"), "{e}");
        let m: StringMatcher = serde_yaml::from_str("{safeRegex: {regex: '.+'}}").unwrap();
        assert!(!m.matches(""));
    }
}
