//! Protocol detection for ports whose protocol is not declared.
//!
//! Reads up to the length of the HTTP/2 preface, waiting at most the detection timeout:
//! the h2c preface means HTTP/2, an HTTP/1 request line means HTTP/1, anything else (or
//! silence, as with server-first protocols) means TCP. Declared HTTP ports skip the wait
//! for TCP but still tell HTTP/1 from h2c the same way.

use std::io;
use std::time::Duration;

use filters::model::Protocol;

use hbone::H2Stream;

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), gRPC included.
    Http2,
    /// Anything else.
    Tcp,
}

/// Classifies the first bytes of a tunnel.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    // An HTTP/1 request line starts with a method token and a space.
    let token = prefix.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match prefix.get(token) {
        Some(b' ') if token > 0 => Some(Detected::Http1),
        None if token == prefix.len() && token < 8 => None, // maybe a method, need more
        _ => Some(Detected::Tcp),
    }
}

/// Decides how to handle the tunnel, reading (not consuming) its first bytes as needed.
/// An undeclared port waits `timeout` for decisive bytes, then treats the tunnel as TCP; a
/// declared HTTP port waits at most `header_timeout` for the client's first bytes, then the
/// tunnel is refused (`TimedOut`), as a request's headers would be.
pub async fn detect(
    stream: &mut H2Stream,
    declared: Protocol,
    timeout: Duration,
    header_timeout: Duration,
) -> io::Result<Detected> {
    if declared == Protocol::Tcp {
        return Ok(Detected::Tcp);
    }
    let sniff = async {
        loop {
            let have = stream.buffered().len();
            if let Some(d) = classify(stream.buffered()) {
                return Ok::<_, io::Error>(d);
            }
            let got = stream.fill(have + 1).await?.len();
            if got == have {
                // The client closed its side without sending anything decisive.
                return Ok(Detected::Tcp);
            }
        }
    };
    if declared.is_http() {
        // Clients of declared HTTP ports always speak first.
        let sniffed = tokio::time::timeout(header_timeout, sniff)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP request line or preface in time",
                )
            })?;
        return match sniffed? {
            Detected::Tcp => Ok(Detected::Http1),
            d => Ok(d),
        };
    }
    tokio::time::timeout(timeout, sniff)
        .await
        .unwrap_or(Ok(Detected::Tcp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_prefixes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Tcp));
        assert_eq!(classify(b"hello world"), Some(Detected::Tcp));
        assert_eq!(classify(b"SSH-2.0"), Some(Detected::Tcp));
        assert_eq!(classify(b""), None);
    }
}
