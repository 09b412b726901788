//! An HTTP tunneling proxy on loopback, the endpoint of a DestinationRule `tunnel`: it
//! reads each tunnel request (HTTP/1.1, or HTTP/2 over cleartext when the connection
//! opens with the HTTP/2 preface), records its method, target and host, answers with the
//! configured status and, on a 2xx, sends a greeting in the same write as the response
//! head and then relays the tunnel's bytes to a TCP echo of its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw of one tunnel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRequest {
    /// `HTTP/1.1` or `HTTP/2`.
    pub version: &'static str,
    /// The method (`CONNECT`, `POST`).
    pub method: String,
    /// The request target: the authority of a CONNECT, the path of a POST.
    pub target: String,
    /// The `host` header (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: String,
    /// The `:scheme` of an HTTP/2 request, if any.
    pub scheme: Option<String>,
}

/// A running proxy.
pub struct TunnelProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<TunnelRequest>>>,
}

impl TunnelProxy {
    /// Listens on `ip` (port chosen by the system); answers each tunnel request with
    /// `status`, then, on a 2xx, writes `greeting` and relays to an echo. Status 0 never
    /// answers: the request is recorded and the connection held open (up to a minute).
    pub async fn start(ip: &str, status: u16, greeting: &'static [u8]) -> std::io::Result<Self> {
        let echo = TcpListener::bind((ip, 0)).await?;
        let echo_addr = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = serve(s, status, greeting, echo_addr, seen).await;
                });
            }
        });
        Ok(Self { addr, requests })
    }

    /// The tunnel requests seen so far.
    pub fn requests(&self) -> Vec<TunnelRequest> {
        self.requests.lock().unwrap().clone()
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn serve(
    mut s: TcpStream,
    status: u16,
    greeting: &'static [u8],
    echo: SocketAddr,
    seen: Arc<Mutex<Vec<TunnelRequest>>>,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    // Read until the HTTP/1.1 head ends or the HTTP/2 preface is recognized.
    loop {
        if buf.len() >= PREFACE.len() && buf.starts_with(PREFACE) {
            return serve_h2(Prefixed(buf, s), status, greeting, echo, seen).await;
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let rest = buf[end + 4..].to_vec();
            return serve_http1(s, &head, rest, status, greeting, echo, seen).await;
        }
        anyhow::ensure!(buf.len() < 64 * 1024, "head too large");
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before a request");
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve_http1(
    mut s: TcpStream,
    head: &str,
    rest: Vec<u8>,
    status: u16,
    greeting: &'static [u8],
    echo: SocketAddr,
    seen: Arc<Mutex<Vec<TunnelRequest>>>,
) -> anyhow::Result<()> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let host = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(TunnelRequest {
        version: "HTTP/1.1",
        method,
        target,
        host,
        scheme: None,
    });
    if status == 0 {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        return Ok(());
    }
    if !(200..300).contains(&status) {
        s.write_all(format!("HTTP/1.1 {status} Refused\r\ncontent-length: 0\r\n\r\n").as_bytes())
            .await?;
        return Ok(());
    }
    let mut answer = format!("HTTP/1.1 {status} Connection established\r\n\r\n").into_bytes();
    answer.extend_from_slice(greeting);
    s.write_all(&answer).await?;
    let mut up = TcpStream::connect(echo).await?;
    up.write_all(&rest).await?;
    tokio::io::copy_bidirectional(&mut s, &mut up).await?;
    Ok(())
}

async fn serve_h2(
    io: Prefixed,
    status: u16,
    greeting: &'static [u8],
    echo: SocketAddr,
    seen: Arc<Mutex<Vec<TunnelRequest>>>,
) -> anyhow::Result<()> {
    let mut conn = h2::server::handshake(io).await?;
    while let Some(request) = conn.accept().await {
        let (request, mut respond) = request?;
        let uri = request.uri();
        seen.lock().unwrap().push(TunnelRequest {
            version: "HTTP/2",
            method: request.method().to_string(),
            target: if request.method() == http::Method::CONNECT {
                uri.authority().map(|a| a.to_string()).unwrap_or_default()
            } else {
                uri.path().to_string()
            },
            host: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
            scheme: uri.scheme_str().map(str::to_string),
        });
        let response = http::Response::builder().status(status).body(())?;
        if status != 200 {
            respond.send_response(response, true)?;
            continue;
        }
        let mut send = respond.send_response(response, false)?;
        send.send_data(Bytes::from_static(greeting), false)?;
        let mut stream = hbone::H2Stream::new(send, request.into_body());
        tokio::spawn(async move {
            if let Ok(mut up) = TcpStream::connect(echo).await {
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut up).await;
            }
        });
    }
    Ok(())
}

/// A connection with bytes already read from it, read first.
struct Prefixed(Vec<u8>, TcpStream);

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.0.is_empty() {
            let n = this.0.len().min(buf.remaining());
            buf.put_slice(&this.0[..n]);
            this.0.drain(..n);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.1).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().1).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().1).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().1).poll_shutdown(cx)
    }
}
