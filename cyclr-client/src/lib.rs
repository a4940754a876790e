//! The Cyclr Partner API: wire types, errors and the client. Knows nothing of Kubernetes.
//!
//! The contract is the seed text of the legacy Partner API (eight endpoints under
//! `/api/partner/`, `shared/seed/cyclr-partner-api.txt`), plus the OAuth token endpoint and
//! Cyclr's current v1.0 API as a second dialect on the same client (accounts with
//! caller-chosen ids and delete, account connectors, templates and cycles, paged lists; the
//! `*_v1` methods) from Cyclr's public documentation (`shared/docs/cyclr-api-facts.md` says
//! which facts are documented, which observed and which inferred).

#![warn(missing_docs)]

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
