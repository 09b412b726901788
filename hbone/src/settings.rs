//! HTTP/2 settings shared by every HBONE connection, matching ztunnel's.

use std::time::Duration;

use h2::{Ping, PingPong};

/// Per-stream receive window.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection receive window.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest frame we accept.
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Concurrent CONNECT streams we accept per downstream connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// How often an idle connection is pinged.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Read buffer under TLS, on the listener and on upstream HBONE connections: one full TLS
/// record (16 KiB of plaintext plus header and AEAD overhead).
/// - Listener: Pingora's default is 64 KiB, zeroed for every connection; the memset
///   showed up in the handshake profile.
/// - Upstream: rustls reads the socket 4 KiB at a time, so without a buffer a 16 KiB
///   response took five `recvfrom`; with it, one or two.
pub const TLS_READ_BUFFER: usize = 16 * 1024 + 512;

/// The HTTP/2 server builder for the HBONE listener.
pub fn server_builder() -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_send_buffer_size(MAX_FRAME_SIZE as usize);
    b
}

/// The HTTP/2 client builder for upstream HBONE connections.
pub fn client_builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    // Until the peer's SETTINGS arrive, assume ztunnel's limit rather than "unbounded", so the
    // pool opens a second connection instead of queueing streams on the first.
    b.initial_max_send_streams(MAX_CONCURRENT_STREAMS as usize)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_FRAME_SIZE as usize);
    b
}

/// Pings every [`KEEPALIVE_INTERVAL`]; resolves when a ping goes unanswered for
/// [`KEEPALIVE_TIMEOUT`] (or the connection is gone). The caller then drops the connection.
pub async fn keepalive(mut ping: PingPong) -> &'static str {
    {
        loop {
            tokio::time::sleep(KEEPALIVE_INTERVAL).await;
            if ping.send_ping(Ping::opaque()).is_err() {
                return "connection closed";
            }
            match tokio::time::timeout(
                KEEPALIVE_TIMEOUT,
                std::future::poll_fn(|cx| ping.poll_pong(cx)),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return "connection closed",
                Err(_) => return "keepalive ping timed out",
            }
        }
    }
}
