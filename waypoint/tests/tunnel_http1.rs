//! The tunnel's own HTTP/1.1 server (`proxy/h1`), byte for byte inside one tunnel: plain
//! requests pipelined in one write, a body split across frames with the next request after
//! it, a connection handed to hyper's server mid-way (chunked, `Expect`, `TE`), responses
//! framed the same whichever server wrote them, `connection: close`, and an unread body.

mod common;

use std::time::Duration;

use common::*;
use hbone::H2Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One response read off the tunnel.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header names and values in order, names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// Reads `n` responses (Content-Length or chunked bodies) from the tunnel, within 10 s.
async fn read_answers(tunnel: &mut H2Stream, n: usize, head_only: &[bool]) -> Vec<Answer> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        if let Some((answer, used)) = parse_answer(&buf, head_only.get(out.len()) == Some(&true)) {
            buf.drain(..used);
            out.push(answer);
            continue;
        }
        let mut chunk = [0u8; 65536];
        let read = tokio::time::timeout_at(deadline, tunnel.read(&mut chunk)).await;
        let got = read.expect("answers within 10 s").expect("tunnel readable");
        assert!(
            got > 0,
            "tunnel ended after {} answers: {:?}",
            out.len(),
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..got]);
    }
    assert!(
        buf.is_empty(),
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    out
}

fn parse_answer(buf: &[u8], head_only: bool) -> Option<(Answer, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = resp.parse(buf).expect("a valid response head") else {
        return None;
    };
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).to_string(),
            )
        })
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let rest = &buf[head..];
    let (body, used) = if head_only || status == 204 || status == 304 {
        (Vec::new(), 0)
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse().unwrap();
        if rest.len() < len {
            return None;
        }
        (rest[..len].to_vec(), len)
    } else if find("transfer-encoding").as_deref() == Some("chunked") {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size = usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).unwrap(), 16)
                .unwrap();
            let data = line_end + 2;
            if rest.len() < data + size + 2 {
                return None;
            }
            if size == 0 {
                break (body, data + 2);
            }
            body.extend_from_slice(&rest[data..data + size]);
            at = data + size + 2;
        }
    } else {
        panic!("a response without framing: {headers:?}");
    };
    Some((
        Answer {
            status,
            headers,
            body,
        },
        head + used,
    ))
}

#[tokio::test]
async fn pipelined_plain_requests_and_a_hand_off_to_hyper_share_one_tunnel() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
    // In one write: two plain requests, a chunked one (hyper's from there on), and a plain
    // one after it (served by hyper too, as the rest of the connection).
    tunnel
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: echo\r\n\r\n\
              POST /echo-body HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello\
              POST /echo-body HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
              GET /four HTTP/1.1\r\nHost: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let answers = read_answers(&mut tunnel, 4, &[]).await;
    assert_eq!(
        answers.iter().map(|a| a.status).collect::<Vec<_>>(),
        [200; 4]
    );
    assert_eq!(answers[0].json()["path"], "/one");
    assert_eq!(answers[1].body, b"hello");
    assert_eq!(answers[2].body, b"abc");
    assert_eq!(answers[3].json()["path"], "/four");
    // The tunnel stays open for more.
    tunnel
        .write_all(b"GET /five HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await
        .unwrap();
    let five = read_answers(&mut tunnel, 1, &[]).await;
    assert_eq!(five[0].json()["path"], "/five");
}

#[tokio::test]
async fn a_body_split_across_frames_is_forwarded_and_the_request_after_it_served() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
    tunnel
        .write_all(b"POST /echo-body HTTP/1.1\r\nHost: echo\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The rest of the body and the next request head, with its head split too.
    tunnel
        .write_all(b" bodyGET /next HTTP/1.1\r\nHo")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tunnel.write_all(b"st: echo\r\n\r\n").await.unwrap();
    let answers = read_answers(&mut tunnel, 2, &[]).await;
    assert_eq!(answers[0].body, b"hello body");
    assert_eq!(answers[1].json()["path"], "/next");
}

