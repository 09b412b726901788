//! Test helpers (feature `testing`): an in-process xDS server.

pub mod ads_server;
pub mod sds_server;

pub use ads_server::{AdsServer, Reply};
pub use sds_server::SdsServer;
