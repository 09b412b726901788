//! Consistent hashing over a Service port's endpoints with Envoy's `RING_HASH` load
//! balancer (from a DestinationRule `consistentHash` with `ringHash`, or none): a request's
//! hash (from the route's `hash_policy`) always lands on the same endpoint while the
//! endpoints stay the same, and a change of endpoints moves only the keys of the endpoints
//! that changed. Each endpoint gets a number of ring points proportional to its weight (EDS
//! `load_balancing_weight`), so it takes that share of the keys. `MAGLEV` is
//! [`super::maglev`].
//!
//! The endpoint a key lands on is not comparable across proxies (Envoy hashes its own host
//! addresses with its own function).

use std::hash::{Hash, Hasher};

use crate::model::Endpoint;

/// Envoy's default `minimum_ring_size`.
pub const DEFAULT_RING_SIZE: usize = 1024;
/// Envoy's default `maximum_ring_size` (and the most either size may be).
pub const MAX_RING_SIZE: usize = 8 * 1024 * 1024;

/// The configured bounds of a ring (`ring_hash_lb_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSize {
    /// `minimum_ring_size`: the fewest points (more when weights need them).
    pub min: usize,
    /// `maximum_ring_size`: the most points, whatever the weights need.
    pub max: usize,
}

impl Default for RingSize {
    fn default() -> Self {
        Self {
            min: DEFAULT_RING_SIZE,
            max: MAX_RING_SIZE,
        }
    }
}

/// A hash ring: point hashes sorted, each naming an endpoint index.
#[derive(Debug, Default)]
pub struct Ring {
    hashes: Vec<u64>,
    owners: Vec<u32>,
}

/// A stable 64-bit hash (the same in every process of one build).
pub fn hash_of(value: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The addressed endpoints with their weights (1 when `weights` is `None`; a weight of 0
/// counts as 1, EDS never sends one).
pub(super) fn weighted(
    endpoints: &[Endpoint],
    weights: Option<&[u32]>,
) -> Vec<(usize, std::net::SocketAddr, u64)> {
    endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let w = weights.and_then(|w| w.get(i)).copied().unwrap_or(1).max(1);
            e.address().map(|a| (i, a, u64::from(w)))
        })
        .collect()
}

impl Ring {
    /// A ring over the addressed endpoints. Endpoint `i` gets about `scale × weight_i /
    /// total` points, where `scale` is the smallest size that gives the lightest endpoint
    /// `size.min × its share` points (rounded up), capped at `size.max`, as Envoy sizes it.
    pub fn new(endpoints: &[Endpoint], weights: Option<&[u32]>, size: RingSize) -> Self {
        let hosts = weighted(endpoints, weights);
        if hosts.is_empty() {
            return Self::default();
        }
        let total: u64 = hosts.iter().map(|h| h.2).sum();
        let lightest = hosts.iter().map(|h| h.2).min().unwrap_or(1) as f64 / total as f64;
        let min = size.min.max(1) as f64;
        let scale = ((lightest * min).ceil() / lightest).min(size.max.max(1) as f64);
        // Points are handed out on a cumulative count so that rounding never adds up.
        let mut points: Vec<(u64, u32)> = Vec::with_capacity(scale as usize + hosts.len());
        let (mut sum, mut placed) = (0u64, 0u64);
        for (i, addr, w) in hosts {
            sum += w;
            let target = (scale * sum as f64 / total as f64).round() as u64;
            let n = target.saturating_sub(placed).max(1);
            placed += n;
            for replica in 0..n {
                points.push((hash_of((addr, replica)), i as u32));
            }
        }
        points.sort_unstable();
        let (hashes, owners) = points.into_iter().unzip();
        Self { hashes, owners }
    }

    /// The number of points.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the ring has no point.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// The endpoint index for `hash`: the first point at or after it, around the ring.
    pub fn get(&self, hash: u64) -> Option<usize> {
        self.get_where(hash, |_| true)
    }

