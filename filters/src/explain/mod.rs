//! Explaining a decision: why one request gets the answer it gets.
//!
//! The decision code records what it considers into a [`Trace`] as it decides: the
//! CONNECT authority, the JWT rule, every AuthorizationPolicy (or RBAC filter) with the
//! rule and field that matched or did not, the routes skipped and the one chosen, the
//! route filters, the backends and the retry and timeout policy. A request carries a
//! [`Sink`] as an extension only when it is being explained ([`explain`]); without one the
//! trace is `None`, every recording call is a branch not taken, and nothing is built.
//!
//! [`explain`] runs a request through the same filters the proxy runs (authentication,
//! authorization, routing), with an upstream that records the routing decision instead
//! of forwarding: the explanation is what the proxy decides, not a second
//! implementation of it.

pub(crate) mod describe;
mod run;

pub use run::{explain, Answer, Explanation, Input, Query, QueryError, Verdict};

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Which part of the proxy a step comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The CONNECT authority: the Service port or pod it selects.
    Authority,
    /// RequestAuthentication (JWT).
    Authentication,
    /// AuthorizationPolicies or RBAC filters.
    Authorization,
    /// Route precedence and matching.
    Route,
    /// A route filter (redirect, rewrite, header change, direct response, ...).
    Filter,
    /// The backend set and the one drawn.
    Backend,
    /// Retries and timeouts.
    Policy,
}

impl Stage {
    /// The stage's name as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Authority => "authority",
            Stage::Authentication => "authentication",
            Stage::Authorization => "authorization",
            Stage::Route => "route",
            Stage::Filter => "filter",
            Stage::Backend => "backend",
            Stage::Policy => "policy",
        }
    }
}

/// One thing the proxy considered, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Where in the proxy.
    pub stage: Stage,
    /// What was considered (`policy ns/name (DENY)`, `route ns/name rule 0 match 1`).
    pub subject: String,
    /// What came of it (`matched`, `not matched`, `selected`, `skipped`, ...).
    pub outcome: String,
    /// Why: the rule and field, the value compared, the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Step {
    /// A step without detail.
    pub fn new(stage: Stage, subject: impl Into<String>, outcome: impl Into<String>) -> Self {
        Self {
            stage,
            subject: subject.into(),
            outcome: outcome.into(),
            detail: None,
        }
    }

    /// The same step with `detail`.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// Where the steps of an explained request go: attached to the request as an extension.
#[derive(Debug, Clone, Default)]
pub struct Sink(Arc<Mutex<Vec<Step>>>);

impl Sink {
    /// The steps recorded so far.
    pub fn steps(&self) -> Vec<Step> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn push(&self, step: Step) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(step);
    }
}

/// A request's trace: its [`Sink`] when it is being explained, else nothing. Copy it
/// into the decision functions; [`Trace::step`] builds a step only when recording.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trace<'a>(Option<&'a Sink>);

impl<'a> Trace<'a> {
    /// Records nothing.
    pub const OFF: Trace<'static> = Trace(None);

    /// Records into `sink`, if any.
    pub fn new(sink: Option<&'a Sink>) -> Self {
        Self(sink)
    }

    /// Whether steps are recorded (the request is being explained). Explained requests
    /// leave the decision counters alone.
    #[inline]
    pub fn on(&self) -> bool {
        self.0.is_some()
    }

    /// Records the step `f` builds, when recording.
    #[inline]
    pub fn step(&self, f: impl FnOnce() -> Step) {
        if let Some(s) = self.0 {
            s.push(f());
        }
    }
}

/// The request's sink, cloned out of its extensions (`None`, and no reference count
/// touched, when it is not being explained).
pub fn sink_of<B>(req: &http::Request<B>) -> Option<Sink> {
    req.extensions().get::<Sink>().cloned()
}

#[cfg(test)]
mod tests;
