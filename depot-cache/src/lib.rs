//! The depot role: a cache on a small box in the depot yard that learns which releases its home
//! vehicles will need, prefetches them over the backhaul inside its schedule, serves them on the
//! yard WiFi, and tells vehicles which neighbours hold which ranges so they fetch from each other
//! first.
//!
//! It must never serve unverified bytes, never let its disk use exceed the configured cap, and
//! never evict a blob that an active campaign has pinned.

pub mod config;
pub mod daemon;
mod http;
pub mod import;
mod metrics;
pub mod prefetch;
pub mod relay;
mod revocations;
mod status;