    /// The endpoint for `hash` among those `ok` accepts: the first accepted endpoint at or
    /// after the hash's point, going round the ring (an ejected endpoint's keys move to the
    /// next endpoint on the ring, and come back when it does).
    pub fn get_where(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.hashes.len();
        let start = self.hashes.partition_point(|h| *h < hash);
        (0..n)
            .map(|k| self.owners[(start + k) % n] as usize)
            .find(|i| ok(*i))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn ep(i: u8) -> Endpoint {
        super::super::tests::ep(&format!("pod-{i}"), Some(&format!("127.128.0.{i}")))
    }

    pub(crate) fn keys() -> Vec<u64> {
        (0..10_000).map(|k| hash_of(format!("user-{k}"))).collect()
    }

    fn shares(get: impl Fn(u64) -> usize, n: usize) -> Vec<usize> {
        let mut out = vec![0; n];
        for k in keys() {
            out[get(k)] += 1;
        }
        out
    }

    #[test]
    fn same_key_same_endpoint_and_little_movement() {
        let three: Vec<Endpoint> = (1..=3).map(ep).collect();
        let ring = Ring::new(&three, None, RingSize::default());
        // 342 points each: the minimum's third, rounded up.
        assert_eq!(ring.len(), 1026);
        let keys: Vec<u64> = (0..1000).map(|k| hash_of(format!("user-{k}"))).collect();
        let before: Vec<usize> = keys.iter().map(|k| ring.get(*k).unwrap()).collect();
        assert_eq!(
            before,
            keys.iter()
                .map(|k| ring.get(*k).unwrap())
                .collect::<Vec<_>>()
        );
        for i in 0..3 {
            let share = before.iter().filter(|e| **e == i).count();
            assert!(
                (200..=470).contains(&share),
                "endpoint {i}: {share} of 1000"
            );
        }
        // A fourth endpoint takes about a quarter of the keys; the rest stay.
        let four: Vec<Endpoint> = (1..=4).map(ep).collect();
        let ring4 = Ring::new(&four, None, RingSize::default());
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, b)| ring4.get(**k).unwrap() != **b)
            .count();
        assert!((150..=350).contains(&moved), "{moved} of 1000 moved");
        assert!(Ring::new(&[], None, RingSize::default()).get(1).is_none());
    }

    #[test]
    fn points_and_keys_follow_the_weights() {
        let two: Vec<Endpoint> = (1..=2).map(ep).collect();
        let ring = Ring::new(&two, Some(&[1, 3]), RingSize::default());
        // The lightest gets the minimum's share: 256 + 768 points, as Envoy sizes it.
        assert_eq!(ring.len(), 1024);
        assert_eq!(ring.owners.iter().filter(|o| **o == 1).count(), 768);
        let s = shares(|k| ring.get(k).unwrap(), 2);
        // 7,500 expected; unweighted would be about 5,000.
        assert!((6_900..=8_100).contains(&s[1]), "{s:?}");

        // Skewed weights grow the ring to give the lightest a whole point of its share
        // of the minimum ...
        let ring = Ring::new(
            &two,
            Some(&[1, 1000]),
            RingSize {
                min: 64,
                max: MAX_RING_SIZE,
            },
        );
        assert_eq!(ring.owners.iter().filter(|o| **o == 0).count(), 1);
        assert_eq!(ring.len(), 1001);
        // ... up to the maximum, where each still gets a point.
        let ring = Ring::new(&two, Some(&[1, 1000]), RingSize { min: 64, max: 500 });
        assert_eq!(ring.len(), 500);
        assert_eq!(ring.owners.iter().filter(|o| **o == 0).count(), 1);
        // A bigger minimum gives the lightest more.
        let ring = Ring::new(
            &two,
            Some(&[1, 4]),
            RingSize {
                min: 100,
                max: MAX_RING_SIZE,
            },
        );
        assert_eq!(ring.owners.iter().filter(|o| **o == 0).count(), 20);
        assert_eq!(ring.len(), 100);
    }

    #[test]
    fn a_weighted_endpoint_joining_takes_its_share() {
        let two: Vec<Endpoint> = (1..=2).map(ep).collect();
        let three: Vec<Endpoint> = (1..=3).map(ep).collect();
        let before = Ring::new(&two, Some(&[1, 1]), RingSize::default());
        // The new endpoint weighs 2: half the keys, taken from both others.
        let after = Ring::new(&three, Some(&[1, 1, 2]), RingSize::default());
        let (mut moved, mut to_new) = (0, 0);
        for k in keys() {
            let (b, a) = (before.get(k).unwrap(), after.get(k).unwrap());
            if a != b {
                moved += 1;
                to_new += usize::from(a == 2);
            }
        }
        assert!(
            (4_000..=6_000).contains(&to_new),
            "{to_new} of 10000 to the new one"
        );
        // As in Envoy, the ring is divided anew: the others give up half their points, and
        // the keys of those points go to the next point, mostly the new endpoint's; a few
        // (770 of 10,000 here) move between the old ones; the rest stay where they were.
        let between = moved - to_new;
        assert!(
            between <= 1_200,
            "{between} of 10000 moved between the old ones"
        );
    }
}
