//! Shared test support for depotmesh, and the home of the tests that need more than one role
//! (`tests/`): an origin with its keys and releases ([`release`]), the director service on a
//! loopback port ([`director`]), a depot daemon in the test's own process ([`depot`]), vehicles
//! on the mesh and in the yard with file-backed ECUs ([`vehicle`]), the bytes they move
//! ([`data`]), and SoftHSM2 tokens for the origin's keys ([`hsm`]).
//!
//! Each role runs through the library entry point its binary runs (as `netsim yard` does), so
//! a test here needs no role's binary. A role crate never depends on this crate, not even for
//! its tests: that would make it depend on the other roles, which the layering forbids (the
//! architecture test checks it).
//!
//! It must never become a place for production code: nothing outside tests depends on it.

// Test support: a fixture that cannot set up fails its test, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../origin/tests/common/child.rs"]
pub mod child;
pub mod data;
pub mod depot;
pub mod director;
pub mod hsm;
pub mod release;
pub mod s3;
pub mod vehicle;
