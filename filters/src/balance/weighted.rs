//! A draw among endpoints by weight: the policies' path when endpoints do not weigh the
//! same (EDS `load_balancing_weight`, or slow start ramping a new endpoint up). Envoy walks
//! such weights with an earliest-deadline-first schedule; a draw gives each endpoint the same
//! share in expectation.

/// Draws one of `candidates` with probability proportional to `share(i)`; the first when
/// every share is zero.
pub fn draw(
    candidates: impl Iterator<Item = usize> + Clone,
    share: impl Fn(usize) -> f64,
) -> Option<usize> {
    use rand::Rng;
    let total: f64 = candidates.clone().map(&share).sum();
    if total.is_nan() || total <= 0.0 {
        return candidates.clone().next();
    }
    let mut x = rand::thread_rng().gen_range(0.0..total);
    let mut last = None;
    for i in candidates {
        let s = share(i);
        if x < s {
            return Some(i);
        }
        x -= s;
        last = Some(i);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_weights() {
        let weights = [3.0, 1.0, 0.0];
        let mut counts = [0; 3];
        for _ in 0..10_000 {
            counts[draw(0..3, |i| weights[i]).unwrap()] += 1;
        }
        assert!((7_200..7_800).contains(&counts[0]), "{counts:?}");
        assert_eq!(counts[2], 0, "a zero share is never drawn");
        assert_eq!(draw(0..3, |_| 0.0), Some(0));
        assert_eq!(draw(0..0, |_| 1.0), None);
    }
}
