//! TCP tunnels: bytes copied unchanged, half-close respected, server-first protocols.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use testkit::mesh::Port;
use testkit::ztunnel::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn spec() -> Spec {
    Spec {
        ports: vec![
            Port {
                name: "tcp-echo",
                port: 9000,
                target: 9000,
            },
            // No protocol in the name: detected, and silence means TCP.
            Port {
                name: "banner",
                port: 3306,
                target: 3306,
            },
        ],
        apps: HashMap::from([
            (9000, App::TcpEcho),
            (3306, App::ServerFirst("220 ready\r\n")),
        ]),
        ..Spec::default()
    }
}

#[tokio::test]
async fn tcp_bytes_and_half_close() {
    let h = Harness::start(spec()).await;
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(9000), &[]).await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    tunnel.write_all(&payload).await.unwrap();
    // Half-close: we are done sending, but the echo must still reach us, then EOF.
    tunnel.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut got))
        .await
        .expect("EOF after half-close")
        .unwrap();
    assert_eq!(got, payload);
}

#[tokio::test]
async fn server_first_protocol_on_undeclared_port() {
    let h = Harness::start(spec()).await;
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(3306), &[]).await.unwrap();
    // We send nothing: the server speaks first.
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut banner))
        .await
        .expect("banner")
        .unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    tunnel.write_all(b"QUIT\r\n").await.unwrap();
    let mut echo = [0u8; 6];
    tunnel.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"QUIT\r\n");
}

/// More than twice the HBONE stream window (4 MiB) each way at once: the relay between the
/// two HTTP/2 streams waits for flow-control capacity on both legs without losing or
/// reordering a byte.
#[tokio::test]
async fn a_transfer_larger_than_the_stream_windows_crosses_both_ways() {
    let h = Harness::start(spec()).await;
    let conn = h.client().connect().await.unwrap();
    let tunnel = conn.tunnel(authority(9000), &[]).await.unwrap();
    let (mut rx, mut tx) = tokio::io::split(tunnel);
    let payload: Vec<u8> = (0..9 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(64 * 1024) {
            tx.write_all(chunk).await.unwrap();
        }
        tx.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(payload.len());
    tokio::time::timeout(Duration::from_secs(60), rx.read_to_end(&mut got))
        .await
        .expect("the echo ends within the bound")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "bytes lost or reordered");
}
