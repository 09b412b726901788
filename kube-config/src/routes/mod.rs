//! HTTPRoute, GRPCRoute and TCPRoute: validation, attachment to Service ports, and the statuses
//! `waypoint check` prints (the Gateway API's `Accepted` and `ResolvedRefs` conditions).

mod build;
mod compile;
pub(crate) mod objects;
mod status;

pub use build::{attach, RouteInputs};
pub use status::{ParentStatus, RouteStatus};
