//! Weighted backend choice (traffic shifting).

use rand::Rng;

use super::model::WeightedBackend;

/// Draws a backend index with probability proportional to its weight; weight 0 is never
/// drawn. `None` when no backend has weight.
pub fn weighted(backends: &[WeightedBackend], rng: &mut impl Rng) -> Option<usize> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut draw = rng.gen_range(0..total);
    for (i, b) in backends.iter().enumerate() {
        let w = u64::from(b.weight);
        if draw < w {
            return Some(i);
        }
        draw -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::model::BackendTarget;
    use rand::SeedableRng;

    fn b(w: u32) -> WeightedBackend {
        WeightedBackend {
            target: BackendTarget::Invalid("test".into()),
            weight: w,
            filters: vec![],
        }
    }

    #[test]
    fn proportional_and_zero_never() {
        let backends = [b(70), b(0), b(30)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..10_000 {
            counts[weighted(&backends, &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = f64::from(counts[0]) / 10_000.0;
        assert!((share - 0.7).abs() < 0.02, "{share}");
        assert_eq!(weighted(&[b(0), b(0)], &mut rng), None);
        assert_eq!(weighted(&[], &mut rng), None);
    }
}
