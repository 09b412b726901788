//! Outlier detection: Envoy's consecutive-error ejection, as istiod configures it from a
//! DestinationRule's `outlierDetection` (consecutive 5xx, consecutive gateway errors,
//! consecutive local-origin failures when split, base ejection time growing with each
//! ejection up to the maximum, a cap on the share of endpoints ejected, and the panic
//! threshold). Success-rate detection is not implemented; istiod always disables it.
//!
//! State lives per endpoint of a Service port ([`Tracker`]); a new snapshot inherits the
//! state of the same endpoint (same Service, port and address) from the one it replaces
//! ([`Tracker::inherit`]), so a configuration push does not forgive a failing pod.
//!
//! Timing: an ejection ends exactly when its time is up (Envoy releases ejected hosts on
//! its next `interval` tick, so up to one interval later). The ejection multiplier drops by
//! one for every `interval` the endpoint has been back without being ejected again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A port's outlier detection settings (Envoy's `OutlierDetection`, defaults as Envoy's).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    /// Consecutive 5xx responses (and, unless split, local-origin failures) that eject.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 responses (and, unless split, local-origin failures).
    pub consecutive_gateway_failure: Option<u32>,
    /// Consecutive local-origin failures that eject (only with `split_local_origin`).
    pub consecutive_local_origin_failure: Option<u32>,
    /// Whether connect failures, resets and timeouts are counted apart from responses.
    pub split_local_origin: bool,
    /// Envoy's analysis interval (here: how fast the ejection multiplier decays).
    pub interval: Duration,
    /// The first ejection's length; the n-th lasts n times as long.
    pub base_ejection_time: Duration,
    /// The longest an ejection lasts.
    pub max_ejection_time: Duration,
    /// The most endpoints ejected at once, in percent (at least one is always allowed).
    pub max_ejection_percent: u32,
    /// Below this percentage of endpoints not ejected, ejections are ignored (Envoy's
    /// `healthy_panic_threshold`; istiod sets 0, which disables panic).
    pub panic_threshold: f64,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway_failure: None,
            consecutive_local_origin_failure: None,
            split_local_origin: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            panic_threshold: 50.0,
        }
    }
}

/// How one attempt to an endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Status(u16),
    /// Connecting failed, the connection was reset, or the endpoint did not answer in time.
    LocalFailure,
}

/// Milliseconds on the process's monotonic clock, from 1.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One endpoint's counters and ejection.
#[derive(Debug, Default)]
struct Host {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    consecutive_local: AtomicU32,
    /// The clock reading the current or last ejection ends at; 0 if never ejected.
    ejected_until: AtomicU64,
    /// Ejections so far, less those forgiven by time (the ejection multiplier).
    ejections: AtomicU32,
}

