//! A TCP tunnel between two HTTP/2 streams (the usual case: ztunnel's HBONE tunnel in, an
//! HBONE tunnel to the destination's ztunnel out) relays each DATA frame's payload as h2
//! received it: no copy into a relay buffer and none into the other stream's write buffer.
//! Other pairs (plain TCP, originated TLS, an HTTP/1.1 proxy tunnel) are copied as bytes.
//!
//! Semantics are `tokio::io::copy_bidirectional`'s: each direction ends with its source
//! (the other side's send half is then ended, a half-close), the relay finishes when both
//! have, and the first error ends it.

use std::future::poll_fn;
use std::io;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hbone::H2Stream;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::upstream::http_tunnel::TunnelIo;
use crate::upstream::UpstreamIo;

/// One side of a TCP tunnel: a byte stream, and its HTTP/2 stream when it is one.
pub trait Side: AsyncRead + AsyncWrite + Unpin {
    /// The HTTP/2 stream carrying this side, whose frames can be relayed as they are.
    fn frames(&mut self) -> Option<&mut H2Stream> {
        None
    }
}

impl Side for H2Stream {
    fn frames(&mut self) -> Option<&mut H2Stream> {
        Some(self)
    }
}

impl Side for TunnelIo {
    fn frames(&mut self) -> Option<&mut H2Stream> {
        match self {
            TunnelIo::Direct(UpstreamIo::Hbone(s)) | TunnelIo::Http2(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
impl Side for tokio::io::DuplexStream {}

/// Which side bytes were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client's tunnel.
    Down,
    /// The endpoint's.
    Up,
}

/// One direction: the payload taken from its source and not yet all sent, and whether
/// its source has ended.
#[derive(Default)]
struct Half {
    pending: Bytes,
    done: bool,
}

impl Half {
    /// Moves frames from `from` to `to` until it would wait or `from` ends (then `to`'s
    /// send half ends); `read` is told each payload's length.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut H2Stream,
        to: &mut H2Stream,
        read: &mut impl FnMut(usize),
    ) -> Poll<io::Result<()>> {
        while !self.done {
            if !self.pending.is_empty() {
                ready!(to.poll_send(cx, &mut self.pending))?;
                continue;
            }
            match ready!(from.poll_recv(cx))? {
                Some(data) => {
                    read(data.len());
                    self.pending = data;
                }
                None => {
                    to.end_stream();
                    self.done = true;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Relays `down` and `up` both ways until both directions end or one fails; `read` is
/// told each payload taken and which side it came from. Returns the bytes read from
/// `down` and from `up`.
pub async fn relay(
    down: &mut H2Stream,
    up: &mut H2Stream,
    mut read: impl FnMut(Origin, usize),
) -> io::Result<(u64, u64)> {
    let (mut to_up, mut to_down) = (Half::default(), Half::default());
    let (mut from_down, mut from_up) = (0u64, 0u64);
    poll_fn(|cx| {
        let a = to_up.poll(cx, down, up, &mut |n| {
            from_down += n as u64;
            read(Origin::Down, n);
        })?;
        let b = to_down.poll(cx, up, down, &mut |n| {
            from_up += n as u64;
            read(Origin::Up, n);
        })?;
        match (a, b) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok::<_, io::Error>(())),
            _ => Poll::Pending,
        }
    })
    .await?;
    Ok((from_down, from_up))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use h2::RecvStream;

    /// Everything `recv` delivers until its end, with flow control released.
    async fn read_all(recv: &mut RecvStream) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some(data) = recv.data().await {
            let data = data.expect("data frame");
            let _ = recv.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        got
    }

    #[tokio::test]
    async fn frames_cross_both_ways_and_each_side_ends_on_its_own() {
        let (mut down, mut client, mut client_in) = hbone::testing::stream_pair().await;
        let (mut up, mut endpoint, mut endpoint_in) = hbone::testing::stream_pair().await;
        let mut seen = Vec::new();
        let relayed = tokio::spawn(async move {
            let r = relay(&mut down, &mut up, |from, n| seen.push((from, n))).await;
            (r, seen)
        });
        client
            .send_data(Bytes::from_static(b"GET / "), false)
            .unwrap();
        client
            .send_data(Bytes::from_static(b"HTTP/1.1\r\n\r\n"), true)
            .unwrap();
        // The client's end reaches the endpoint as the end of its stream (a half-close)...
        assert_eq!(read_all(&mut endpoint_in).await, b"GET / HTTP/1.1\r\n\r\n");
        // ...while the other direction still carries the answer.
        endpoint
            .send_data(Bytes::from_static(b"HTTP/1.1 200 OK\r\n"), false)
            .unwrap();
        endpoint
            .send_data(Bytes::from_static(b"\r\n"), true)
            .unwrap();
        assert_eq!(read_all(&mut client_in).await, b"HTTP/1.1 200 OK\r\n\r\n");
        let (result, seen) = relayed.await.unwrap();
        assert_eq!(result.unwrap(), (18, 19));
        assert_eq!(
            seen,
            [
                (Origin::Down, 6),
                (Origin::Down, 12),
                (Origin::Up, 17),
                (Origin::Up, 2)
            ]
        );
    }

    #[tokio::test]
    async fn a_reset_on_one_side_ends_the_relay_with_an_error() {
        let (mut down, mut client, _client_in) = hbone::testing::stream_pair().await;
        let (mut up, mut endpoint, _endpoint_in) = hbone::testing::stream_pair().await;
        let relayed = tokio::spawn(async move { relay(&mut down, &mut up, |_, _| {}).await });
        client
            .send_data(Bytes::from_static(b"hello"), false)
            .unwrap();
        endpoint.send_reset(h2::Reason::INTERNAL_ERROR);
        let err = relayed.await.unwrap().unwrap_err();
        // Met sending to the reset stream (closed) or reading from it (reset).
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
    }
}
