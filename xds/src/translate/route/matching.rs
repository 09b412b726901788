//! Route matches: paths, headers, query parameters and the string matchers under them,
//! each converted or refused by field.

use super::*;

fn anchored(re: &str, at: &str) -> Result<Regex, Bad> {
    Regex::new(&format!("^(?:{re})$")).map_err(|e| (at.to_string(), format!("invalid regex: {e}")))
}

fn string_matcher(m: &StringMatcher, at: &str) -> Result<StringMatch, Bad> {
    let ci = if m.ignore_case { "(?i)" } else { "" };
    let re = match &m.match_pattern {
        Some(MatchPattern::Exact(v)) if !m.ignore_case => return Ok(StringMatch::Exact(v.clone())),
        Some(MatchPattern::Exact(v)) => format!("{ci}{}", regex::escape(v)),
        Some(MatchPattern::Prefix(v)) => format!("{ci}{}.*", regex::escape(v)),
        Some(MatchPattern::Suffix(v)) => format!("{ci}.*{}", regex::escape(v)),
        Some(MatchPattern::Contains(v)) => format!("{ci}.*{}.*", regex::escape(v)),
        Some(MatchPattern::SafeRegex(r)) => format!("{ci}{}", r.regex),
        other => return Err((at.into(), format!("unsupported string matcher {other:?}"))),
    };
    Ok(StringMatch::Regex(anchored(&re, at)?))
}

#[allow(deprecated)]
fn header(h: &HeaderMatcher, at: &str) -> Result<HeaderMatch, Bad> {
    if h.invert_match {
        return Err((
            format!("{at}.invert_match"),
            "inverted header matches are not supported".into(),
        ));
    }
    let value = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::ExactMatch(v)) => StringMatch::Exact(v.clone()),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            StringMatch::Regex(anchored(&r.regex, at)?)
        }
        Some(HeaderMatchSpecifier::PrefixMatch(v)) => {
            StringMatch::Regex(anchored(&format!("{}.*", regex::escape(v)), at)?)
        }
        Some(HeaderMatchSpecifier::SuffixMatch(v)) => {
            StringMatch::Regex(anchored(&format!(".*{}", regex::escape(v)), at)?)
        }
        Some(HeaderMatchSpecifier::ContainsMatch(v)) => {
            StringMatch::Regex(anchored(&format!(".*{}.*", regex::escape(v)), at)?)
        }
        Some(HeaderMatchSpecifier::PresentMatch(true)) => StringMatch::Regex(anchored(".*", at)?),
        Some(HeaderMatchSpecifier::StringMatch(m)) => string_matcher(m, at)?,
        other => return Err((at.into(), format!("unsupported header match {other:?}"))),
    };
    let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
        (
            format!("{at}.name"),
            format!("bad header name {:?}", h.name),
        )
    })?;
    Ok(HeaderMatch { name, value })
}

/// The route's request condition: path, method, headers and query parameters.
pub(super) fn route_match(r: &Route, at: &str) -> Result<RouteMatch, Bad> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| (format!("{at}.match"), "required".to_string()))?;
    if m.case_sensitive.as_ref().is_some_and(|c| !c.value) {
        return Err((
            format!("{at}.match.case_sensitive"),
            "case-insensitive paths are not supported".into(),
        ));
    }
    if m.runtime_fraction.is_some()
        || m.grpc.is_some()
        || m.tls_context.is_some()
        || !m.dynamic_metadata.is_empty()
    {
        return Err((
            format!("{at}.match"),
            "runtime_fraction, grpc, tls_context and dynamic_metadata matches are not supported"
                .into(),
        ));
    }
    let path = path_match(m.path_specifier.as_ref(), at)?;
    let (method, headers) = header_matches(&m.headers, at)?;
    let query = query_matches(&m.query_parameters, at)?;
    Ok(RouteMatch {
        path,
        method,
        headers,
        query,
    })
}

/// The path condition of a route's match.
fn path_match(p: Option<&PathSpecifier>, at: &str) -> Result<PathMatch, Bad> {
    Ok(match p {
        Some(PathSpecifier::Prefix(p)) if p == "/" || p.is_empty() => PathMatch::Prefix("/".into()),
        Some(PathSpecifier::Prefix(p)) => PathMatch::Regex(anchored(
            &format!("{}.*", regex::escape(p)),
            &format!("{at}.match.prefix"),
        )?),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(re)) => {
            PathMatch::Regex(anchored(&re.regex, &format!("{at}.match.safe_regex"))?)
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::Prefix(p.clone()),
        other => {
            return Err((
                format!("{at}.match"),
                format!("unsupported path match {other:?}"),
            ))
        }
    })
}

/// The method (an exact `:method` match) and the other header conditions of a route's match.
#[allow(deprecated)]
fn header_matches(
    headers: &[HeaderMatcher],
    at: &str,
) -> Result<(Option<Method>, Vec<HeaderMatch>), Bad> {
    let mut method = None;
    let mut matches = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        let hat = format!("{at}.match.headers[{i}]");
        if h.name == ":method" {
            if let Some(HeaderMatchSpecifier::ExactMatch(v))
            | Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(v)),
                ignore_case: false,
            })) = &h.header_match_specifier
            {
                method = Some(
                    Method::from_bytes(v.as_bytes())
                        .map_err(|_| (hat, format!("bad method {v:?}")))?,
                );
                continue;
            }
        }
        if h.name.starts_with(':') && h.name != ":authority" {
            return Err((
                hat,
                format!("pseudo-header {} matches are not supported", h.name),
            ));
        }
        let mut hm = header(h, &hat)?;
        if h.name == ":authority" {
            hm.name = http::header::HOST;
        }
        matches.push(hm);
    }
    Ok((method, matches))
}

/// The query parameter conditions of a route's match.
fn query_matches(params: &[QueryParameterMatcher], at: &str) -> Result<Vec<QueryMatch>, Bad> {
    let mut query = Vec::new();
    for (i, q) in params.iter().enumerate() {
        let qat = format!("{at}.match.query_parameters[{i}]");
        let value = match &q.query_parameter_match_specifier {
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => string_matcher(s, &qat)?,
            Some(QueryParameterMatchSpecifier::PresentMatch(true)) => {
                StringMatch::Regex(anchored(".*", &qat)?)
            }
            other => return Err((qat, format!("unsupported query match {other:?}"))),
        };
        query.push(QueryMatch {
            name: q.name.clone(),
            value,
        });
    }
    Ok(query)
}
