//! Test helpers (feature `testing`): an in-process xDS server.

pub mod ads_server;

pub use ads_server::{AdsServer, Reply};
