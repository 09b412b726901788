//! The floor under the handshake rate: the HBONE listener's TLS 1.3 server handshake run in
//! memory, with no sockets, no HTTP/2 and no Pingora. The server is configured as the
//! listener is (ring, TLS 1.2 and 1.3 offered, the SPIFFE client verifier with its
//! verified-chain cache, the store's certificate, ALPN `h2`, rustls' default session
//! tickets); the client is the load generator's. Only the server's calls are timed, on the
//! thread's CPU clock, so the figure is the CPU one handshake costs rustls and ring alone.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use filters::model::Identity;
use hbone::tls::{client_config, provider, server_resolver, CertStore, SpiffeClientVerifier};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConfig, ServerConnection};

/// CPU the thread has used so far.
pub(super) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The listener's rustls configuration, as Pingora builds it from our settings.
fn server_config(store: Arc<CertStore>, trust_domain: &str) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_client_cert_verifier(SpiffeClientVerifier::new(
            store.clone(),
            trust_domain.to_string(),
        ))
        .with_cert_resolver(server_resolver(store));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Collects in `buf` everything `from` has to send.
fn pump<D>(from: &mut rustls::ConnectionCommon<D>, buf: &mut Vec<u8>) {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).expect("writing to memory");
    }
}

/// The server and client configurations of the listener's handshake (full handshakes
/// only, as the socket measurement makes).
fn configs(
    server: Arc<CertStore>,
    client: Arc<CertStore>,
    server_id: &Identity,
) -> anyhow::Result<(Arc<ServerConfig>, Arc<rustls::ClientConfig>)> {
    let server_config = Arc::new(server_config(server, &server_id.trust_domain)?);
    let mut client_config = (*client_config(client, server_id.clone())).clone();
    client_config.resumption = rustls::client::Resumption::disabled();
    Ok((server_config, Arc::new(client_config)))
}

/// One full handshake in memory: the server's connection and the server CPU it took.
fn handshake(
    server_config: &Arc<ServerConfig>,
    client_config: &Arc<rustls::ClientConfig>,
    buf: &mut Vec<u8>,
) -> anyhow::Result<(ServerConnection, Duration)> {
    let name = ServerName::try_from("waypoint")?;
    let mut c = ClientConnection::new(client_config.clone(), name)?;
    let start = thread_cpu();
    let mut s = ServerConnection::new(server_config.clone())?;
    let mut server_time = thread_cpu() - start;
    // Client hello → server flight → client certificate and finished → tickets.
    for _ in 0..4 {
        pump(&mut c, buf);
        let start = thread_cpu();
        if !buf.is_empty() {
            s.read_tls(&mut Cursor::new(&buf))?;
            s.process_new_packets()?;
        }
        pump(&mut s, buf);
        server_time += thread_cpu() - start;
        if !buf.is_empty() {
            c.read_tls(&mut Cursor::new(&buf))?;
            c.process_new_packets()?;
        }
        if !s.is_handshaking() && !c.is_handshaking() && !s.wants_write() {
            break;
        }
    }
    anyhow::ensure!(
        !s.is_handshaking() && !c.is_handshaking(),
        "the in-memory handshake did not complete"
    );
    Ok((s, server_time))
}

/// Mean server CPU per full mutual-TLS handshake over `n` handshakes (after one warm-up).
pub fn server_handshake_cpu(
    server: Arc<CertStore>,
    client: Arc<CertStore>,
    server_id: &Identity,
    n: u32,
) -> anyhow::Result<Duration> {
    let (server_config, client_config) = configs(server, client, server_id)?;
    let mut spent = Duration::ZERO;
    let mut buf = Vec::with_capacity(16 * 1024);
    for i in 0..=n {
        let (_, server_time) = handshake(&server_config, &client_config, &mut buf)?;
        if i > 0 {
            spent += server_time;
        }
    }
    Ok(spent / n.max(1))
}

/// The cipher suite the load generator's client and the HBONE listener agree on. The
/// waypoint's upstream HBONE client is the same rustls client configuration
/// (`hbone::tls::client_config`, ring's default suites in ring's order) and the fake
/// destination's ztunnel the same ring provider with rustls' defaults, so the upstream leg
/// negotiates the same suite.
pub fn negotiated_suite(
    server: Arc<CertStore>,
    client: Arc<CertStore>,
    server_id: &Identity,
) -> anyhow::Result<rustls::SupportedCipherSuite> {
    let (server_config, client_config) = configs(server, client, server_id)?;
    let (s, _) = handshake(&server_config, &client_config, &mut Vec::new())?;
    s.negotiated_cipher_suite()
        .ok_or_else(|| anyhow::anyhow!("no cipher suite negotiated"))
}
