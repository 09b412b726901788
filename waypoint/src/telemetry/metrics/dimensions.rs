//! Metric dimensions from Telemetry `tagOverrides` values (the `istio.stats` filter's
//! `dimensions`): CEL expressions evaluated once per request (or TCP connection) and kept
//! in the series key; each metric family then picks the ones its overrides name.

use filters::cel::{Activation, Expression};
use filters::model::telemetry::MetricOverride;

/// Longest dimension value kept (longer values are cut), as for peer labels.
const MAX_VALUE: usize = 256;

/// The value Istio reports when an expression cannot be evaluated (a missing header).
const UNKNOWN: &str = "unknown";

/// One evaluated dimension: the label, the expression, and its value for the request
/// (`None` when the override's `match` was false).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Dimension {
    /// The label name.
    pub name: String,
    /// The expression.
    pub expr: Expression,
    /// The value; `None` when the override did not apply to the request.
    pub value: Option<String>,
}

/// The dimensions of one request: `None` when no override has any (the common case,
/// which allocates nothing).
pub type Dimensions = Option<Box<[Dimension]>>;

/// Evaluates every override's dimensions for one request.
pub fn evaluate(overrides: &[MetricOverride], facts: &dyn Activation) -> Dimensions {
    if overrides.iter().all(|o| o.dimensions.is_empty()) {
        return None;
    }
    let mut out: Vec<Dimension> = Vec::new();
    for o in overrides.iter().filter(|o| !o.dimensions.is_empty()) {
        let applies = o.when.as_ref().is_none_or(|w| w.matches(facts));
        for (name, expr) in &o.dimensions {
            if out.iter().any(|d| &d.name == name && &d.expr == expr) {
                continue;
            }
            let value = applies.then(|| match expr.eval(facts) {
                Ok(v) => bounded(&v.to_text()),
                Err(_) => UNKNOWN.to_string(),
            });
            out.push(Dimension {
                name: name.clone(),
                expr: expr.clone(),
                value,
            });
        }
    }
    Some(out.into_boxed_slice())
}

fn bounded(v: &str) -> String {
    let mut end = v.len().min(MAX_VALUE);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

/// The value of dimension `name` computed by `expr` in `dims`: `Some(None)` when the
/// override did not apply to the request; `None` when the series predates the override.
pub fn lookup<'a>(dims: &'a Dimensions, name: &str, expr: &Expression) -> Option<Option<&'a str>> {
    dims.as_deref()?
        .iter()
        .find(|d| d.name == name && &d.expr == expr)
        .map(|d| d.value.as_deref())
}
