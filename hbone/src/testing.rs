//! Test helpers (feature `testing`, for tests only): an HBONE stream over memory.

use bytes::Bytes;
use h2::{RecvStream, SendStream};

use crate::H2Stream;

/// One CONNECT stream of an in-memory HTTP/2 connection: the server's end as an
/// [`H2Stream`] and the client's two halves. What the client sends arrives as DATA
/// frames of exactly those bytes; what the server end writes, the client's half reads.
pub async fn stream_pair() -> (H2Stream, SendStream<Bytes>, RecvStream) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(b).await.expect("h2 server handshake");
        let (req, mut respond) = conn.accept().await.expect("a stream").expect("a request");
        let send = respond
            .send_response(http::Response::new(()), false)
            .expect("CONNECT response");
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        H2Stream::new(send, req.into_body())
    });
    let (client, conn) = h2::client::handshake(a).await.expect("h2 client handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("h2 client ready");
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("127.0.0.1:80")
        .body(())
        .expect("CONNECT request");
    let (resp, send) = client.send_request(req, false).expect("CONNECT sent");
    let stream = server.await.expect("server end");
    let recv = resp.await.expect("CONNECT answered").into_body();
    (stream, send, recv)
}
