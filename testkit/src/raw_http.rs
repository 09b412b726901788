//! A pod app that keeps the head of every HTTP/1.1 request it receives byte for byte (to
//! see header-name case) and answers each with 200, an `X-Reply-Header: yes` header and
//! `ok`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The running app.
pub struct RawHttpApp {
    /// Where it listens.
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawHttpApp {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, seen.clone()));
            }
        });
        Ok(Self { addr, heads })
    }

    /// The request heads received so far (request line and headers, as sent).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn serve(mut s: tokio::net::TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk).await {
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).into_owned());
            let reply = b"HTTP/1.1 200 OK\r\nX-Reply-Header: yes\r\ncontent-length: 2\r\n\r\nok";
            if s.write_all(reply).await.is_err() {
                return;
            }
        }
    }
}
