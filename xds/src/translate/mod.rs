//! Envoy xDS resources (the `envoy-types` protos istiod sends) translated into the
//! waypoint's model.

pub mod rbac;
