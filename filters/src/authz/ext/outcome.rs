//! What an authorization server answered, and how the answer changes the request going
//! upstream and the response going back (Envoy's ext_authz semantics).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Uri};

use crate::body::{self, Body};

/// How a header from the server is applied (Envoy's `HeaderValueOption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderAction {
    /// `append: true`: the value is appended (comma-joined) to an existing header; a
    /// header the request does not have is not added.
    AppendToExisting,
    /// `APPEND_IF_EXISTS_OR_ADD`: one more value of the header.
    Add,
    /// `ADD_IF_ABSENT`: only when the header is missing.
    AddIfAbsent,
    /// `append: false` or `OVERWRITE_IF_EXISTS_OR_ADD`: replaces any existing values.
    Set,
    /// `OVERWRITE_IF_EXISTS`: replaces, only when the header exists.
    SetIfExists,
}

/// One header change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderOp {
    /// Header name.
    pub name: HeaderName,
    /// Value.
    pub value: HeaderValue,
    /// How it applies.
    pub action: HeaderAction,
}

impl HeaderOp {
    /// A `Set` operation.
    pub fn set(name: HeaderName, value: HeaderValue) -> Self {
        Self {
            name,
            value,
            action: HeaderAction::Set,
        }
    }
}

/// What an allowed check changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Changes to the request going upstream.
    pub request_headers: Vec<HeaderOp>,
    /// Request headers removed before going upstream.
    pub remove_headers: Vec<HeaderName>,
    /// Headers added to the response going to the client.
    pub response_headers: Vec<HeaderOp>,
    /// Query parameters set (replacing any of the same name).
    pub query_set: Vec<(String, String)>,
    /// Query parameters removed.
    pub query_remove: Vec<String>,
}

/// What a denied check sends to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Status (403 unless the server chose another).
    pub status: StatusCode,
    /// Headers of the reply.
    pub headers: Vec<HeaderOp>,
    /// Body of the reply.
    pub body: Bytes,
}

impl Default for Denied {
    fn default() -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }
}

/// The server's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Allowed, with changes.
    Allow(Allowed),
    /// Denied, with the reply for the client.
    Deny(Denied),
}

/// Headers no authorization server may change: `host` (the authority decides routing and
/// was authorized as sent).
fn protected(name: &HeaderName) -> bool {
    name == http::header::HOST
}

