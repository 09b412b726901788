//! A pod app that expects a PROXY protocol header (HAProxy's versions 1 and 2) at the
//! start of every connection: it parses and records the header, then splices the rest of
//! the connection to the app behind it (the echo app in process, or a server such as a
//! TLS-only app), as a PROXY-aware load balancer in front of an app would. A connection
//! without a valid header is closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A PROXY protocol header as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// 1 or 2.
    pub version: u8,
    /// The source and destination, `None` for `UNKNOWN` (v1) or `LOCAL` (v2).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why a connection's header was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The connection failed or ended first.
    #[error("reading the header: {0}")]
    Io(#[from] std::io::Error),
    /// Not a PROXY protocol header.
    #[error("not a PROXY protocol header: {0}")]
    Malformed(String),
}

/// The version 2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads one header from the start of `io`, byte by byte for v1 (nothing past it is read).
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<Received, HeaderError> {
    let bad = |why: &str| HeaderError::Malformed(why.to_string());
    let mut start = [0u8; 12];
    io.read_exact(&mut start[..6]).await?;
    if &start[..6] == b"PROXY " {
        let mut line = b"PROXY ".to_vec();
        while !line.ends_with(b"\r\n") {
            if line.len() > 107 {
                return Err(bad("v1 line longer than 107 bytes"));
            }
            line.push(io.read_u8().await?);
        }
        let text = std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| bad("not text"))?;
        let parts: Vec<&str> = text.split(' ').collect();
        return match parts.as_slice() {
            ["PROXY", "UNKNOWN", ..] => Ok(Received {
                version: 1,
                addresses: None,
            }),
            ["PROXY", family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
                let ip = |s: &str| -> Result<IpAddr, HeaderError> {
                    let ip: IpAddr = s.parse().map_err(|_| bad("address"))?;
                    if ip.is_ipv4() != (*family == "TCP4") {
                        return Err(bad("address of the wrong family"));
                    }
                    Ok(ip)
                };
                let port = |s: &str| s.parse::<u16>().map_err(|_| bad("port"));
                Ok(Received {
                    version: 1,
                    addresses: Some((
                        SocketAddr::new(ip(src)?, port(sport)?),
                        SocketAddr::new(ip(dst)?, port(dport)?),
                    )),
                })
            }
            _ => Err(bad(text)),
        };
    }
    io.read_exact(&mut start[6..]).await?;
    if &start != V2_SIGNATURE {
        return Err(bad("neither v1 nor the v2 signature"));
    }
    let mut fixed = [0u8; 4];
    io.read_exact(&mut fixed).await?;
    let len = u16::from_be_bytes([fixed[2], fixed[3]]) as usize;
    let mut rest = vec![0u8; len];
    io.read_exact(&mut rest).await?;
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let addresses = match (fixed[0], fixed[1]) {
        (0x20, _) => None,
        (0x21, 0x11) if len >= 12 => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            Some((
                SocketAddr::new(ip(&rest[0..4]), port(&rest[8..10])),
                SocketAddr::new(ip(&rest[4..8]), port(&rest[10..12])),
            ))
        }
        (0x21, 0x21) if len >= 36 => {
            let ip =
                |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes")));
            Some((
                SocketAddr::new(ip(&rest[0..16]), port(&rest[32..34])),
                SocketAddr::new(ip(&rest[16..32]), port(&rest[34..36])),
            ))
        }
        (vc, fam) => return Err(bad(&format!("v2 command {vc:#x}, family {fam:#x}"))),
    };
    Ok(Received {
        version: 2,
        addresses,
    })
}

/// What serves a connection once its header is read.
#[derive(Debug, Clone)]
pub enum Behind {
    /// The echo app (HTTP/1.1 and h2c), in process.
    Echo(crate::echo::EchoIdentity),
    /// A server the rest of the connection is spliced to.
    Forward(SocketAddr),
}

/// A running PROXY front; stops when dropped.
pub struct ProxyFront {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for ProxyFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ProxyFront {
    /// Binds `127.0.0.1:0`; each connection's header is recorded, then `behind` serves the
    /// rest of the connection.
    pub async fn start(behind: Behind) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let record = record.clone();
                let behind = behind.clone();
                tokio::spawn(async move {
                    let header =
                        tokio::time::timeout(Duration::from_secs(5), read_header(&mut tcp)).await;
                    match header {
                        Ok(Ok(h)) => record.lock().expect("lock").push(h),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "PROXY front: connection refused");
                            return;
                        }
                        Err(_) => return,
                    }
                    match behind {
                        Behind::Echo(who) => {
                            let who = Arc::new(who);
                            let svc = hyper::service::service_fn(move |req| {
                                crate::echo::handle(who.clone(), req)
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tcp), svc)
                            .await;
                        }
                        Behind::Forward(to) => {
                            if let Ok(mut app) = TcpStream::connect(to).await {
                                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut app).await;
                            }
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            received,
            task,
        })
    }

    /// The headers received so far, one per connection, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_the_specs_examples() {
        let mut v1: &[u8] = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET /";
        let h = read_header(&mut v1).await.unwrap();
        assert_eq!(
            h.addresses,
            Some((
                "192.168.0.1:56324".parse().unwrap(),
                "192.168.0.11:443".parse().unwrap()
            ))
        );
        assert_eq!(v1, b"GET /", "nothing past the header is consumed");
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 0]);
        let h = read_header(&mut v2.as_slice()).await.unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(
            h.addresses,
            Some((
                "10.0.0.1:80".parse().unwrap(),
                "10.0.0.2:256".parse().unwrap()
            ))
        );
        assert!(read_header(&mut &b"GET / HTTP/1.1\r\n\r\n"[..])
            .await
            .is_err());
    }
}
