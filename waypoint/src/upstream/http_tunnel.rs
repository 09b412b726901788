//! A TCP tunnel carried inside one HTTP request to a proxy at the endpoint: Envoy's TCP
//! proxy `tunneling_config` (DestinationRule `trafficPolicy.tunnel`). On the connection to
//! the chosen endpoint (HBONE or plain TCP, TLS inside when the port originates it) the
//! waypoint sends `CONNECT hostname` (or `POST path` with `hostname` as authority) and
//! waits for the proxy's answer: over HTTP/1.1 any 2xx, over HTTP/2 exactly 200, as Envoy
//! accepts them. Then the tunnel's bytes go both ways inside the request: over HTTP/1.1
//! raw after the heads (whatever follows the response head already belongs to the
//! tunnel), over HTTP/2 as the stream's DATA. Any other answer, or a proxy that closes
//! first, fails the attempt (`UF`, as Envoy's TCP proxy flags an upstream that would not
//! tunnel).
//!
//! HTTP/1.1 is written here rather than with hyper's client: hyper hands the connection
//! back after a 2xx only for `CONNECT`, while a `POST` tunnel must also keep its raw bytes
//! after the heads (no chunked framing, as Envoy sends them).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use filters::model::{TcpTunnel, TunnelMethod};
use filters::ProxyError;
use hbone::H2Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::UpstreamIo;

/// The longest response head accepted from the proxy (Envoy's default header limit).
const MAX_HEAD: usize = 60 * 1024;

/// Most headers in the proxy's response head.
const MAX_HEADERS: usize = 100;

/// The upstream byte stream of a TCP tunnel: the connection to the endpoint, or the
/// tunnel an HTTP proxy there opened on it.
#[derive(Debug)]
pub enum TunnelIo {
    /// The connection itself (no proxy at the endpoint).
    Direct(UpstreamIo),
    /// Inside an HTTP/1.1 request: the connection itself, after the heads.
    Http1(Prefixed),
    /// Inside an HTTP/2 stream.
    Http2(H2Stream),
}

/// A connection with bytes already read from it (those after the response head), read
/// first.
#[derive(Debug)]
pub struct Prefixed {
    early: Bytes,
    io: UpstreamIo,
}

/// Asks the proxy on `io` (at `endpoint`) to open `tunnel`, in HTTP/2 when the tunnel
/// says so (the port's cluster has HTTP/2 options) else HTTP/1.1; `tls` says whether `io`
/// carries TLS the waypoint originated (the POST's `:scheme`).
pub async fn open(
    io: UpstreamIo,
    tunnel: &TcpTunnel,
    tls: bool,
    endpoint: SocketAddr,
) -> Result<TunnelIo, ProxyError> {
    let failed = |reason: String| ProxyError::UpstreamConnect {
        endpoint: endpoint.to_string(),
        reason,
    };
    if tunnel.http2 {
        open_h2(io, tunnel, tls).await.map(TunnelIo::Http2)
    } else {
        open_http1(io, tunnel).await.map(TunnelIo::Http1)
    }
    .map_err(|e| {
        tracing::debug!(%endpoint, hostname = %tunnel.hostname, error = %e, "HTTP tunnel refused");
        failed(format!("tunnel to {}: {e}", tunnel.hostname))
    })
}

/// Why the proxy did not open the tunnel.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the proxy answered {0}")]
    Status(u16),
    #[error("the proxy closed the connection before answering")]
    Closed,
    #[error("the proxy's response head is malformed: {0}")]
    Malformed(String),
    #[error("the proxy's response head exceeds {MAX_HEAD} bytes")]
    TooLarge,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
}

/// The HTTP/1.1 request head: `CONNECT hostname` in authority form, or `POST path`; the
/// `host` header names the hostname either way.
fn http1_head(tunnel: &TcpTunnel) -> String {
    let target = match &tunnel.method {
        TunnelMethod::Connect => tunnel.hostname.as_str(),
        TunnelMethod::Post { path } => path.as_str(),
    };
    let method = match tunnel.method {
        TunnelMethod::Connect => "CONNECT",
        TunnelMethod::Post { .. } => "POST",
    };
    format!(
        "{method} {target} HTTP/1.1\r\nhost: {}\r\n\r\n",
        tunnel.hostname
    )
}

