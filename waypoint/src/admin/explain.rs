//! `POST /explain`: explains a request against the live snapshot (whatever its source:
//! the local file or istiod over xDS). The body is a [`filters::explain::Query`] in JSON;
//! the answer is the [`filters::explain::Explanation`] in JSON.

use http::{Response, StatusCode};
use pingora_core::protocols::http::ServerSession;

use crate::state::Proxy;

/// The largest request body accepted (a query is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// Reads the query from `session` and explains it against the current snapshot.
pub async fn handle(proxy: &Proxy, session: &mut ServerSession) -> Response<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return super::text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "explain query too large\n",
                        "text/plain",
                    );
                }
            }
            Ok(None) => break,
            Err(e) => return super::text(StatusCode::BAD_REQUEST, format!("{e}\n"), "text/plain"),
        }
    }
    let query: filters::explain::Query = match serde_json::from_slice(&body) {
        Ok(q) => q,
        Err(e) => {
            return super::text(
                StatusCode::BAD_REQUEST,
                format!("explain query: {e}\n"),
                "text/plain",
            )
        }
    };
    let snapshot = proxy.config.current();
    let input = match query.input(&snapshot) {
        Ok(i) => i,
        Err(e) => return super::text(StatusCode::BAD_REQUEST, format!("{e}\n"), "text/plain"),
    };
    tracing::debug!(request = ?query, version = snapshot.version(), "explaining a request");
    let explanation = filters::explain::explain(snapshot, input).await;
    match serde_json::to_vec_pretty(&explanation) {
        Ok(json) => super::text(StatusCode::OK, json, "application/json"),
        Err(e) => super::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            "text/plain",
        ),
    }
}
