//! Slow start of new endpoints: the `slow_start_config` istiod writes into the cluster's
//! `round_robin_lb_config` or `least_request_lb_config` from a DestinationRule's
//! `loadBalancer.warmup` (`duration`, `minimumPercent` default 10, `aggression` default 1)
//! or the older `warmupDurationSecs` (`cluster_traffic_policy.go`, `setWarmup` and
//! `setSlowStartConfig`).

use envoy_types::pb::envoy::config::cluster::v3::cluster::{LbConfig, SlowStartConfig};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use filters::balance::slow_start::SlowStart;

use super::cluster::invalid;
use super::InvalidResource;

/// The cluster's slow start, if its policy's configuration has one.
pub fn convert(c: &Cluster) -> Result<Option<SlowStart>, InvalidResource> {
    let (config, at) = match &c.lb_config {
        Some(LbConfig::RoundRobinLbConfig(r)) => (&r.slow_start_config, "round_robin_lb_config"),
        Some(LbConfig::LeastRequestLbConfig(l)) => {
            (&l.slow_start_config, "least_request_lb_config")
        }
        _ => return Ok(None),
    };
    let Some(config) = config else {
        return Ok(None);
    };
    // Only meaningful for the policy it belongs to; Envoy ignores the other.
    let policy_matches = matches!(
        (&c.lb_config, c.lb_policy),
        (Some(LbConfig::RoundRobinLbConfig(_)), 0) | (Some(LbConfig::LeastRequestLbConfig(_)), 1)
    );
    if !policy_matches {
        return Ok(None);
    }
    slow_start(c, config, &format!("{at}.slow_start_config")).map(Some)
}

fn slow_start(c: &Cluster, s: &SlowStartConfig, at: &str) -> Result<SlowStart, InvalidResource> {
    let window = super::duration(s.slow_start_window.as_ref())
        .ok_or_else(|| invalid(c, &format!("{at}.slow_start_window"), "required".into()))?;
    // The runtime key is not read (istiod writes a placeholder); the default value is.
    let aggression = s.aggression.as_ref().map_or(1.0, |a| a.default_value);
    if !(aggression > 0.0 && aggression.is_finite()) {
        return Err(invalid(
            c,
            &format!("{at}.aggression"),
            format!("must be greater than 0, got {aggression}"),
        ));
    }
    let min_percent = s.min_weight_percent.as_ref().map_or(10.0, |p| p.value);
    if !(0.0..=100.0).contains(&min_percent) {
        return Err(invalid(
            c,
            &format!("{at}.min_weight_percent"),
            format!("must be between 0 and 100, got {min_percent}"),
        ));
    }
    Ok(SlowStart {
        window,
        aggression,
        min_weight: min_percent / 100.0,
    })
}
