//! Envoy's `StringMatcher` (exact, prefix, suffix, contains, `safe_regex`; `ignore_case`)
//! and RE2 regexes compiled once, matched in full as Envoy's `safe_regex` is.

use std::fmt;

use regex::Regex;

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
    fn ignore_case_and_full_regex() {
        let m = StringMatcher::new(StringMatch::Prefix("x".into()), true);
        assert!(m.matches("XY"));
        let m = StringMatcher::new(StringMatch::Regex(SafeRegex::new(".+").unwrap()), false);
        assert!(!m.matches(""));
        assert!(m.matches("a"));
        let m = StringMatcher::new(StringMatch::Regex(SafeRegex::new("a").unwrap()), true);
        assert!(!m.matches("A"), "ignore_case does not apply to regexes");
        assert!(!StringMatcher::exact("a").ignore_case);
    }
}
