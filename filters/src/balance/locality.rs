//! Locality-weighted balancing (`common_lb_config.locality_weighted_lb_config`, which
//! istiod sets for a DestinationRule `localityLbSetting` with `distribute`, or with explicit
//! `failover` when outlier detection is on): among the localities of the priority in use
//! that have an endpoint to take the request, one is drawn with probability proportional to
//! its weight (EDS `load_balancing_weight`; a locality without a weight takes nothing, as in
//! Envoy), then the endpoint within it by the port's policy. Consistent hashing ignores
//! locality weights.

/// Each endpoint's locality and each locality's weight.
#[derive(Debug)]
pub struct Localities {
    of: Box<[u32]>,
    weights: Box<[u32]>,
}

impl Localities {
    /// `of[i]` is endpoint `i`'s locality, `weights[l]` locality `l`'s weight.
    pub fn new(of: Vec<u32>, mut weights: Vec<u32>) -> Self {
        let needed = of.iter().max().map_or(0, |m| *m as usize + 1);
        if weights.len() < needed {
            weights.resize(needed, 0);
        }
        Self {
            of: of.into_boxed_slice(),
            weights: weights.into_boxed_slice(),
        }
    }

    /// Each endpoint's locality.
    pub fn of(&self) -> &[u32] {
        &self.of
    }

    /// Draws a locality by weight among those with an endpoint for which `usable` holds;
    /// `None` when no weighted locality has one.
    pub fn choose(&self, usable: impl Fn(usize) -> bool) -> Option<u32> {
        use rand::Rng;
        let mut available = vec![false; self.weights.len()];
        for (i, l) in self.of.iter().enumerate() {
            if !available[*l as usize] && usable(i) {
                available[*l as usize] = true;
            }
        }
        let weight = |l: usize| {
            if available[l] {
                u64::from(self.weights[l])
            } else {
                0
            }
        };
        let total: u64 = (0..self.weights.len()).map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut x = rand::thread_rng().gen_range(0..total);
        for l in 0..self.weights.len() {
            let w = weight(l);
            if x < w {
                return Some(l as u32);
            }
            x -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localities_are_drawn_by_weight_among_those_that_can_serve() {
        // Endpoints 0, 1 in locality 0 (weight 80); endpoint 2 in locality 1 (weight 20).
        let l = Localities::new(vec![0, 0, 1], vec![80, 20]);
        let zero = (0..10_000)
            .filter(|_| l.choose(|_| true) == Some(0))
            .count();
        assert!((7_500..8_500).contains(&zero), "{zero}");
        // Locality 0 cannot serve: all to locality 1.
        assert!((0..100).all(|_| l.choose(|i| i == 2) == Some(1)));
        // A locality without weight takes nothing.
        let unweighted = Localities::new(vec![0, 1], vec![0, 5]);
        assert!((0..100).all(|_| unweighted.choose(|_| true) == Some(1)));
        assert_eq!(unweighted.choose(|i| i == 0), None);
    }
}
