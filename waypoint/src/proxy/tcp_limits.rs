//! The time limits of a TCP tunnel (the TCP proxy's `idle_timeout` and
//! `max_downstream_connection_duration`; DestinationRule `connectionPool.tcp.idleTimeout`
//! and `maxConnectionDuration`): each side of the tunnel is read through [`Watched`], which
//! counts the bytes read and pushes the idle deadline back, and [`run`] copies both ways
//! until they end or a limit closes both sides.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use filters::model::TcpLimits;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::frame_relay::{relay, Origin, Side};
use super::stream_idle::StreamIdle;

/// How a copy under limits ended.
pub enum Outcome {
    /// Both directions ended (or one failed): what `copy_bidirectional` returned.
    Finished(std::io::Result<(u64, u64)>),
    /// No byte crossed either way for the idle timeout; bytes read from each side.
    Idle { received: u64, sent: u64 },
    /// The tunnel reached its longest duration; bytes read from each side.
    Duration { received: u64, sent: u64 },
}

/// Copies `down` (the client) and `up` (the endpoint) both ways until they end or a limit
/// of `limits` closes the tunnel; `accepted` is when the tunnel was accepted. Dropping
/// both sides on a limit closes them.
pub async fn run<D: Side, U: Side>(
    down: D,
    up: U,
    limits: TcpLimits,
    accepted: Instant,
) -> Outcome {
    let idle = StreamIdle::start(limits.idle_timeout, None);
    let mut down = Watched::new(down, idle.clone());
    let mut up = Watched::new(up, idle.clone());
    let (received, sent) = (down.read.clone(), up.read.clone());
    let idle_expired = async {
        match &idle {
            Some(i) => {
                i.expired().await;
            }
            None => std::future::pending().await,
        }
    };
    let too_long = async {
        match limits.max_duration {
            Some(d) => tokio::time::sleep_until(accepted + d).await,
            None => std::future::pending().await,
        }
    };
    let counted = || {
        (
            received.load(Ordering::Relaxed),
            sent.load(Ordering::Relaxed),
        )
    };
    // Two HTTP/2 streams relay their frames as received; other pairs are copied as bytes.
    let copy = async {
        match (down.inner.frames(), up.inner.frames()) {
            (Some(d), Some(u)) => {
                let (from_down, from_up, idle) = (&down.read, &up.read, &down.idle);
                relay(d, u, |from, n| {
                    let counter = if from == Origin::Down {
                        from_down
                    } else {
                        from_up
                    };
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    if let Some(idle) = idle {
                        idle.touch();
                    }
                })
                .await
            }
            _ => tokio::io::copy_bidirectional(&mut down, &mut up).await,
        }
    };
    tokio::select! {
        r = copy => Outcome::Finished(r),
        () = idle_expired => {
            let (received, sent) = counted();
            Outcome::Idle { received, sent }
        }
        () = too_long => {
            let (received, sent) = counted();
            Outcome::Duration { received, sent }
        }
    }
}

/// One side of a tunnel: each read that brings bytes counts them and is activity.
struct Watched<S> {
    inner: S,
    idle: Option<Arc<StreamIdle>>,
    read: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    fn new(inner: S, idle: Option<Arc<StreamIdle>>) -> Self {
        Self {
            inner,
            idle,
            read: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            if let Some(idle) = &self.idle {
                idle.touch();
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_an_idle_limited_copy_open_and_silence_ends_it() {
        let (down, mut client) = tokio::io::duplex(64);
        let (up, _server) = tokio::io::duplex(64);
        let limits = TcpLimits {
            idle_timeout: Some(Duration::from_secs(1)),
            max_duration: None,
        };
        let t0 = Instant::now();
        let copy = tokio::spawn(run(down, up, limits, t0));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            client.write_all(b"x").await.unwrap();
        }
        match copy.await.unwrap() {
            Outcome::Idle { received, sent } => assert_eq!((received, sent), (3, 0)),
            _ => panic!("not ended by the idle timeout"),
        }
        assert_eq!(t0.elapsed(), Duration::from_millis(3100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_duration_ends_a_busy_copy() {
        let (down, mut client) = tokio::io::duplex(64);
        let (up, _server) = tokio::io::duplex(64);
        let limits = TcpLimits {
            idle_timeout: Some(Duration::from_secs(1)),
            max_duration: Some(Duration::from_secs(2)),
        };
        let t0 = Instant::now();
        let copy = tokio::spawn(run(down, up, limits, t0));
        let writing = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if client.write_all(b"x").await.is_err() {
                    break;
                }
            }
        });
        assert!(matches!(copy.await.unwrap(), Outcome::Duration { .. }));
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        writing.abort();
    }
}
