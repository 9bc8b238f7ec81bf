//! End-to-end tests across the depotmesh crates: real nodes, real files, real signatures, driven
//! together. The tests live in `tests/`; this library will hold shared fixtures (keys, images,
//! repositories) once there are any.
//!
//! It must never become a place for production code: nothing outside tests depends on it.
