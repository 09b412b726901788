//! What runs inside a tunnel: HTTP through the filter chain, or TCP copied byte for byte.
//!
//! The Service port's protocol picks the handler; a port of unknown protocol is sniffed
//! ([`detect`]).

pub mod detect;
mod frame_relay;
mod h1;
mod headers;
pub mod http;
mod idle;
mod sni;
mod stream_idle;
pub mod tcp;
mod tcp_limits;
mod tracked;

use std::sync::Arc;

use filters::model::TunnelInfo;
use pingora_core::server::ShutdownWatch;

use crate::state::Proxy;
use detect::Detected;
use hbone::H2Stream;

/// Serves one accepted CONNECT tunnel until it ends.
pub async fn serve_tunnel(
    proxy: Arc<Proxy>,
    info: Arc<TunnelInfo>,
    mut stream: H2Stream,
    shutdown: ShutdownWatch,
) {
    let declared = info.target.protocol();
    let options = &proxy.options;
    let detect = detect::detect(
        &mut stream,
        declared,
        options.detect_timeout,
        options.header_timeout,
    );
    let detected = match detect.await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel ended before its protocol was known");
            return;
        }
    };
    tracing::debug!(?declared, ?detected, "tunnel protocol");
    match detected {
        // Boxed, once per tunnel: inline, the larger of the two would be part of every
        // tunnel's task from the start, idle ones included (10,000 idle tunnels: 128 MB
        // inline, see bench/results).
        Detected::Http1 | Detected::Http2 => {
            Box::pin(http::serve(
                proxy,
                info,
                stream,
                detected == Detected::Http2,
                shutdown,
            ))
            .await
        }
        Detected::Tcp => Box::pin(tcp::serve(proxy, info, stream)).await,
    }
}
