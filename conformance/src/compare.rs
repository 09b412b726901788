//! The upstream comparison rules (conformance/utils/http and the mesh echo client):
//! status; the answering pod's name prefix; what the backend saw (path with query, host,
//! header values joined with `,`, absent headers); response headers; the redirect
//! `Location`.

use crate::cases::{Expect, ExpectedRedirect, ExpectedRequest, ExpectedResponse, Request};
use crate::client::Observed;

fn header_seen<'a>(echo: &'a serde_json::Value, name: &str) -> Option<Vec<&'a str>> {
    let headers = echo.get("headers")?.as_object()?;
    let (_, values) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    Some(
        values
            .as_array()?
            .iter()
            .filter_map(|v| v.as_str())
            .collect(),
    )
}

/// Checks `got` against `want`; the error names the first mismatch.
pub fn check(req: &Request, want: &Expect, got: &Observed) -> Result<(), String> {
    if let Some(code) = &want.grpc_code {
        return check_grpc_code(code, got);
    }
    check_status(want, got)?;
    check_backend(want, got)?;
    if let Some(er) = &want.request {
        check_request(er, got)?;
    }
    if let Some(er) = &want.response {
        check_response(er, got)?;
    }
    if let Some(r) = &want.redirect {
        check_redirect(req, r, got)?;
    }
    Ok(())
}

/// Checks the `grpc-status` against the named gRPC code.
fn check_grpc_code(code: &str, got: &Observed) -> Result<(), String> {
    let want_code = grpc_code(code).ok_or_else(|| format!("unknown gRPC code {code}"))?;
    if got.grpc_status != Some(want_code) {
        return Err(format!(
            "grpc-status {:?} (want {want_code} {code})",
            got.grpc_status
        ));
    }
    Ok(())
}

/// Checks the HTTP status (200 unless `want` says otherwise).
fn check_status(want: &Expect, got: &Observed) -> Result<(), String> {
    let status = want.status.unwrap_or(200);
    // Upstream treats a request timeout (408) and a gateway timeout (504) alike.
    let same =
        got.status == status || (matches!(status, 408 | 504) && matches!(got.status, 408 | 504));
    if !same {
        return Err(format!("status {} (want {status})", got.status));
    }
    Ok(())
}

/// Checks the answering pod's name prefix and namespace.
fn check_backend(want: &Expect, got: &Observed) -> Result<(), String> {
    if let Some(backend) = &want.backend {
        match got.pod() {
            Some(pod) if pod.starts_with(backend.as_str()) => {}
            other => return Err(format!("answered by {other:?} (want {backend})")),
        }
    }
    if let (Some(ns), Some(echo)) = (&want.namespace, &got.echo) {
        if want.backend.is_some() && echo.get("namespace").and_then(|v| v.as_str()) != Some(ns) {
            return Err(format!(
                "backend namespace {:?} (want {ns})",
                echo.get("namespace")
            ));
        }
    }
    Ok(())
}

/// Checks what the backend saw: path, host, present and absent headers.
fn check_request(er: &ExpectedRequest, got: &Observed) -> Result<(), String> {
    let echo = got
        .echo
        .as_ref()
        .ok_or("no echo body to check the request against")?;
    if let Some(path) = &er.path {
        let seen = echo
            .get("path")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        // `{uuid}` stands for the fresh id the client put in the request.
        let ok = match path.split_once("{uuid}") {
            Some((pre, post)) => {
                seen.starts_with(pre) && seen.ends_with(post) && seen.len() > pre.len() + post.len()
            }
            None => seen == path,
        };
        if !ok {
            return Err(format!("backend saw path {seen:?} (want {path:?})"));
        }
    }
    if let Some(host) = &er.host {
        let seen = echo
            .get("host")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        if seen != host {
            return Err(format!("backend saw host {seen:?} (want {host:?})"));
        }
    }
    for (name, value) in &er.headers {
        match header_seen(echo, name) {
            Some(values) if values.join(",") == *value => {}
            other => return Err(format!("backend saw {name}: {other:?} (want {value:?})")),
        }
    }
    for name in &er.absent_headers {
        if let Some(values) = header_seen(echo, name) {
            return Err(format!("backend saw {name}: {values:?} (want it absent)"));
        }
    }
    Ok(())
}

/// Checks the response's present and absent headers.
fn check_response(er: &ExpectedResponse, got: &Observed) -> Result<(), String> {
    for (name, value) in &er.headers {
        // Several values of one header compare joined with `,`, as upstream does.
        let all: Vec<&str> = got
            .headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let seen = all.join(",");
        if all.is_empty() || seen != *value {
            return Err(format!("response {name}: {seen:?} (want {value:?})"));
        }
    }
    for name in &er.absent_headers {
        if let Some(v) = got.headers.get(name.as_str()) {
            return Err(format!("response {name}: {v:?} (want it absent)"));
        }
    }
    Ok(())
}

/// Checks the redirect `Location`: scheme, host, port and path.
fn check_redirect(req: &Request, r: &ExpectedRedirect, got: &Observed) -> Result<(), String> {
    let location = got
        .headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("no Location header")?;
    let uri: http::Uri = location
        .parse()
        .map_err(|e| format!("Location {location:?}: {e}"))?;
    let scheme = r.scheme.as_deref().unwrap_or("http");
    if uri.scheme_str() != Some(scheme) {
        return Err(format!("Location {location}: scheme (want {scheme})"));
    }
    if let Some(host) = &r.host {
        if uri.host() != Some(host.as_str()) {
            return Err(format!("Location {location}: host (want {host})"));
        }
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    match (&r.port, uri.port_u16()) {
        (Some(p), got) if got.map(|g| g.to_string()).as_deref() != Some(p.as_str()) => {
            return Err(format!("Location {location}: port (want {p})"));
        }
        (None, Some(p)) if p != default_port => {
            return Err(format!("Location {location}: port {p} (want none)"));
        }
        _ => {}
    }
    let want_path = r
        .path
        .clone()
        .unwrap_or_else(|| req.path.clone().unwrap_or_else(|| "/".into()));
    let got_path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let got_path_only = uri.path();
    if got_path != want_path && got_path_only != want_path {
        return Err(format!("Location {location}: path (want {want_path})"));
    }
    Ok(())
}

/// gRPC status codes by their canonical names.
fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}
