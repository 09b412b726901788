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

    /// Empties the log for another request when nothing else holds it (`false`, unchanged,
    /// when a clone is still alive).
    pub fn reset_if_unique(&mut self) -> bool {
        match Arc::get_mut(&mut self.0) {
            Some(m) => {
                *m.get_mut().unwrap_or_else(|e| e.into_inner()) = Upstream::default();
                true
            }
            None => false,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Upstream) -> T) -> T {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

/// A tunnel's spare [`RequestLog`]: requests on an HTTP/1.1 tunnel come one after another,
/// so each can reuse the log of the one before once its telemetry is done with it, rather
/// than allocate its own (issue 22). Concurrent requests (HTTP/2) find it taken and make
/// their own. A clone starts empty.
#[derive(Debug, Default)]
pub struct LogSlot(Mutex<Option<RequestLog>>);

impl LogSlot {
    /// The spare log, emptied, or a new one.
    pub fn take(&self) -> RequestLog {
        self.0
            .try_lock()
            .ok()
            .and_then(|mut spare| spare.take())
            .unwrap_or_default()
    }

    /// Keeps `log` for the next request when nothing else holds it.
    pub fn put(&self, mut log: RequestLog) {
        if log.reset_if_unique() {
            if let Ok(mut spare) = self.0.try_lock() {
                *spare = Some(log);
            }
        }
    }
}

impl Clone for LogSlot {
    fn clone(&self) -> Self {
        Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(log: &RequestLog) -> Option<SocketAddr> {
        log.get().address
    }

    #[test]
    fn a_log_is_reused_emptied_only_when_nothing_else_holds_it() {
        let slot = LogSlot::default();
        let log = slot.take();
        log.set_service_time(Duration::from_millis(3));
        let id = Arc::as_ptr(&log.0);
        // A clone still alive (a request not yet dropped): not kept.
        let held = log.clone();
        slot.put(log);
        let fresh = slot.take();
        assert_ne!(Arc::as_ptr(&fresh.0), id);
        assert_eq!(held.get().service_time, Some(Duration::from_millis(3)));
        // The only holder: kept, and handed out again empty.
        slot.put(held);
        let reused = slot.take();
        assert_eq!(Arc::as_ptr(&reused.0), id);
        assert_eq!(reused.get().service_time, None);
        assert_eq!(address(&reused), None);
        // Taken: the next request makes its own.
        assert_ne!(Arc::as_ptr(&slot.take().0), id);
    }
}
