//! A listener that never accepts and whose accept queue is full: Linux drops the SYN of
//! every further connection (with `tcp_abort_on_overflow` off, its default), so
//! connecting to it neither succeeds nor fails until the client gives up. A stand-in, on
//! loopback, for an address whose packets go unanswered.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Listens on its address with a backlog of one, filled by a connection of its own.
pub struct FullBacklog {
    /// Where it listens.
    pub addr: SocketAddr,
    _listener: TcpListener,
    _filler: TcpStream,
}

impl FullBacklog {
    /// Binds `addr` (an IPv4 address) and fills its accept queue.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(addr)?;
        let listener = socket.listen(0)?;
        let addr = listener.local_addr()?;
        let filler = TcpStream::connect(addr).await?;
        Ok(Self {
            addr,
            _listener: listener,
            _filler: filler,
        })
    }

    /// Whether a connection attempt to it is still pending after `wait` (the queue is
    /// full, as the tests relying on it need).
    pub async fn hangs(&self, wait: std::time::Duration) -> bool {
        tokio::time::timeout(wait, TcpStream::connect(self.addr))
            .await
            .is_err()
    }
}