#[tokio::test]
async fn a_head_sent_a_byte_per_frame_is_served_and_so_is_the_next() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
    let long = "v".repeat(1500);
    let head = format!("GET /bytewise HTTP/1.1\r\nHost: echo\r\nX-Long: {long}\r\n\r\n");
    // Each write is one DATA frame of one byte.
    for b in head.as_bytes() {
        tunnel.write_all(&[*b]).await.unwrap();
    }
    let answer = read_answers(&mut tunnel, 1, &[]).await;
    assert_eq!(answer[0].json()["path"], "/bytewise");
    assert_eq!(answer[0].json()["headers"]["X-Long"][0], long.as_str());
    tunnel
        .write_all(b"GET /after HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await
        .unwrap();
    let after = read_answers(&mut tunnel, 1, &[]).await;
    assert_eq!(after[0].json()["path"], "/after");
}

#[tokio::test]
async fn responses_are_framed_alike_whichever_server_wrote_them() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let heads = |extra: &str| {
        format!(
            "GET /bytes?n=3000 HTTP/1.1\r\nHost: echo\r\n{extra}\r\n\
             HEAD /status/200 HTTP/1.1\r\nHost: echo\r\n{extra}\r\n\
             GET /status/204 HTTP/1.1\r\nHost: echo\r\n{extra}\r\n\
             GET /drip?n=3&gap=10ms HTTP/1.1\r\nHost: echo\r\n{extra}\r\n"
        )
    };
    // The same requests, served by this server and (with `TE: trailers`) by hyper's.
    let mut answers = Vec::new();
    for extra in ["", "TE: trailers\r\n"] {
        let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
        tunnel.write_all(heads(extra).as_bytes()).await.unwrap();
        answers.push(read_answers(&mut tunnel, 4, &[false, true, false, false]).await);
    }
    let shape = |a: &Answer| {
        let names: Vec<&str> = a
            .headers
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != "x-request-id")
            .collect();
        // (The HEAD answer's length counts the echoed request headers, which differ.)
        let framing = (
            a.header("content-length").is_some(),
            a.header("transfer-encoding").map(str::to_string),
        );
        (a.status, names.join(","), framing, a.body.clone())
    };
    for (plain, hyper) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(shape(plain), shape(hyper));
        assert!(
            plain.header("date").is_some_and(|d| d.ends_with(" GMT")),
            "{plain:?}"
        );
    }
    assert_eq!(answers[0][0].body.len(), 3000);
    assert_eq!(answers[0][3].header("transfer-encoding"), Some("chunked"));
    assert_eq!(answers[0][3].body, b"xxx");
}

/// Sends `request` on a new tunnel and reads until the waypoint ends the tunnel: the one
/// answer, which must be all that came.
async fn only_answer_before_the_end(h: &Harness, request: &[u8]) -> Answer {
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
    tunnel.write_all(request).await.unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut all))
        .await
        .expect("the tunnel ends")
        .unwrap();
    let (answer, used) = parse_answer(&all, false).expect("a whole response");
    assert_eq!(used, all.len(), "nothing after the answer");
    answer
}

#[tokio::test]
async fn connection_close_ends_the_tunnel_after_the_response() {
    let h = Harness::start(Spec::default()).await;
    let request = b"GET /bye HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n";
    let answer = only_answer_before_the_end(&h, request).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
}

#[tokio::test]
async fn a_request_body_left_unread_closes_the_tunnel_after_the_answer() {
    let h = Harness::start(Spec::default()).await;
    // Two Host headers: refused (400) before anything reads the 100-byte body, of which
    // only 10 bytes have come.
    let request =
        b"POST / HTTP/1.1\r\nHost: echo\r\nHost: other\r\nContent-Length: 100\r\n\r\n0123456789";
    let answer = only_answer_before_the_end(&h, request).await;
    assert_eq!(answer.status, 400);
    assert_eq!(h.connects(), 0, "nothing reached a pod");
}
