//! A cluster's load-balancing policy and the settings of its consistent-hash tables
//! (`ring_hash_lb_config`, `maglev_lb_config`), validated as Envoy validates them.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;

use super::cluster::invalid;
use super::error::InvalidResource;

/// The cluster's load-balancing policy (`RING_HASH` with its ring sizes, `MAGLEV` with its
/// table size; [`check_hash_configs`] has validated them).
pub(super) fn balancing(c: &Cluster) -> filters::balance::Policy {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
    use filters::balance::{maglev::DEFAULT_TABLE_SIZE, ring::RingSize, Policy};
    match c.lb_policy {
        1 => Policy::LeastRequest,
        2 => Policy::RingHash(match &c.lb_config {
            Some(LbConfig::RingHashLbConfig(r)) => {
                let d = RingSize::default();
                RingSize {
                    min: r.minimum_ring_size.map_or(d.min, |v| v.value as usize),
                    max: r.maximum_ring_size.map_or(d.max, |v| v.value as usize),
                }
            }
            _ => RingSize::default(),
        }),
        3 => Policy::Random,
        5 => Policy::Maglev(match &c.lb_config {
            Some(LbConfig::MaglevLbConfig(m)) => {
                m.table_size.map_or(DEFAULT_TABLE_SIZE, |v| v.value)
            }
            _ => DEFAULT_TABLE_SIZE,
        }),
        _ => Policy::RoundRobin,
    }
}

/// The ring hash and Maglev settings, refused as Envoy refuses them (sizes out of range, a
/// minimum above the maximum, a table size that is not prime), and the hash function: the
/// waypoint hashes with its own, so only the default (`XX_HASH`) is accepted.
pub(super) fn check_hash_configs(c: &Cluster) -> Result<(), InvalidResource> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
    use filters::balance::{maglev, ring::MAX_RING_SIZE};
    match &c.lb_config {
        Some(LbConfig::RingHashLbConfig(r)) => {
            let at = |f: &str| format!("ring_hash_lb_config.{f}");
            if r.hash_function != 0 {
                return Err(invalid(
                    c,
                    &at("hash_function"),
                    "only XX_HASH (the default) is supported".into(),
                ));
            }
            let min = r.minimum_ring_size.map(|v| v.value);
            let max = r.maximum_ring_size.map(|v| v.value);
            for (field, v) in [("minimum_ring_size", min), ("maximum_ring_size", max)] {
                if v.is_some_and(|v| v == 0 || v > MAX_RING_SIZE as u64) {
                    return Err(invalid(
                        c,
                        &at(field),
                        format!("must be between 1 and {MAX_RING_SIZE}"),
                    ));
                }
            }
            let (min, max) = (min.unwrap_or(1024), max.unwrap_or(MAX_RING_SIZE as u64));
            if min > max {
                return Err(invalid(
                    c,
                    &at("minimum_ring_size"),
                    format!("{min} is above maximum_ring_size {max}"),
                ));
            }
        }
        Some(LbConfig::MaglevLbConfig(m)) => {
            if let Some(size) = m.table_size.map(|v| v.value) {
                if size > maglev::MAX_TABLE_SIZE || !maglev::is_prime(size) {
                    return Err(invalid(
                        c,
                        "maglev_lb_config.table_size",
                        format!(
                            "{size} is not a prime number up to {}",
                            maglev::MAX_TABLE_SIZE
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(())
}