async fn open_http1(mut io: UpstreamIo, tunnel: &TcpTunnel) -> Result<Prefixed, Refused> {
    io.write_all(http1_head(tunnel).as_bytes()).await?;
    io.flush().await?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or(0);
                // Interim answers (100 Continue) precede the real one.
                if (100..200).contains(&code) && code != 101 {
                    buf.advance(len);
                    continue;
                }
                if !(200..300).contains(&code) {
                    return Err(Refused::Status(code));
                }
                buf.advance(len);
                return Ok(Prefixed {
                    early: buf.freeze(),
                    io,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(Refused::TooLarge)
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(Refused::Malformed(e.to_string())),
        }
        buf.reserve(1024);
        if io.read_buf(&mut buf).await? == 0 {
            return Err(Refused::Closed);
        }
    }
}

/// The HTTP/2 request: `CONNECT` with only the authority (no `protocol` pseudo-header),
/// or `POST` with scheme, authority and path.
fn h2_request(tunnel: &TcpTunnel, tls: bool) -> Result<http::Request<()>, Refused> {
    let malformed = |e: http::Error| Refused::Malformed(e.to_string());
    match &tunnel.method {
        TunnelMethod::Connect => http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(tunnel.hostname.as_str())
            .body(())
            .map_err(malformed),
        TunnelMethod::Post { path } => {
            let scheme = if tls { "https" } else { "http" };
            http::Request::builder()
                .method(http::Method::POST)
                .uri(format!("{scheme}://{}{path}", tunnel.hostname))
                .body(())
                .map_err(malformed)
        }
    }
}

async fn open_h2(io: UpstreamIo, tunnel: &TcpTunnel, tls: bool) -> Result<H2Stream, Refused> {
    let request = h2_request(tunnel, tls)?;
    let (send_request, connection) = h2::client::handshake(io).await?;
    // The connection runs until the tunnel's stream and this handle are gone.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP/2 tunnel connection ended");
        }
    });
    let mut send_request = send_request.ready().await?;
    let (response, send) = send_request.send_request(request, false)?;
    drop(send_request);
    let response = response.await?;
    // Envoy accepts exactly 200 over HTTP/2.
    if response.status() != http::StatusCode::OK {
        return Err(Refused::Status(response.status().as_u16()));
    }
    Ok(H2Stream::new(send, response.into_body()))
}

impl AsyncRead for TunnelIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Http1(p) => {
                if !p.early.is_empty() {
                    let n = p.early.len().min(buf.remaining());
                    buf.put_slice(&p.early.split_to(n));
                    return Poll::Ready(Ok(()));
                }
                Pin::new(&mut p.io).poll_read(cx, buf)
            }
            TunnelIo::Http2(s) => Pin::new(s).poll_read(cx, buf),
            TunnelIo::Direct(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelIo::Http1(p) => Pin::new(&mut p.io).poll_write(cx, buf),
            TunnelIo::Http2(s) => Pin::new(s).poll_write(cx, buf),
            TunnelIo::Direct(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Http1(p) => Pin::new(&mut p.io).poll_flush(cx),
            TunnelIo::Http2(s) => Pin::new(s).poll_flush(cx),
            TunnelIo::Direct(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::Http1(p) => Pin::new(&mut p.io).poll_shutdown(cx),
            TunnelIo::Http2(s) => Pin::new(s).poll_shutdown(cx),
            TunnelIo::Direct(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_heads_name_the_hostname() {
        let connect = TcpTunnel::to("10.0.0.1", 443, TunnelMethod::Connect);
        assert_eq!(
            http1_head(&connect),
            "CONNECT 10.0.0.1:443 HTTP/1.1\r\nhost: 10.0.0.1:443\r\n\r\n"
        );
        let post = TcpTunnel::to("db", 5432, TunnelMethod::Post { path: "/".into() });
        assert_eq!(
            http1_head(&post),
            "POST / HTTP/1.1\r\nhost: db:5432\r\n\r\n"
        );
    }

    #[test]
    fn h2_requests_carry_the_authority() {
        let connect = TcpTunnel::to("fd00::1", 443, TunnelMethod::Connect);
        let r = h2_request(&connect, false).unwrap();
        assert_eq!(r.method(), http::Method::CONNECT);
        assert_eq!(r.uri().authority().unwrap().as_str(), "[fd00::1]:443");
        assert!(r.uri().scheme().is_none());
        let post = TcpTunnel::to("db", 5432, TunnelMethod::Post { path: "/t".into() });
        let r = h2_request(&post, true).unwrap();
        assert_eq!(r.uri().to_string(), "https://db:5432/t");
    }
}
