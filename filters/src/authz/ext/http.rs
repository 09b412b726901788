//! The HTTP flavour of ext_authz (`envoyExtAuthzHttp`), pure: the check request is the
//! client's request replayed to the server (same method, `pathPrefix` + original path,
//! selected headers, optionally the buffered body); a 200 allows, anything else denies
//! with the server's status, body and headers.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};

use super::check::CheckRequest;
use super::outcome::{Allowed, CheckOutcome, Denied, HeaderAction, HeaderOp};
use super::provider::{any_matches, HttpSettings};

/// Headers every HTTP check carries when the client sent them (besides the method and
/// path, which are the check's own).
const ALWAYS_SENT: [&str; 2] = ["host", "authorization"];

/// Headers the server's deny reply always passes to the client, whatever
/// `headersToDownstreamOnDeny` lists.
const ALWAYS_TO_CLIENT_ON_DENY: [&str; 2] = ["www-authenticate", "location"];

/// Hop-by-hop and framing headers never copied from the server's reply.
fn framing(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "content-length"
            | "host"
    )
}

/// Why a check request cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A check of a TCP tunnel cannot use an HTTP provider.
    #[error("an HTTP ext_authz provider cannot check a TCP connection")]
    NotHttp,
    /// The method, path or a header cannot be represented.
    #[error("cannot build the check request: {0}")]
    Invalid(String),
}

/// Builds the check request for `check`. Its URI is origin-form; the transport adds the
/// server's authority.
pub fn check_request(
    settings: &HttpSettings,
    check: &CheckRequest,
) -> Result<Request<Bytes>, BuildError> {
    let attrs = check.http.as_ref().ok_or(BuildError::NotHttp)?;
    let invalid = |e: &dyn std::fmt::Display| BuildError::Invalid(e.to_string());
    let method = Method::from_bytes(attrs.method.as_bytes()).map_err(|e| invalid(&e))?;
    let path = format!("{}{}", settings.path_prefix, attrs.path);
    let mut headers = HeaderMap::new();
    for (name, value) in &attrs.headers {
        let wanted = ALWAYS_SENT.contains(&name.as_str())
            || any_matches(&settings.include_request_headers, name);
        if !wanted || name == "content-length" {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            continue;
        };
        headers.append(n, v);
    }
    for (name, value) in &settings.additional_headers {
        headers.insert(name.clone(), value.clone());
    }
    let body = attrs.body.clone().unwrap_or_default();
    if attrs.body.is_some() {
        headers.insert(
            "x-envoy-auth-partial-body",
            HeaderValue::from_static(if attrs.partial_body { "true" } else { "false" }),
        );
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(body)
        .map_err(|e| invalid(&e))?;
    *req.headers_mut() = headers;
    Ok(req)
}

fn ops(headers: &HeaderMap, keep: impl Fn(&str) -> bool, first: HeaderAction) -> Vec<HeaderOp> {
    let mut out: Vec<HeaderOp> = Vec::new();
    for (name, value) in headers {
        if framing(name.as_str()) || !keep(name.as_str()) {
            continue;
        }
        let seen = out.iter().any(|o| o.name == name);
        out.push(HeaderOp {
            name: name.clone(),
            value: value.clone(),
            action: if seen { HeaderAction::Add } else { first },
        });
    }
    out
}

/// Reads the server's reply: 200 allows (copying `headersToUpstreamOnAllow` to the
/// request and `headersToDownstreamOnAllow` to the client's response); any other status
/// denies with that status, the reply's body and its headers (all of them unless
/// `headersToDownstreamOnDeny` narrows them).
pub fn read_reply(
    settings: &HttpSettings,
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
) -> CheckOutcome {
    if status == StatusCode::OK {
        return CheckOutcome::Allow(Allowed {
            request_headers: ops(
                headers,
                |n| any_matches(&settings.headers_to_upstream_on_allow, n),
                HeaderAction::Set,
            ),
            response_headers: ops(
                headers,
                |n| any_matches(&settings.headers_to_downstream_on_allow, n),
                HeaderAction::Add,
            ),
            ..Default::default()
        });
    }
    let narrowed = !settings.headers_to_downstream_on_deny.is_empty();
    CheckOutcome::Deny(Denied {
        status,
        headers: ops(
            headers,
            |n| {
                !narrowed
                    || ALWAYS_TO_CLIENT_ON_DENY.contains(&n)
                    || any_matches(&settings.headers_to_downstream_on_deny, n)
            },
            HeaderAction::Set,
        ),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::super::check::HttpRequestAttributes;
    use super::super::provider::HeaderPattern;
    use super::*;

    fn settings() -> HttpSettings {
        HttpSettings {
            path_prefix: "/check".into(),
            include_request_headers: vec![HeaderPattern::parse("x-ext-*").unwrap()],
            additional_headers: vec![(
                HeaderName::from_static("x-from-waypoint"),
                HeaderValue::from_static("yes"),
            )],
            headers_to_upstream_on_allow: vec![HeaderPattern::parse("x-user").unwrap()],
            headers_to_downstream_on_allow: vec![HeaderPattern::parse("x-trace-*").unwrap()],
            headers_to_downstream_on_deny: vec![],
        }
    }

    fn check(headers: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            http: Some(HttpRequestAttributes {
                method: "PUT".into(),
                path: "/a?b=1".into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn builds_the_check_request() {
        let c = check(&[
            ("host", "echo"),
            ("authorization", "Bearer t"),
            ("cookie", "secret"),
            ("x-ext-authz", "allow"),
            ("content-length", "12"),
        ]);
        let req = check_request(&settings(), &c).unwrap();
        assert_eq!(req.method(), Method::PUT);
        assert_eq!(req.uri(), "/check/a?b=1");
        let h = req.headers();
        assert_eq!(h["host"], "echo");
        assert_eq!(h["authorization"], "Bearer t");
        assert_eq!(h["x-ext-authz"], "allow");
        assert_eq!(h["x-from-waypoint"], "yes");
        assert_eq!(h["content-length"], "0", "no body in the check");
        assert!(!h.contains_key("cookie"), "not listed, not sent");
        assert!(check_request(&settings(), &CheckRequest::default()).is_err());
    }

    #[test]
    fn reads_allow_and_deny() {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.insert("x-trace-id", HeaderValue::from_static("7"));
        h.insert("x-other", HeaderValue::from_static("o"));
        h.insert("content-length", HeaderValue::from_static("4"));
        let CheckOutcome::Allow(a) = read_reply(&settings(), StatusCode::OK, &h, Bytes::new())
        else {
            panic!("200 allows")
        };
        assert_eq!(a.request_headers.len(), 1);
        assert_eq!(a.request_headers[0].name, "x-user");
        assert_eq!(a.response_headers.len(), 1);
        assert_eq!(a.response_headers[0].name, "x-trace-id");
        let CheckOutcome::Deny(d) = read_reply(
            &settings(),
            StatusCode::UNAUTHORIZED,
            &h,
            Bytes::from_static(b"nope"),
        ) else {
            panic!("401 denies")
        };
        assert_eq!(d.status, 401);
        assert_eq!(d.body, "nope");
        assert_eq!(d.headers.len(), 3, "all but framing headers");
        let mut narrowed = settings();
        narrowed.headers_to_downstream_on_deny = vec![HeaderPattern::parse("x-other").unwrap()];
        let CheckOutcome::Deny(d) = read_reply(&narrowed, StatusCode::FORBIDDEN, &h, Bytes::new())
        else {
            panic!()
        };
        assert_eq!(d.headers.len(), 1);
        assert_eq!(d.headers[0].name, "x-other");
    }
}
