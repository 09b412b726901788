//! The HTTP flavour of ext_authz: the check request goes through the pools like any
//! upstream request; the reply's body is read whole (bounded).

use std::sync::Arc;

use filters::authz::ext::http::{check_request, read_reply};
use filters::authz::ext::{CheckError, CheckOutcome, CheckRequest, HttpSettings, Provider};
use filters::model::RequestContext;
use http::{header, Uri, Version};
use http_body_util::{BodyExt, Limited};

use crate::state::Proxy;

/// Largest reply body read from an HTTP authorization server.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// Sends one HTTP check.
pub async fn check(
    proxy: &Arc<Proxy>,
    provider: &Provider,
    settings: &HttpSettings,
    ctx: &RequestContext,
    request: CheckRequest,
) -> Result<CheckOutcome, CheckError> {
    let failed = |reason: String| CheckError::Failed {
        provider: provider.name.clone(),
        reason,
    };
    let endpoint = super::resolve(&ctx.snapshot, provider).await?;
    let req = check_request(settings, &request).map_err(|e| failed(e.to_string()))?;
    let mut req = req.map(filters::body::full);
    if endpoint.h2 {
        let host = req
            .headers_mut()
            .remove(header::HOST)
            .and_then(|h| h.to_str().ok().map(str::to_string))
            .unwrap_or_else(|| endpoint.authority.clone());
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *req.uri_mut() =
            Uri::try_from(format!("http://{host}{pq}")).map_err(|e| failed(e.to_string()))?;
        *req.version_mut() = Version::HTTP_2;
    } else {
        if !req.headers().contains_key(header::HOST) {
            if let Ok(v) = header::HeaderValue::from_str(&endpoint.authority) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        *req.version_mut() = Version::HTTP_11;
    }
    tracing::trace!(provider = %provider.name, endpoint = %endpoint.picked.address, uri = %req.uri(), "HTTP ext_authz check");
    let resp = proxy
        .upstream
        .http
        .send(&proxy.upstream, &endpoint.picked, endpoint.h2, req)
        .await
        .map_err(|e| super::pool_error(provider, e))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_REPLY_BYTES)
        .collect()
        .await
        .map_err(|e| failed(format!("reading the reply: {e}")))?
        .to_bytes();
    Ok(read_reply(settings, parts.status, &parts.headers, body))
}
