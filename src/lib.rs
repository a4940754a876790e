//! cyclr-operator: Cyclr partner accounts and connector installs as Kubernetes resources.
//!
//! The Cyclr client (`cyclr-client/`, crate `cyclr`), the reconcile engine (`driver/`, crate
//! `driver`) and the simulator (`cyclr-sim/`) are crates of their own, so the compiler keeps
//! Kubernetes out of the client, Cyclr and the kinds out of the engine, and the simulator out
//! of this binary. A `CyclrAccount` goes from its watch event to its status write through
//! `controllers/account.rs` (its controller and observe → decide → act) and
//! `driver/src/reconcile.rs` (the pipeline every kind shares).

#![warn(missing_docs)]

pub mod controllers;
pub mod http;
pub mod index;
pub mod metrics;
pub mod reason;
pub mod resources;
pub mod secrets;
pub mod telemetry;
pub mod texts;