impl Host {
    fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    fn copy_from(&self, other: &Host) {
        for (a, b) in [
            (&self.consecutive_5xx, &other.consecutive_5xx),
            (&self.consecutive_gateway, &other.consecutive_gateway),
            (&self.consecutive_local, &other.consecutive_local),
            (&self.ejections, &other.ejections),
        ] {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.ejected_until.store(
            other.ejected_until.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }
}

/// Outlier detection over one Service port's endpoints.
#[derive(Debug)]
pub struct Tracker {
    policy: OutlierPolicy,
    hosts: Box<[Host]>,
}

impl Tracker {
    /// A tracker for `endpoints` endpoints, none ejected.
    pub fn new(policy: OutlierPolicy, endpoints: usize) -> Self {
        Self {
            policy,
            hosts: (0..endpoints).map(|_| Host::default()).collect(),
        }
    }

    /// The settings.
    pub fn policy(&self) -> &OutlierPolicy {
        &self.policy
    }

    /// Whether endpoint `i` is ejected at `now` ([`now_ms`]).
    pub fn is_ejected(&self, i: usize, now: u64) -> bool {
        self.hosts.get(i).is_some_and(|h| h.ejected(now))
    }

    /// How many endpoints are ejected at `now`.
    pub fn ejected_count(&self, now: u64) -> usize {
        self.hosts.iter().filter(|h| h.ejected(now)).count()
    }

    /// Whether too few endpoints are left for ejections to count (Envoy's panic mode).
    pub fn in_panic(&self, now: u64) -> bool {
        if self.policy.panic_threshold <= 0.0 || self.hosts.is_empty() {
            return false;
        }
        let healthy = self.hosts.len() - self.ejected_count(now);
        (healthy as f64) * 100.0 / (self.hosts.len() as f64) < self.policy.panic_threshold
    }

    /// Records how an attempt to endpoint `i` ended; returns whether it ejected it.
    pub fn record(&self, i: usize, outcome: Outcome, now: u64) -> bool {
        let Some(h) = self.hosts.get(i) else {
            return false;
        };
        let p = &self.policy;
        let count = |c: &AtomicU32, failed: bool| -> u32 {
            if failed {
                c.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                c.store(0, Ordering::Relaxed);
                0
            }
        };
        let reached = |n: u32, limit: Option<u32>| limit.is_some_and(|l| l > 0 && n >= l);
        let hit = match (outcome, p.split_local_origin) {
            (Outcome::LocalFailure, true) => reached(
                count(&h.consecutive_local, true),
                p.consecutive_local_origin_failure,
            ),
            (outcome, split) => {
                if split {
                    // A response means the connection worked.
                    count(&h.consecutive_local, false);
                }
                // Unless split, a local failure counts as the 503 Envoy maps it to.
                let status = match outcome {
                    Outcome::Status(s) => s,
                    Outcome::LocalFailure => 503,
                };
                let n5 = count(&h.consecutive_5xx, (500..600).contains(&status));
                let gateway = matches!(status, 502..=504);
                let ng = count(&h.consecutive_gateway, gateway);
                reached(n5, p.consecutive_5xx) | reached(ng, p.consecutive_gateway_failure)
            }
        };
        hit && self.eject(i, now)
    }

    /// Ejects endpoint `i` unless it already is or the cap on ejections is reached.
    fn eject(&self, i: usize, now: u64) -> bool {
        let h = &self.hosts[i];
        let until = h.ejected_until.load(Ordering::Relaxed);
        if until > now {
            return false;
        }
        let ejected = self.ejected_count(now);
        let share = (ejected + 1) as f64 * 100.0 / self.hosts.len() as f64;
        if ejected > 0 && share > self.policy.max_ejection_percent as f64 {
            return false;
        }
        // Forgive one earlier ejection per interval spent back in rotation.
        let interval = self.policy.interval.as_millis().max(1) as u64;
        let forgiven = if until == 0 {
            0
        } else {
            (now.saturating_sub(until) / interval).min(u32::MAX as u64) as u32
        };
        let n = h
            .ejections
            .load(Ordering::Relaxed)
            .saturating_sub(forgiven)
            .saturating_add(1);
        let base = self.policy.base_ejection_time;
        let cap = self.policy.max_ejection_time.max(base);
        let length = base.saturating_mul(n).min(cap).as_millis() as u64;
        if h.ejected_until
            .compare_exchange(
                until,
                now + length.max(1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        h.ejections.store(n, Ordering::Relaxed);
        for c in [
            &h.consecutive_5xx,
            &h.consecutive_gateway,
            &h.consecutive_local,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        true
    }

    /// Takes over the state of the endpoints this tracker shares with `previous` (same
    /// address), so that a new snapshot keeps ejections and counters.
    pub fn inherit(
        &self,
        addresses: &[Option<SocketAddr>],
        previous: &Tracker,
        previous_addresses: &[Option<SocketAddr>],
    ) {
        for (i, addr) in addresses.iter().enumerate() {
            let Some(addr) = addr else { continue };
            let old = previous_addresses
                .iter()
                .position(|a| a.as_ref() == Some(addr));
            if let (Some(host), Some(old)) = (self.hosts.get(i), old) {
                if let Some(prev) = previous.hosts.get(old) {
                    host.copy_from(prev);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(hosts: usize) -> Tracker {
        Tracker::new(
            OutlierPolicy {
                consecutive_5xx: Some(3),
                consecutive_gateway_failure: Some(2),
                base_ejection_time: Duration::from_secs(30),
                max_ejection_time: Duration::from_secs(100),
                max_ejection_percent: 50,
                panic_threshold: 0.0,
                ..Default::default()
            },
            hosts,
        )
    }

    #[test]
    fn consecutive_5xx_ejects_and_a_success_resets_the_count() {
        let t = tracker(4);
        assert!(!t.record(0, Outcome::Status(500), 1));
        assert!(!t.record(0, Outcome::Status(500), 2));
        assert!(!t.record(0, Outcome::Status(200), 3));
        assert!(!t.record(0, Outcome::Status(500), 4));
        assert!(!t.record(0, Outcome::Status(500), 5));
        assert!(t.record(0, Outcome::Status(500), 6));
        assert!(t.is_ejected(0, 6 + 29_999));
        assert!(!t.is_ejected(0, 6 + 30_000));
    }

    #[test]
    fn gateway_failures_and_local_failures_count_unless_split() {
        let t = tracker(4);
        assert!(!t.record(1, Outcome::LocalFailure, 1));
        assert!(t.record(1, Outcome::Status(503), 2));
        let split = Tracker::new(
            OutlierPolicy {
                consecutive_5xx: Some(2),
                consecutive_local_origin_failure: Some(3),
                split_local_origin: true,
                panic_threshold: 0.0,
                max_ejection_percent: 100,
                ..Default::default()
            },
            2,
        );
        // Local failures do not count as 5xx, and a response resets them.
        assert!(!split.record(0, Outcome::LocalFailure, 1));
        assert!(!split.record(0, Outcome::LocalFailure, 2));
        assert!(!split.record(0, Outcome::Status(200), 3));
        assert!(!split.record(0, Outcome::LocalFailure, 4));
        assert!(!split.record(0, Outcome::LocalFailure, 5));
        assert!(split.record(0, Outcome::LocalFailure, 6));
    }

    #[test]
    fn ejection_time_grows_to_the_cap_and_is_forgiven_over_time() {
        let t = tracker(2);
        let fail = |now: u64| (0..3).any(|k: u64| t.record(0, Outcome::Status(500), now + k));
        assert!(fail(1_000));
        // Ejected 30 s from the third failure.
        assert!(t.is_ejected(0, 1_002 + 29_999) && !t.is_ejected(0, 1_002 + 30_000));
        assert!(fail(40_000));
        assert!(t.is_ejected(0, 40_002 + 59_999) && !t.is_ejected(0, 40_002 + 60_000));
        // Back at once: 3 × 30 s.
        assert!(fail(100_000));
        assert!(t.is_ejected(0, 100_002 + 89_999) && !t.is_ejected(0, 100_002 + 90_000));
        // 4 × 30 s, capped at 100 s.
        assert!(fail(190_000));
        assert!(t.is_ejected(0, 190_002 + 99_999) && !t.is_ejected(0, 190_002 + 100_000));
        // Five intervals back in rotation forgive all four: 30 s again.
        assert!(fail(340_000));
        assert!(t.is_ejected(0, 340_002 + 29_999) && !t.is_ejected(0, 340_002 + 30_000));
    }

    #[test]
    fn at_most_the_share_is_ejected_but_always_one() {
        let t = tracker(4);
        let eject = |i| (0..2).any(|k| t.record(i, Outcome::Status(502), 10 + k));
        assert!(eject(0));
        assert!(eject(1));
        // A third would be 75% > 50%.
        assert!(!eject(2));
        assert_eq!(t.ejected_count(20), 2);
        let one = Tracker::new(
            OutlierPolicy {
                max_ejection_percent: 0,
                consecutive_gateway_failure: Some(1),
                ..Default::default()
            },
            2,
        );
        assert!(one.record(0, Outcome::Status(504), 1));
        assert!(!one.record(1, Outcome::Status(504), 1));
    }

    #[test]
    fn panic_ignores_ejections_below_the_threshold() {
        let t = Tracker::new(
            OutlierPolicy {
                consecutive_gateway_failure: Some(1),
                max_ejection_percent: 100,
                panic_threshold: 50.0,
                ..Default::default()
            },
            2,
        );
        assert!(t.record(0, Outcome::Status(503), 1));
        assert!(!t.in_panic(2));
        assert!(t.record(1, Outcome::Status(503), 2));
        assert!(t.in_panic(3));
    }

    #[test]
    fn a_new_snapshot_inherits_by_address() {
        let a: SocketAddr = "127.0.1.1:80".parse().unwrap();
        let b: SocketAddr = "127.0.1.2:80".parse().unwrap();
        let old = tracker(2);
        assert!((0..2).any(|k| old.record(1, Outcome::Status(503), k + 1)));
        let new = tracker(3);
        new.inherit(&[None, Some(b), Some(a)], &old, &[Some(a), Some(b)]);
        assert!(new.is_ejected(1, 10) && !new.is_ejected(2, 10) && !new.is_ejected(0, 10));
    }
}
