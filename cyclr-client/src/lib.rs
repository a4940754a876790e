//! The Cyclr Partner API: wire types, errors and the client. Knows nothing of Kubernetes.

mod auth;
pub mod budget;
pub mod client;
pub mod error;
pub mod retry;
pub mod types;

pub use budget::RateBudget;
pub use client::{CallObserver, CallRecord, ClientConfig, CyclrClient};
pub use error::{CyclrError, Result};
pub use retry::RetryPolicy;
