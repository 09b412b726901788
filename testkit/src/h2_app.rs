//! An h2c app for upstream connection-pool tests: it counts the connections it accepts and
//! the streams each carries at once, can hold requests until several have arrived, and can
//! freeze a connection (everything it receives is dropped, nothing is sent: a peer that
//! stopped answering, PINGs included) while noticing when the client closes it.
//!
//! Requests to `/hold` are answered once `hold` requests are in flight at the app (at most
//! 5 s later); to `/gate`, once the test opens the gate (at most 5 s later); any other path
//! at once. Every answer is 200 with the index of the
//! connection it came on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a `/hold` request waits for the others.
const HOLD_AT_MOST: Duration = Duration::from_secs(5);

/// One accepted connection.
#[derive(Default)]
struct Conn {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    frozen: AtomicBool,
    closed: AtomicBool,
}

struct State {
    conns: Mutex<Vec<Arc<Conn>>>,
    hold: usize,
    holding: AtomicUsize,
    gate: AtomicBool,
    requests: AtomicUsize,
}

/// The running app.
pub struct H2App {
    /// Where it listens (h2c, prior knowledge).
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl H2App {
    /// Listens on a free loopback port; `/hold` requests wait until `hold` are in flight.
    pub async fn start(hold: usize) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            conns: Mutex::new(Vec::new()),
            hold,
            holding: AtomicUsize::new(0),
            gate: AtomicBool::new(false),
            requests: AtomicUsize::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = Arc::new(Conn::default());
                let index = {
                    let mut conns = shared.conns.lock().unwrap();
                    conns.push(conn.clone());
                    conns.len() - 1
                };
                tokio::spawn(serve(tcp, conn, index, shared.clone()));
            }
        });
        Ok(Self { addr, state })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.conns.lock().unwrap().len()
    }

    /// For each connection, the most streams it carried at once.
    pub fn peaks(&self) -> Vec<usize> {
        self.conn_states(|c| c.peak.load(Ordering::SeqCst))
    }

    /// Requests received so far, on every connection.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Lets the `/gate` requests (those waiting and those to come) be answered.
    pub fn open_gate(&self) {
        self.state.gate.store(true, Ordering::SeqCst);
    }

    /// Connection `i` stops answering: what arrives on it is dropped from now on.
    pub fn freeze(&self, i: usize) {
        self.state.conns.lock().unwrap()[i]
            .frozen
            .store(true, Ordering::SeqCst);
    }

    /// Whether the client has closed connection `i`.
    pub fn closed(&self, i: usize) -> bool {
        self.state.conns.lock().unwrap()[i]
            .closed
            .load(Ordering::SeqCst)
    }

    fn conn_states<T>(&self, f: impl Fn(&Conn) -> T) -> Vec<T> {
        self.state
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| f(c))
            .collect()
    }
}

/// Serves one connection: HTTP/2 on one end of a pipe, the other end relayed to `tcp`
/// unless the connection is frozen.
async fn serve(tcp: tokio::net::TcpStream, conn: Arc<Conn>, index: usize, state: Arc<State>) {
    let (app_end, relay_end) = tokio::io::duplex(1 << 16);
    let handler = conn.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let conn = handler.clone();
        let state = state.clone();
        async move {
            state.requests.fetch_add(1, Ordering::SeqCst);
            let now = conn.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            conn.peak.fetch_max(now, Ordering::SeqCst);
            if req.uri().path() == "/gate" {
                let since = Instant::now();
                while !state.gate.load(Ordering::SeqCst) && since.elapsed() < HOLD_AT_MOST {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            if req.uri().path() == "/hold" {
                state.holding.fetch_add(1, Ordering::SeqCst);
                let since = Instant::now();
                while state.holding.load(Ordering::SeqCst) < state.hold
                    && since.elapsed() < HOLD_AT_MOST
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            conn.in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                index.to_string(),
            ))))
        }
    });
    tokio::spawn(async move {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(app_end), svc)
            .await;
    });
    let (mut tcp_read, mut tcp_write) = tcp.into_split();
    let (mut app_read, mut app_write) = tokio::io::split(relay_end);
    let up_conn = conn.clone();
    let up = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match tcp_read.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    up_conn.closed.store(true, Ordering::SeqCst);
                    let _ = app_write.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if !up_conn.frozen.load(Ordering::SeqCst)
                        && app_write.write_all(&buf[..n]).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = app_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if !conn.frozen.load(Ordering::SeqCst) && tcp_write.write_all(&buf[..n]).await.is_err()
            {
                break;
            }
        }
        let _ = tcp_write.shutdown().await;
    };
    tokio::join!(up, down);
}
