//! DestinationRule `outlierDetection`: consecutive-error ejection of endpoints.

use std::time::Duration;

use filters::balance::outlier::OutlierPolicy;
use serde::Deserialize;

use super::invalid;
use crate::LocalConfigError;

/// `outlierDetection`, as istiod turns it into the cluster's (`applyOutlierDetection`):
/// unset thresholds keep Envoy's defaults (5 consecutive 5xx), a threshold of 0 turns its
/// detector off, and `minHealthPercent` is the panic threshold (0 unless set).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct OutlierDetection {
    #[serde(default, rename = "consecutive5xxErrors")]
    pub(super) consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub(super) consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub(super) split_external_local_origin_errors: bool,
    #[serde(default)]
    pub(super) consecutive_local_origin_failures: Option<u32>,
    #[serde(default)]
    pub(super) interval: Option<String>,
    #[serde(default)]
    pub(super) base_ejection_time: Option<String>,
    #[serde(default)]
    pub(super) max_ejection_percent: Option<u32>,
    #[serde(default)]
    pub(super) min_health_percent: Option<i32>,
}

impl OutlierDetection {
    pub(super) fn policy(&self, label: &str, at: &str) -> Result<OutlierPolicy, LocalConfigError> {
        let defaults = OutlierPolicy::default();
        let duration = |v: &Option<String>, field: &str, default: Duration| match v {
            None => Ok(default),
            Some(t) => filters::duration::parse(t)
                .map_err(|e| invalid(label, format!("{at}.{field}"), e.to_string())),
        };
        let on = |n: Option<u32>| n.filter(|n| *n > 0);
        Ok(OutlierPolicy {
            consecutive_5xx: match self.consecutive_5xx_errors {
                None => defaults.consecutive_5xx,
                n => on(n),
            },
            consecutive_gateway_failure: on(self.consecutive_gateway_errors),
            consecutive_local_origin_failure: on(self.consecutive_local_origin_failures)
                .filter(|_| self.split_external_local_origin_errors),
            split_local_origin: self.split_external_local_origin_errors,
            interval: duration(&self.interval, "interval", defaults.interval)?,
            base_ejection_time: duration(
                &self.base_ejection_time,
                "baseEjectionTime",
                defaults.base_ejection_time,
            )?,
            max_ejection_time: defaults.max_ejection_time,
            max_ejection_percent: self
                .max_ejection_percent
                .map_or(defaults.max_ejection_percent, |p| p.min(100)),
            panic_threshold: self.min_health_percent.unwrap_or(0).clamp(0, 100) as f64,
        })
    }
}
