//! The counts behind a cluster's cap on its HTTP/2 connections
//! ([`filters::model::ConnectionCap`]): the connections open to its endpoints and the
//! requests waiting for a stream past the cap, kept by the HTTP pool (they outlive
//! snapshots, as the connections do). A connection counts from the moment it is being
//! opened until it has closed; each stream that ends and each connection that closes
//! wakes the requests waiting, which look again for a stream or room for a connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Every capped cluster's counts, by cluster name.
#[derive(Default)]
pub(super) struct Caps {
    clusters: Mutex<HashMap<String, Arc<ClusterCount>>>,
}

impl Caps {
    /// The counts of `cluster` (created the first time; clusters nothing holds any more
    /// are forgotten then).
    pub(super) fn get(&self, cluster: &str) -> Arc<ClusterCount> {
        let mut clusters = self.clusters.lock().expect("caps lock");
        if let Some(c) = clusters.get(cluster) {
            return c.clone();
        }
        // Held by nothing but this map: no connection open, no request waiting.
        clusters.retain(|_, c| Arc::strong_count(c) > 1);
        let count = Arc::new(ClusterCount::default());
        clusters.insert(cluster.to_string(), count.clone());
        count
    }
}

/// One cluster's counts.
#[derive(Default)]
pub(super) struct ClusterCount {
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Default)]
struct State {
    open: usize,
    pending: usize,
}

impl ClusterCount {
    /// Room for one more connection: below `max`, or `always` (an endpoint with no
    /// connection gets one whatever the others hold). Counted until the slot is dropped.
    pub(super) fn open(self: &Arc<Self>, max: usize, always: bool) -> Option<OpenSlot> {
        let mut s = self.state.lock().expect("cap lock");
        if !always && s.open >= max {
            return None;
        }
        s.open += 1;
        Some(OpenSlot(self.clone()))
    }

    /// A place among the requests waiting for a stream, if fewer than `max` wait.
    pub(super) fn wait(self: &Arc<Self>, max: Option<usize>) -> Option<PendingSlot> {
        let mut s = self.state.lock().expect("cap lock");
        if max.is_some_and(|m| s.pending >= m) {
            return None;
        }
        s.pending += 1;
        Some(PendingSlot(self.clone()))
    }

    /// What the waiting requests listen to: a stream ended or a connection closed.
    pub(super) fn freed(&self) -> &Notify {
        &self.freed
    }

    /// Wakes the waiting requests.
    pub(super) fn wake(&self) {
        self.freed.notify_waiters();
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let s = self.state.lock().expect("cap lock");
        (s.open, s.pending)
    }
}

/// A connection counted against the cap, from its opening until this is dropped (with the
/// connection's task, once it has closed).
pub(super) struct OpenSlot(Arc<ClusterCount>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.state.lock().expect("cap lock").open -= 1;
        self.0.wake();
    }
}

/// A request counted among those waiting for a stream.
pub(super) struct PendingSlot(Arc<ClusterCount>);

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.state.lock().expect("cap lock").pending -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_except_an_endpoints_first() {
        let caps = Caps::default();
        let c = caps.get("c");
        let a = c.open(1, false).unwrap();
        assert!(c.open(1, false).is_none());
        let b = c
            .open(1, true)
            .expect("an endpoint without a connection gets one");
        assert_eq!(c.counts(), (2, 0));
        drop((a, b));
        assert_eq!(c.counts(), (0, 0));
        assert!(c.open(1, false).is_some());
    }

    #[test]
    fn waiting_requests_are_bounded() {
        let caps = Caps::default();
        let c = caps.get("c");
        let w = c.wait(Some(1)).unwrap();
        assert!(c.wait(Some(1)).is_none());
        drop(w);
        assert!(c.wait(Some(1)).is_some());
        assert!(c.wait(None).is_some());
    }

    #[test]
    fn clusters_nothing_holds_are_forgotten() {
        let caps = Caps::default();
        let held = caps.get("a").open(1, false);
        drop(caps.get("b"));
        caps.get("c");
        let names: Vec<String> = caps.clusters.lock().unwrap().keys().cloned().collect();
        assert!(names.contains(&"a".to_string()) && !names.contains(&"b".to_string()));
        drop(held);
    }
}
