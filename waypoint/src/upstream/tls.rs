//! TLS originated to an endpoint inside its tunnel (DestinationRule `tls`): client
//! configurations built from the port's settings (their files re-read at most once a
//! minute, so rotated certificates are picked up; inline secrets rotate with the settings
//! themselves), and the handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use filters::model::UpstreamTls;
use filters::ProxyError;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::UpstreamIo;

/// How long a configuration built from files is used before they are read again.
const RELOAD_AFTER: Duration = Duration::from_secs(60);

/// Client configurations by settings.
#[derive(Default)]
pub struct TlsConfigs {
    built: Mutex<HashMap<UpstreamTls, (Arc<ClientConfig>, Instant), foldhash::fast::RandomState>>,
}

impl TlsConfigs {
    fn config(&self, settings: &UpstreamTls) -> Result<Arc<ClientConfig>, String> {
        let mut built = self.built.lock().expect("tls config lock");
        if let Some((config, at)) = built.get(settings) {
            if at.elapsed() < RELOAD_AFTER {
                return Ok(config.clone());
            }
        }
        let config = hbone::tls::origination_config(settings).map_err(|e| e.to_string())?;
        // Settings replaced by newer ones (a rotated secret, a changed rule) go once stale.
        built.retain(|_, (_, at)| at.elapsed() < RELOAD_AFTER);
        built.insert(settings.clone(), (config.clone(), Instant::now()));
        Ok(config)
    }

    /// Runs the TLS handshake over `io`, sending `sni` (or none).
    pub async fn handshake(
        &self,
        settings: &UpstreamTls,
        sni: Option<&str>,
        endpoint: SocketAddr,
        io: UpstreamIo,
    ) -> Result<UpstreamIo, ProxyError> {
        let fail = |reason: String| ProxyError::UpstreamConnect {
            endpoint: endpoint.to_string(),
            reason: format!("TLS origination: {reason}"),
        };
        let config = self.config(settings).map_err(fail)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = match sni {
            Some(n) => {
                ServerName::try_from(n.to_string()).map_err(|e| fail(format!("SNI {n:?}: {e}")))?
            }
            // No SNI: rustls sends none for an IP address name.
            None => ServerName::IpAddress(endpoint.ip().into()),
        };
        let tls = connector
            .connect(name, io)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok(UpstreamIo::Tls(Box::new(tls)))
    }
}
