//! The echo app: answers every request with JSON describing it, like the Gateway API
//! conformance echo server, plus a few endpoints for proxy tests.
//!
//! - any path: `{"path","host","method","proto","headers","namespace","pod"}`;
//!   `?delay=500ms` waits first; `X-Echo-Set-Header: Name:value,...` adds response headers;
//! - `/retry/...?uuid=U&succeedAfter=N&responseCode=C`: answers C to the first N calls for U;
//! - `/echo-body`: streams the request body back; `/bytes?n=N`: streams N bytes;
//!   `/drip?n=N&gap=300ms`: streams N chunks of `x`, the first at once, then one per gap;
//! - `/status/C`: answers status C (with `?pod=P`, only pod P does; the others answer 200);
//! - `/ws` with `Upgrade`: switches protocols and echoes bytes;
//! - `content-type: application/grpc`: echoes the gRPC message with `grpc-status: 0` trailers.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use filters::body::{self as fbody, Body};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Who the echo app says it is.
#[derive(Debug, Clone)]
pub struct EchoIdentity {
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
}

fn query(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn retry_counts() -> &'static Mutex<HashMap<String, u32>> {
    static COUNTS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

/// Serves one request.
pub async fn handle(
    who: Arc<EchoIdentity>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let q = query(req.uri());
    if let Some(d) = q
        .get("delay")
        .and_then(|d| filters::duration::parse(d).ok())
    {
        tokio::time::sleep(d).await;
    }
    let path = req.uri().path().to_string();
    let resp = if path == "/ws" && req.headers().contains_key(http::header::UPGRADE) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = hyper_util::rt::TokioIo::new(up);
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(fbody::empty())
            .expect("valid")
    } else if req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
    {
        grpc_echo(&who, req).await
    } else if path == "/echo-body" {
        Response::new(Body::new(req.into_body()))
    } else if path == "/drip" {
        let n: usize = q.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
        let gap = q
            .get("gap")
            .and_then(|d| filters::duration::parse(d).ok())
            .unwrap_or_default();
        Response::new(drip_body(n, gap))
    } else if path == "/bytes" {
        let n: usize = q.get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
        Response::new(bytes_body(n, q.contains_key("chunked")))
    } else if let Some(code) = path
        .strip_prefix("/status/")
        .and_then(|c| c.parse::<u16>().ok())
    {
        let mut r = json_response(&who, &req);
        if q.get("pod").is_none_or(|p| *p == who.pod) {
            *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        }
        r
    } else if path.starts_with("/retry/") {
        let uuid = q.get("uuid").cloned().unwrap_or_default();
        let after: u32 = q
            .get("succeedAfter")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let code: u16 = q
            .get("responseCode")
            .and_then(|n| n.parse().ok())
            .unwrap_or(500);
        let count = {
            let mut counts = retry_counts().lock().expect("counts");
            let c = counts.entry(uuid).or_insert(0);
            *c += 1;
            *c
        };
        let mut r = json_response(&who, &req);
        // The first `succeedAfter` calls fail, as the conformance echo server does.
        if count <= after {
            *r.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        }
        r
    } else {
        json_response(&who, &req)
    };
    Ok(resp)
}

/// The JSON description of a request, as the conformance echo server reports it.
fn describe(who: &EchoIdentity, req: &Request<Incoming>) -> serde_json::Value {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(canonical(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    serde_json::json!({
        "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": host,
        "method": req.method().as_str(),
        "proto": format!("{:?}", req.version()),
        "headers": headers,
        "namespace": who.namespace,
        "pod": who.pod,
    })
}

fn json_response(who: &EchoIdentity, req: &Request<Incoming>) -> Response<Body> {
    let body = describe(who, req);
    let mut resp = Response::new(fbody::full(body.to_string()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(set) = req
        .headers()
        .get("x-echo-set-header")
        .and_then(|v| v.to_str().ok())
    {
        for pair in set.split(',') {
            if let Some((k, v)) = pair.split_once(':') {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.trim().as_bytes()),
                    HeaderValue::from_str(v.trim()),
                ) {
                    resp.headers_mut().append(k, v);
                }
            }
        }
    }
    resp
}

/// `x-forwarded-for` → `X-Forwarded-For`, as Go's net/http prints header names.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// `n` one-byte chunks, the first at once, then one every `gap`.
fn drip_body(n: usize, gap: std::time::Duration) -> Body {
    let stream = futures::stream::unfold(0, move |sent| async move {
        if sent == n {
            return None;
        }
        if sent > 0 {
            tokio::time::sleep(gap).await;
        }
        Some((
            Ok::<_, fbody::BoxError>(Frame::data(Bytes::from_static(b"x"))),
            sent + 1,
        ))
    });
    Body::new(StreamBody::new(stream))
}

/// `n` bytes of `x`, streamed in 64 KiB chunks: with a `Content-Length` (as fortio and
/// httpbin send a payload of known size), or chunked when `chunked` (as a streaming app).
fn bytes_body(n: usize, chunked: bool) -> Body {
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let take = left.min(CHUNK);
                (
                    Ok::<_, fbody::BoxError>(Frame::data(chunk.slice(..take))),
                    left - take,
                )
            })
        }
    });
    let body = StreamBody::new(stream);
    if chunked {
        Body::new(body)
    } else {
        Body::new(Sized {
            inner: body,
            left: n as u64,
        })
    }
}

pin_project_lite::pin_project! {
    /// A body of known length: its exact size hint makes hyper send `Content-Length`.
    struct Sized<B> {
        #[pin]
        inner: B,
        left: u64,
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for Sized<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            *this.left -= data.len() as u64;
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// Answers a gRPC call with one message: the same JSON description of the request the
/// HTTP echo returns (so tests can check the backend and the metadata it received),
/// followed by `grpc-status: 0` trailers.
async fn grpc_echo(who: &EchoIdentity, req: Request<Incoming>) -> Response<Body> {
    let description = describe(who, &req);
    let _ = req.into_body().collect().await;
    let json = description.to_string();
    let mut frame = Vec::with_capacity(json.len() + 5);
    frame.push(0u8);
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(json.as_bytes());
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("x-echo-trailer", HeaderValue::from_static("present"));
    let frames = futures::stream::iter(vec![
        Ok::<_, fbody::BoxError>(Frame::data(Bytes::from(frame))),
        Ok(Frame::trailers(trailers)),
    ]);
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(StreamBody::new(frames)))
        .expect("valid")
}

/// Serves the echo app over plain TCP (a pod outside the ambient mesh) until dropped.
pub async fn serve_plain(
    addr: std::net::SocketAddr,
    who: EchoIdentity,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let who = Arc::new(who);
    Ok(tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let who = who.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(who.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names() {
        assert_eq!(canonical("x-forwarded-for"), "X-Forwarded-For");
    }
}
