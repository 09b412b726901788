//! `envoy.type.matcher.v3.StringMatcher` into the model's matcher, shared by RBAC and
//! per-route CORS origins.

use envoy_types::pb::envoy::r#type::matcher::v3 as pbm;
use filters::rbac::string_match::{SafeRegex, StringMatch, StringMatcher};

/// Converts a matcher; an error names the sub-field (`.prefix`, `.safe_regex.regex`, or
/// empty for the matcher itself) and what is wrong.
pub fn string_matcher(pb: &pbm::StringMatcher) -> Result<StringMatcher, (String, String)> {
    use pbm::string_matcher::MatchPattern;
    let non_empty = |v: &str, name: &str| {
        if v.is_empty() {
            Err((format!(".{name}"), "must not be empty".to_string()))
        } else {
            Ok(v.to_string())
        }
    };
    let kind = match pb.match_pattern.as_ref() {
        None => return Err((String::new(), "no match pattern set".into())),
        Some(MatchPattern::Exact(v)) => StringMatch::Exact(v.clone()),
        Some(MatchPattern::Prefix(v)) => StringMatch::Prefix(non_empty(v, "prefix")?),
        Some(MatchPattern::Suffix(v)) => StringMatch::Suffix(non_empty(v, "suffix")?),
        Some(MatchPattern::Contains(v)) => StringMatch::Contains(non_empty(v, "contains")?),
        Some(MatchPattern::SafeRegex(r)) => StringMatch::Regex(
            SafeRegex::new(&r.regex).map_err(|e| (".safe_regex.regex".to_string(), e))?,
        ),
        Some(MatchPattern::Custom(_)) => {
            return Err((
                ".custom".into(),
                "custom string matchers are not supported".into(),
            ))
        }
    };
    Ok(StringMatcher::new(kind, pb.ignore_case))
}