/// Applies `ops` to `headers`.
pub fn apply_headers(headers: &mut HeaderMap, ops: &[HeaderOp]) {
    for op in ops {
        if protected(&op.name) {
            tracing::debug!(header = %op.name, "ext_authz may not change this header; ignored");
            continue;
        }
        let exists = headers.contains_key(&op.name);
        match op.action {
            HeaderAction::AppendToExisting => {
                if let Some(existing) = headers.get(&op.name) {
                    let mut joined = existing.as_bytes().to_vec();
                    joined.push(b',');
                    joined.extend_from_slice(op.value.as_bytes());
                    if let Ok(v) = HeaderValue::from_bytes(&joined) {
                        headers.insert(op.name.clone(), v);
                    }
                }
            }
            HeaderAction::Add => {
                headers.append(op.name.clone(), op.value.clone());
            }
            HeaderAction::AddIfAbsent => {
                if !exists {
                    headers.insert(op.name.clone(), op.value.clone());
                }
            }
            HeaderAction::Set => {
                headers.insert(op.name.clone(), op.value.clone());
            }
            HeaderAction::SetIfExists => {
                if exists {
                    headers.insert(op.name.clone(), op.value.clone());
                }
            }
        }
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Applies the allowed check's changes to the request going upstream.
pub fn apply_to_request(allowed: &Allowed, parts: &mut http::request::Parts) {
    for name in &allowed.remove_headers {
        if !protected(name) {
            parts.headers.remove(name);
        }
    }
    apply_headers(&mut parts.headers, &allowed.request_headers);
    if allowed.query_set.is_empty() && allowed.query_remove.is_empty() {
        return;
    }
    let path = parts.uri.path().to_string();
    let mut pairs: Vec<(String, String)> = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (p.to_string(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default();
    let raw_key = |k: &str| {
        crate::route::table::parse_query(Some(k))
            .first()
            .map(|(k, _)| k.clone())
    };
    let same = |raw: &str, key: &str| raw_key(raw).as_deref() == Some(key) || raw == key;
    pairs.retain(|(k, _)| !allowed.query_remove.iter().any(|r| same(k, r)));
    for (k, v) in &allowed.query_set {
        pairs.retain(|(existing, _)| !same(existing, k));
        pairs.push((encode(k), encode(v)));
    }
    let query: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| if v.is_empty() { k } else { format!("{k}={v}") })
        .collect();
    let pq = if query.is_empty() {
        path
    } else {
        format!("{path}?{}", query.join("&"))
    };
    match Uri::try_from(pq) {
        Ok(u) => parts.uri = u,
        Err(e) => {
            tracing::info!(error = %e, "ext_authz query parameters make an invalid URI; ignored")
        }
    }
}

/// The reply a denied check sends to the client.
pub fn denied_response(denied: &Denied) -> Response<Body> {
    let mut resp = Response::new(body::full(denied.body.clone()));
    *resp.status_mut() = denied.status;
    apply_headers(resp.headers_mut(), &denied.headers);
    resp.extensions_mut()
        .insert(crate::error::ResponseFlag("UAEX"));
    resp
}

/// The reply when a check failed and the provider fails closed (`statusOnError`).
pub fn error_response(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = status;
    resp.extensions_mut()
        .insert(crate::error::ResponseFlag("UAEX"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &'static str, value: &'static str, action: HeaderAction) -> HeaderOp {
        HeaderOp {
            name: HeaderName::from_static(name),
            value: HeaderValue::from_static(value),
            action,
        }
    }

    #[test]
    fn header_actions() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        h.insert("b", HeaderValue::from_static("1"));
        h.insert("host", HeaderValue::from_static("echo"));
        apply_headers(
            &mut h,
            &[
                op("a", "2", HeaderAction::AppendToExisting),
                op("missing", "x", HeaderAction::AppendToExisting),
                op("b", "2", HeaderAction::Add),
                op("c", "1", HeaderAction::AddIfAbsent),
                op("a", "ignored", HeaderAction::AddIfAbsent),
                op("d", "1", HeaderAction::Set),
                op("e", "1", HeaderAction::SetIfExists),
                op("host", "evil", HeaderAction::Set),
            ],
        );
        assert_eq!(h["a"], "1,2");
        assert!(!h.contains_key("missing"));
        assert_eq!(h.get_all("b").iter().count(), 2);
        assert_eq!(h["c"], "1");
        assert_eq!(h["d"], "1");
        assert!(!h.contains_key("e"));
        assert_eq!(h["host"], "echo");
    }

    #[test]
    fn request_changes_and_query() {
        let (mut parts, _) = http::Request::get("/p?keep=1&drop=2&over=3")
            .header("x-remove", "1")
            .body(())
            .unwrap()
            .into_parts();
        let allowed = Allowed {
            request_headers: vec![op("x-user", "alice", HeaderAction::Set)],
            remove_headers: vec![HeaderName::from_static("x-remove")],
            query_set: vec![("over".into(), "a b".into()), ("new".into(), "v".into())],
            query_remove: vec!["drop".into()],
            ..Default::default()
        };
        apply_to_request(&allowed, &mut parts);
        assert_eq!(parts.headers["x-user"], "alice");
        assert!(!parts.headers.contains_key("x-remove"));
        assert_eq!(parts.uri, "/p?keep=1&over=a%20b&new=v");
    }

    #[test]
    fn denied_reply() {
        let r = denied_response(&Denied {
            status: StatusCode::UNAUTHORIZED,
            headers: vec![op("x-why", "no", HeaderAction::Set)],
            body: Bytes::from_static(b"nope"),
        });
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-why"], "no");
    }
}
