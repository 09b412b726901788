//! A cluster's `outlier_detection` and `common_lb_config.healthy_panic_threshold`, as
//! istiod writes them from a DestinationRule's `outlierDetection`
//! (`applyOutlierDetection` in istiod's `cluster_traffic_policy.go`: success rate always
//! disabled, each consecutive-error detector enforced at 100% when its threshold is above
//! zero, local-origin failures split on request, panic threshold from `minHealthPercent`).
//!
//! Consecutive 5xx, gateway and local-origin detection take effect with Envoy's defaults
//! for unset fields. Success-rate and failure-percentage detection, partial enforcement,
//! jitter and monitor extensions are refused by field.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection};
use envoy_types::pb::google::protobuf::UInt32Value;
use filters::balance::outlier::OutlierPolicy;

use super::cluster::invalid;
use super::error::InvalidResource;

/// Envoy's panic threshold when the cluster does not set one.
const DEFAULT_PANIC_PERCENT: f64 = 50.0;

/// The cluster's outlier detection, or `None` when it has none.
pub fn convert(c: &Cluster) -> Result<Option<OutlierPolicy>, InvalidResource> {
    let Some(o) = &c.outlier_detection else {
        return Ok(None);
    };
    check_unsupported(c, o)?;
    let defaults = OutlierPolicy::default();
    // A detector counts when its threshold is set (or defaulted) and it is enforced; Envoy
    // enforces consecutive 5xx and local-origin failures by default, gateway failures not.
    let detector = |threshold: &Option<UInt32Value>,
                    default: Option<u32>,
                    enforcing: &Option<UInt32Value>,
                    enforced_by_default: bool|
     -> Option<u32> {
        let enforced = enforcing
            .as_ref()
            .map_or(enforced_by_default, |e| e.value > 0);
        let n = threshold.as_ref().map(|v| v.value).or(default)?;
        (enforced && n > 0).then_some(n)
    };
    let interval = duration(&o.interval).unwrap_or(defaults.interval);
    let base = duration(&o.base_ejection_time).unwrap_or(defaults.base_ejection_time);
    let panic = c
        .common_lb_config
        .as_ref()
        .and_then(|l| l.healthy_panic_threshold.as_ref())
        .map_or(DEFAULT_PANIC_PERCENT, |p| p.value);
    Ok(Some(OutlierPolicy {
        consecutive_5xx: detector(
            &o.consecutive_5xx,
            Some(5),
            &o.enforcing_consecutive_5xx,
            true,
        ),
        consecutive_gateway_failure: detector(
            &o.consecutive_gateway_failure,
            Some(5),
            &o.enforcing_consecutive_gateway_failure,
            false,
        ),
        consecutive_local_origin_failure: if o.split_external_local_origin_errors {
            detector(
                &o.consecutive_local_origin_failure,
                Some(5),
                &o.enforcing_consecutive_local_origin_failure,
                true,
            )
        } else {
            None
        },
        split_local_origin: o.split_external_local_origin_errors,
        interval,
        base_ejection_time: base,
        max_ejection_time: duration(&o.max_ejection_time).unwrap_or(defaults.max_ejection_time),
        max_ejection_percent: o
            .max_ejection_percent
            .as_ref()
            .map_or(defaults.max_ejection_percent, |v| v.value.min(100)),
        panic_threshold: panic.clamp(0.0, 100.0),
    }))
}

/// A set, non-zero duration (`None` falls back to Envoy's default).
fn duration(d: &Option<envoy_types::pb::google::protobuf::Duration>) -> Option<Duration> {
    super::duration(d.as_ref())
}

