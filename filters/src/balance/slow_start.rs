//! Slow start: an endpoint that has just joined a port gets a share of the traffic that
//! grows over a window, so a pod that scaled out or restarted warms up before it takes its
//! full share (DestinationRule `warmup`/`warmupDurationSecs`; Envoy's `slow_start_config`
//! in the round-robin and least-request policies).
//!
//! An endpoint's weight during its window is `max(min_weight, (age / window) ^ (1 /
//! aggression))`, and 1 after it, as Envoy defines it. While any usable endpoint is in its
//! window, picks are weighted draws ([`super::weighted`]): by weight, divided by requests in
//! flight plus one under least request (Envoy's weighted least request with its default
//! active-request bias of 1). Endpoints that all joined together (the first
//! configuration) have equal weights, so nothing changes for them. An endpoint's join time
//! is kept across configuration pushes by address ([`State::inherit`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::outlier::now_ms;

/// Slow start, as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// How long a new endpoint ramps up.
    pub window: Duration,
    /// The ramp's shape: 1 is linear, larger values ramp up faster.
    pub aggression: f64,
    /// The least weight during the window, as a fraction of a full weight (0.0 to 1.0).
    pub min_weight: f64,
}

impl SlowStart {
    /// Envoy's default least weight: 10%.
    pub const DEFAULT_MIN_WEIGHT: f64 = 0.1;

    /// The weight of an endpoint that joined `age_ms` ago.
    pub fn weight(&self, age_ms: u64) -> f64 {
        let window = self.window.as_millis() as f64;
        if window <= 0.0 || age_ms as f64 >= window {
            return 1.0;
        }
        let factor = (age_ms as f64 / window).powf(1.0 / self.aggression);
        factor.max(self.min_weight).min(1.0)
    }
}

/// A port's slow start: the configuration and when each endpoint joined.
#[derive(Debug)]
pub struct State {
    config: SlowStart,
    /// Per endpoint (in the port's order), when it joined ([`now_ms`] clock).
    joined: Box<[AtomicU64]>,
    /// When the last endpoint's window ends: before that, picks are weighted.
    until: AtomicU64,
}

impl State {
    /// Every one of `endpoints` joining now.
    pub fn new(config: SlowStart, endpoints: usize) -> Self {
        let now = now_ms();
        Self {
            config,
            joined: (0..endpoints).map(|_| AtomicU64::new(now)).collect(),
            until: AtomicU64::new(now + config.window.as_millis() as u64),
        }
    }

    /// The configuration.
    pub fn config(&self) -> SlowStart {
        self.config
    }

    /// Keeps the join time of the endpoints `previous` had at the same address.
    pub fn inherit<A: PartialEq>(&self, addresses: &[A], previous: &State, before: &[A]) {
        let window = self.config.window.as_millis() as u64;
        let mut until = 0;
        for (i, a) in addresses.iter().enumerate() {
            if let Some(j) = before.iter().position(|b| b == a) {
                let t = previous.joined[j].load(Ordering::Relaxed);
                self.joined[i].store(t, Ordering::Relaxed);
            }
            until = until.max(self.joined[i].load(Ordering::Relaxed) + window);
        }
        self.until.store(until, Ordering::Relaxed);
    }

    /// Whether an endpoint may be in its window at `now` (picks are weighted until then).
    pub fn ramping(&self, now: u64) -> bool {
        now < self.until.load(Ordering::Relaxed)
    }

    /// Endpoint `i`'s weight at `now`.
    pub fn weight(&self, i: usize, now: u64) -> f64 {
        let joined = self.joined[i].load(Ordering::Relaxed);
        self.config.weight(now.saturating_sub(joined))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(window_s: u64, aggression: f64, min: f64) -> SlowStart {
        SlowStart {
            window: Duration::from_secs(window_s),
            aggression,
            min_weight: min,
        }
    }

    #[test]
    fn weights_ramp_from_the_floor_to_one_over_the_window() {
        let linear = config(10, 1.0, 0.1);
        assert_eq!(linear.weight(0), 0.1, "the floor");
        assert!((linear.weight(5_000) - 0.5).abs() < 1e-9);
        assert_eq!(linear.weight(10_000), 1.0);
        assert_eq!(linear.weight(60_000), 1.0);
        // Aggression 2: the square root of the time factor, faster at first.
        let fast = config(10, 2.0, 0.0);
        assert!((fast.weight(2_500) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_new_endpoint_gets_a_growing_share_and_old_ones_keep_their_join_time() {
        let old = State::new(config(10, 1.0, 0.1), 1);
        // A push adds endpoint "b" to "a", which keeps the time it joined (long ago).
        let new = State::new(config(10, 1.0, 0.1), 2);
        old.joined[0].store(0, Ordering::Relaxed);
        let now = 100_000;
        new.joined
            .iter()
            .for_each(|j| j.store(now, Ordering::Relaxed));
        new.inherit(&["a", "b"], &old, &["a"]);
        assert_eq!(new.joined[0].load(Ordering::Relaxed), 0, "inherited");
        assert_eq!(new.weight(0, now), 1.0);
        assert_eq!(new.weight(1, now), 0.1);
        assert!(new.ramping(now));
        let mut b = 0;
        for _ in 0..10_000 {
            if crate::balance::weighted::draw(0..2, |i| new.weight(i, now)) == Some(1) {
                b += 1;
            }
        }
        // 0.1 / 1.1 of the draws, about 9%.
        assert!((700..1100).contains(&b), "{b}");
        let later = now + 5_000;
        let b = (0..10_000)
            .filter(|_| crate::balance::weighted::draw(0..2, |i| new.weight(i, later)) == Some(1))
            .count();
        // 0.5 / 1.5, about 33%.
        assert!((3000..3700).contains(&b), "{b}");
        assert!(!new.ramping(now + 10_000));
    }
}
