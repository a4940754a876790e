//! cyclr-operator: Cyclr partner accounts and connector installs as Kubernetes resources.
//!
//! - [`cyclr`]: the Cyclr Partner API client (no Kubernetes in it).
//! - [`sim`]: `cyclr-sim`, a faithful simulator of that API for tests and the demo.

pub mod controllers;
pub mod cyclr;
pub mod http;
pub mod metrics;
pub mod resources;
pub mod sim;
pub mod telemetry;
