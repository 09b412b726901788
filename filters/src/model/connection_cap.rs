//! A cluster's cap on its upstream HTTP/2 connections (the circuit breaker's
//! `max_connections`, DestinationRule `connectionPool.tcp.maxConnections`) and on the
//! requests that wait past it (`max_pending_requests`, `http1MaxPendingRequests`). The
//! counts themselves live with the connection pool, which outlives snapshots.

use serde::Serialize;

/// At most `max_connections` HTTP/2 connections to the cluster's endpoints at once (one
/// more to an endpoint that has none, as Envoy never leaves an endpoint without a
/// connection); a request that finds no free stream then waits for one, at most
/// `max_pending` of them at once; the rest are refused (503 `UO`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionCap {
    /// The cluster the connections are counted for (each cluster counts its own).
    pub cluster: String,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most requests waiting for a stream at once; `None` for no limit.
    pub max_pending: Option<usize>,
}