/// Refuses the detectors and options the waypoint does not implement, by field.
fn check_unsupported(c: &Cluster, o: &OutlierDetection) -> Result<(), InvalidResource> {
    let value = |v: &Option<UInt32Value>| v.as_ref().map(|v| v.value);
    let at = |f: &str| format!("outlier_detection.{f}");
    // Success rate is on unless its enforcement is 0 (istiod always sets 0).
    if value(&o.enforcing_success_rate) != Some(0) {
        return Err(invalid(
            c,
            &at("enforcing_success_rate"),
            "success-rate outlier detection is not supported (istiod sets 0)".into(),
        ));
    }
    if o.split_external_local_origin_errors
        && value(&o.enforcing_local_origin_success_rate) != Some(0)
    {
        return Err(invalid(
            c,
            &at("enforcing_local_origin_success_rate"),
            "local-origin success-rate detection is not supported (istiod sets 0)".into(),
        ));
    }
    for (field, v) in [
        (
            "enforcing_failure_percentage",
            &o.enforcing_failure_percentage,
        ),
        (
            "enforcing_failure_percentage_local_origin",
            &o.enforcing_failure_percentage_local_origin,
        ),
    ] {
        if value(v).is_some_and(|v| v > 0) {
            return Err(invalid(
                c,
                &at(field),
                "failure-percentage outlier detection is not supported".into(),
            ));
        }
    }
    for (field, v) in [
        ("enforcing_consecutive_5xx", &o.enforcing_consecutive_5xx),
        (
            "enforcing_consecutive_gateway_failure",
            &o.enforcing_consecutive_gateway_failure,
        ),
        (
            "enforcing_consecutive_local_origin_failure",
            &o.enforcing_consecutive_local_origin_failure,
        ),
    ] {
        if value(v).is_some_and(|v| v != 0 && v != 100) {
            return Err(invalid(
                c,
                &at(field),
                "only 0 or 100 (off or always) is supported".into(),
            ));
        }
    }
    if duration(&o.max_ejection_time_jitter).is_some() {
        return Err(invalid(
            c,
            &at("max_ejection_time_jitter"),
            "ejection jitter is not supported".into(),
        ));
    }
    if !o.monitors.is_empty() {
        return Err(invalid(
            c,
            &at("monitors"),
            "outlier detection monitor extensions are not supported".into(),
        ));
    }
    if o.always_eject_one_host.as_ref().is_some_and(|b| b.value) {
        return Err(invalid(
            c,
            &at("always_eject_one_host"),
            "not supported".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::CommonLbConfig;
    use envoy_types::pb::envoy::r#type::v3::Percent;

    fn u(v: u32) -> Option<UInt32Value> {
        Some(UInt32Value { value: v })
    }

    /// What istiod writes for `outlierDetection: {consecutive5xxErrors: 3,
    /// consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 15s,
    /// maxEjectionPercent: 100}`.
    fn istiod_shape() -> Cluster {
        Cluster {
            name: "inbound-vip|80|http|a.ns.svc.cluster.local".into(),
            outlier_detection: Some(OutlierDetection {
                enforcing_success_rate: u(0),
                consecutive_5xx: u(3),
                enforcing_consecutive_5xx: u(100),
                consecutive_gateway_failure: u(2),
                enforcing_consecutive_gateway_failure: u(100),
                interval: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                base_ejection_time: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 15,
                    nanos: 0,
                }),
                max_ejection_percent: u(100),
                ..Default::default()
            }),
            common_lb_config: Some(CommonLbConfig {
                healthy_panic_threshold: Some(Percent { value: 0.0 }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn reads_istiods_shape() {
        let p = convert(&istiod_shape()).unwrap().unwrap();
        assert_eq!(p.consecutive_5xx, Some(3));
        assert_eq!(p.consecutive_gateway_failure, Some(2));
        assert_eq!(p.consecutive_local_origin_failure, None);
        assert_eq!(p.interval, Duration::from_secs(1));
        assert_eq!(p.base_ejection_time, Duration::from_secs(15));
        assert_eq!(p.max_ejection_percent, 100);
        assert_eq!(p.panic_threshold, 0.0);
    }

    #[test]
    fn zero_thresholds_disable_and_unsupported_detectors_are_named() {
        let mut c = istiod_shape();
        let o = c.outlier_detection.as_mut().unwrap();
        o.consecutive_5xx = u(0);
        o.enforcing_consecutive_5xx = u(0);
        let p = convert(&c).unwrap().unwrap();
        assert_eq!(p.consecutive_5xx, None);
        c.outlier_detection.as_mut().unwrap().enforcing_success_rate = None;
        let e = convert(&c).unwrap_err();
        assert_eq!(e.field, "outlier_detection.enforcing_success_rate");
        let mut c = istiod_shape();
        c.outlier_detection
            .as_mut()
            .unwrap()
            .enforcing_consecutive_5xx = u(50);
        assert_eq!(
            convert(&c).unwrap_err().field,
            "outlier_detection.enforcing_consecutive_5xx"
        );
    }
}
