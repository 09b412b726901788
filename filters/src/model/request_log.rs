//! What the filter chain learns about one request on its way upstream, for telemetry.
//!
//! The HTTP handler attaches a [`RequestLog`] to each request; the routing filter and the
//! forwarder record into it; access logs, metrics and traces read it when the response
//! is done. Mirror copies do not carry it, so they never overwrite the real request's
//! facts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Service, Workload};
use crate::route::model::Route;

/// Shared, append-only facts about one request (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Arc<Mutex<Upstream>>);

/// The upstream side of one request.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    /// The route that matched, if the port has routes.
    pub route: Option<Arc<Route>>,
    /// The backend Service and port the request was sent to.
    pub service: Option<(Arc<Service>, u16)>,
    /// The endpoint's workload.
    pub workload: Option<Arc<Workload>>,
    /// `podIP:targetPort` of the last attempt.
    pub address: Option<SocketAddr>,
    /// How many attempts were sent (retries included).
    pub attempts: u32,
    /// Time from sending the last attempt to its response headers.
    pub service_time: Option<Duration>,
}

impl RequestLog {
    /// Records the matched route.
    pub fn set_route(&self, route: &Arc<Route>) {
        self.with(|u| u.route = Some(route.clone()));
    }

    /// Records an attempt to `address`.
    pub fn attempt(
        &self,
        service: Option<(Arc<Service>, u16)>,
        workload: &Arc<Workload>,
        address: SocketAddr,
    ) {
        self.with(|u| {
            u.service = service;
            u.workload = Some(workload.clone());
            u.address = Some(address);
            u.attempts += 1;
        });
    }

    /// Records how long the upstream took to answer.
    pub fn set_service_time(&self, took: Duration) {
        self.with(|u| u.service_time = Some(took));
    }

    /// A copy of what was recorded.
    pub fn get(&self) -> Upstream {
        self.with(|u| u.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Upstream) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}
