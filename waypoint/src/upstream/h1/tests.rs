//! The connection against a scripted endpoint on a loopback socket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Keeps the connections handed back (boxed, as the pool gets them).
#[allow(clippy::vec_box)]
#[derive(Clone, Default)]
struct Shelf(Arc<Mutex<Vec<Box<Connection>>>>);

impl Home for Shelf {
    fn checkin(self, conn: Box<Connection>) {
        self.0.lock().unwrap().push(conn);
    }
}

impl Shelf {
    fn take(&self) -> Option<Box<Connection>> {
        self.0.lock().unwrap().pop()
    }
}

/// An endpoint that reads one request head (and `body` more bytes), answers each
/// accepted connection's requests with the next of `answers`, and reports what it read.
async fn endpoint(
    answers: Vec<(&'static [u8], usize)>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for (answer, body) in answers {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let head = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            while got.len() < head + body {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            tx.send(got).unwrap();
            s.write_all(answer).await.unwrap();
        }
    });
    (addr, rx)
}

async fn connect(addr: std::net::SocketAddr) -> Box<Connection> {
    Connection::new(UpstreamIo::Plain(TcpStream::connect(addr).await.unwrap()))
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", "echo")
        .body(Body::default())
        .unwrap()
}

#[tokio::test]
async fn a_content_length_response_is_read_and_the_connection_comes_back() {
    let (addr, mut seen) = endpoint(vec![
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            0,
        ),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 0),
    ])
    .await;
    let shelf = Shelf::default();
    let resp = send(connect(addr).await, get("/one?x=1"), shelf.clone())
        .await
        .ok()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-a"], "1");
    assert_eq!(resp.body().size_hint().exact(), Some(5));
    assert!(shelf.take().is_none(), "not back before its body is read");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    assert_eq!(
        seen.recv().await.unwrap(),
        b"GET /one?x=1 HTTP/1.1\r\nhost: echo\r\n\r\n"
    );
    let mut conn = shelf.take().expect("back in the pool");
    assert!(conn.is_open());
    assert_eq!(conn.served, 1);
    let resp = send(conn, get("/two"), shelf.clone()).await.ok().unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.body().is_end_stream());
    assert!(
        shelf.take().is_some(),
        "a body-less answer gives it back at once"
    );
}

#[tokio::test]
async fn a_chunked_request_and_a_chunked_response_with_trailers() {
    let (addr, mut seen) = endpoint(vec![(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\ngrpc-status: 0\r\n\r\n",
        15,
    )])
    .await;
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<http_body::Frame<bytes::Bytes>, filters::body::BoxError>,
    >(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = Request::builder()
        .method("POST")
        .uri("/up")
        .header("host", "echo")
        .body(Body::new(body))
        .unwrap();
    tokio::spawn(async move {
        let hello = http_body::Frame::data(bytes::Bytes::from_static(b"hello"));
        tx.send(Ok(hello)).await.unwrap();
    });
    let shelf = Shelf::default();
    let resp = send(connect(addr).await, req, shelf.clone())
        .await
        .ok()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"abcde");
    let got = String::from_utf8(seen.recv().await.unwrap()).unwrap();
    assert!(got.starts_with("POST /up HTTP/1.1\r\n"), "{got}");
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{got}");
    assert!(shelf.take().is_some());
}

#[tokio::test]
async fn a_response_without_length_ends_with_the_connection_which_is_not_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
            .await
            .unwrap();
    });
    let shelf = Shelf::default();
    let resp = send(connect(addr).await, get("/"), shelf.clone())
        .await
        .ok()
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"until close");
    assert!(shelf.take().is_none());
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_a_closed_idle_connection_is_seen() {
    let (addr, _seen) = endpoint(vec![(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        0,
    )])
    .await;
    let resp = send(connect(addr).await, get("/"), Shelf::default())
        .await
        .ok()
        .unwrap();
    let e = resp.into_body().collect().await.unwrap_err();
    assert!(
        e.to_string().contains("before the response body ended"),
        "{e}"
    );

    // An endpoint that closes an idle connection: the pool sees it before using it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        drop(s);
    });
    let mut conn = connect(addr).await;
    let closed = async {
        while conn.is_open() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the close is noticed");
}

#[tokio::test]
async fn a_request_on_a_connection_that_cannot_be_written_comes_back_unsent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await.unwrap() });
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _server = accepted.await.unwrap();
    // Our side closed for writing: nothing of the request can leave.
    stream.shutdown().await.unwrap();
    match send(
        Connection::new(UpstreamIo::Plain(stream)),
        get("/again"),
        Shelf::default(),
    )
    .await
    {
        Err(SendError::Unsent(back, _)) => assert_eq!(back.uri(), "/again"),
        Err(SendError::Failed(e)) => panic!("failed rather than handed back: {e}"),
        Ok(_) => panic!("answered"),
    }
}

/// An HBONE stream over memory as the connection's I/O, and the endpoint's end of it:
/// what the endpoint sends on it arrives as DATA frames of exactly those bytes.
async fn hbone_connection() -> (h2::SendStream<bytes::Bytes>, Box<Connection>) {
    let (stream, peer, mut body) = hbone::testing::stream_pair().await;
    // What the waypoint writes (the request) is read and dropped.
    tokio::spawn(async move {
        while let Some(Ok(d)) = body.data().await {
            let _ = body.flow_control().release_capacity(d.len());
        }
    });
    (peer, Connection::new(UpstreamIo::Hbone(stream)))
}

#[tokio::test]
async fn body_frames_of_an_hbone_stream_are_taken_as_received() {
    let (mut peer, conn) = hbone_connection().await;
    let data = |s: &'static str| bytes::Bytes::from_static(s.as_bytes());
    peer.send_data(
        data("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nhel"),
        false,
    )
    .unwrap();
    let shelf = Shelf::default();
    let resp = send(conn, get("/"), shelf.clone()).await.ok().unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"hel");
    // A frame of body alone comes through as it is, the very bytes h2 received.
    let middle = data("lo wor");
    peer.send_data(middle.clone(), false).unwrap();
    let got = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(got, middle);
    // The last frame carries the body's end and bytes past it: the body stops at its
    // length, and the connection, with unasked bytes, is not reused.
    peer.send_data(data("ld!HTTP/1.1"), false).unwrap();
    let last = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&last[..], b"ld!");
    assert!(body.frame().await.is_none());
    assert!(shelf.take().is_none(), "bytes past the body: not reused");
}

#[tokio::test]
async fn a_head_sent_a_byte_per_frame_is_parsed_once_per_line_end() {
    let (mut peer, conn) = hbone_connection().await;
    let head: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\nhi";
    for b in head {
        peer.send_data(bytes::Bytes::copy_from_slice(&[*b]), false)
            .unwrap();
    }
    let shelf = Shelf::default();
    let resp = send(conn, get("/"), shelf.clone()).await.ok().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-pad"].len(), 40);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hi");
    let conn = shelf.take().expect("reusable");
    // Parsed when a piece brought a line end, not for each of the 100-odd pieces.
    let line_ends = head.iter().filter(|&&b| b == b'\n').count();
    assert!(
        conn.parses <= line_ends,
        "{} parses for {line_ends} line ends",
        conn.parses
    );
}
