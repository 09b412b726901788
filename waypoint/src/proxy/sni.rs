//! The server name of a TLS ClientHello read from the start of a tunnel, without
//! terminating TLS (Envoy's TLS inspector): the bytes read are kept to be sent on to the
//! upstream unchanged.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest wait for a complete ClientHello (Envoy's default `listener_filters_timeout`).
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// The most bytes read looking for a complete ClientHello.
pub const LIMIT: usize = 64 * 1024;

/// Why no server name could be read.
#[derive(Debug, thiserror::Error)]
pub enum SniError {
    /// The client sent no complete ClientHello in time.
    #[error("no TLS ClientHello within {0:?}")]
    Timeout(Duration),
    /// The client closed, or reading failed, before a complete ClientHello.
    #[error("the client ended before a complete TLS ClientHello: {0}")]
    Ended(String),
    /// The bytes are not a TLS ClientHello (or one larger than [`LIMIT`]).
    #[error("not a TLS ClientHello: {0}")]
    NotTls(String),
}

/// Reads from `stream` until a complete ClientHello: every byte read, and its SNI (`None`
/// when it sends none).
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Vec<u8>, Option<String>), SniError> {
    tokio::time::timeout(timeout, read(stream))
        .await
        .map_err(|_| SniError::Timeout(timeout))?
}

async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Vec<u8>, Option<String>), SniError> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| SniError::Ended(e.to_string()))?;
        if n == 0 {
            return Err(SniError::Ended("end of stream".into()));
        }
        seen.extend_from_slice(&chunk[..n]);
        if seen.len() > LIMIT {
            return Err(SniError::NotTls(format!("no ClientHello in {LIMIT} bytes")));
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            acceptor
                .read_tls(&mut fresh)
                .map_err(|e| SniError::NotTls(e.to_string()))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(str::to_string);
                return Ok((seen, name));
            }
            Ok(None) => {}
            Err((e, _)) => return Err(SniError::NotTls(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first flight of a rustls client for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(hbone::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(config),
            name.to_string().try_into().unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn the_server_name_is_read_and_every_byte_kept() {
        let hello = client_hello("api.example.test");
        let mut input: &[u8] = &hello;
        let (seen, name) = read_client_hello(&mut input, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("api.example.test"));
        assert_eq!(seen, hello);
    }

    #[tokio::test]
    async fn other_bytes_are_not_tls() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
        let e = read_client_hello(&mut input, Duration::from_secs(1)).await;
        assert!(matches!(e, Err(SniError::NotTls(_))), "{e:?}");
        let mut short: &[u8] = &client_hello("a.test")[..20];
        let e = read_client_hello(&mut short, Duration::from_secs(1)).await;
        assert!(matches!(e, Err(SniError::Ended(_))), "{e:?}");
    }
}
