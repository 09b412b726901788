use serde::Serialize;

/// A route's status for one parent, like the Gateway API's `RouteParentStatus`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ParentStatus {
    /// `Service ns/name[:port]` or `Gateway ns/name`.
    pub parent: String,
    /// Whether the route is attached (condition `Accepted`).
    pub accepted: bool,
    /// `Accepted`, `NoMatchingParent`, `UnsupportedValue`, `Conflicted`, `NotAllowedByListeners`.
    pub accepted_reason: String,
    /// Whether every backendRef resolved (condition `ResolvedRefs`).
    pub resolved_refs: bool,
    /// `ResolvedRefs`, `BackendNotFound`, `InvalidKind`, `RefNotPermitted`.
    pub refs_reason: String,
    /// Details, empty when all is well.
    pub message: String,
}

/// The status of one HTTPRoute or GRPCRoute.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    /// `HTTPRoute ns/name`, `GRPCRoute ns/name` or `TCPRoute ns/name`.
    pub route: String,
    /// One entry per parentRef that concerns this waypoint.
    pub parents: Vec<ParentStatus>,
}

impl RouteStatus {
    /// One line per parent, as `waypoint check` prints it.
    pub fn lines(&self) -> Vec<String> {
        if self.parents.is_empty() {
            return vec![format!(
                "{}: no parentRef concerns this waypoint",
                self.route
            )];
        }
        self.parents
            .iter()
            .map(|p| {
                let mut s = format!(
                    "{} -> {}: Accepted={} ({}), ResolvedRefs={} ({})",
                    self.route,
                    p.parent,
                    p.accepted,
                    p.accepted_reason,
                    p.resolved_refs,
                    p.refs_reason
                );
                if !p.message.is_empty() {
                    s.push_str(": ");
                    s.push_str(&p.message);
                }
                s
            })
            .collect()
    }
}
