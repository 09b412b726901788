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
fn thread_cpu() -> Duration {
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

/// Mean server CPU per full mutual-TLS handshake over `n` handshakes (after one warm-up).
pub fn server_handshake_cpu(
    server: Arc<CertStore>,
    client: Arc<CertStore>,
    server_id: &Identity,
    n: u32,
) -> anyhow::Result<Duration> {
    let server_config = Arc::new(server_config(server, &server_id.trust_domain)?);
    // Full handshakes only, as the socket measurement makes.
    let mut client_config = (*client_config(client, server_id.clone())).clone();
    client_config.resumption = rustls::client::Resumption::disabled();
    let client_config = Arc::new(client_config);
    let name = ServerName::try_from("waypoint")?;
    let mut spent = Duration::ZERO;
    let mut buf = Vec::with_capacity(16 * 1024);
    for i in 0..=n {
        let mut c = ClientConnection::new(client_config.clone(), name.clone())?;
        let start = thread_cpu();
        let mut s = ServerConnection::new(server_config.clone())?;
        let mut server_time = thread_cpu() - start;
        // Client hello → server flight → client certificate and finished → tickets.
        for _ in 0..4 {
            pump(&mut c, &mut buf);
            let start = thread_cpu();
            if !buf.is_empty() {
                s.read_tls(&mut Cursor::new(&buf))?;
                s.process_new_packets()?;
            }
            pump(&mut s, &mut buf);
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
        if i > 0 {
            spent += server_time;
        }
    }
    Ok(spent / n.max(1))
}
