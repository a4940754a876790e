//! cyclr-operator: Cyclr partner accounts and connector installs as Kubernetes resources.
//!
//! The Cyclr client (`cyclr-client/`, crate `cyclr`) and the simulator (`cyclr-sim/`) are
//! crates of their own, so the compiler keeps Kubernetes out of the client and the simulator
//! out of this binary.

pub mod controllers;
pub mod driver;
pub mod http;
pub mod index;
pub mod metrics;
pub mod readiness;
pub mod resources;
pub mod secrets;
pub mod telemetry;
