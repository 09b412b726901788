//! The Gateway API conformance harness for the mesh profile, end to end.
//!
//! For each test: the upstream manifests (base plus the test's own) are turned into a
//! loopback "cluster" ([`cluster`]): every Deployment becomes fake pods (an HBONE server with
//! the echo app on its own loopback IP), every Service gets a VIP, the namespaces use one
//! waypoint. A real `waypoint` process is started on that configuration, and the cases
//! ([`cases`], expectations taken from the upstream Go tests) are sent through it by an
//! in-mesh HBONE client ([`client`]) and compared with the upstream rules ([`compare`]).

pub mod cases;
pub mod client;
pub mod cluster;
pub mod compare;
pub mod report;
pub mod run;

pub use report::{Outcome, Report};
pub use run::{run_suite, Profile, Suite};
