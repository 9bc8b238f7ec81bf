//! What every depotmesh node shares: the blob store (blobs, bao outboards, verified ranges, durable
//! progress), the sans-IO transfer engine (which range from which peer, retries, bans), the link
//! policy (which link may carry which priority class now), the libp2p/tokio runtime that drives
//! them, the director API client, and metrics.
//!
//! It must never store, forward or hand on a byte that has not been verified against its blob's
//! BLAKE3 root, and never record a range as held before that range is durable. The decision logic
//! must never reach for sockets, files or the clock itself: it is fed `now` and events and returns
//! actions, so that `netsim` can drive the same code for a whole fleet.

#![forbid(unsafe_code)]

pub mod admission;
pub mod cache;
pub mod clock;
pub mod director_client;
pub mod engine;
pub mod fetch;
pub mod identity;
pub mod import;
pub mod logging;
pub mod membership;
pub mod mesh_config;
pub mod metrics;
pub mod named;
pub mod net;
pub mod policy;
pub mod protocol;
pub mod ratelimit;
pub mod relay;
pub mod revocations;
pub mod runtime;
pub mod seeding;
pub mod serve;
pub mod stdout;
pub mod storage;
pub mod store;
pub mod text;
pub mod tracker;
pub mod tuf_mesh;
pub mod write_deadline;
