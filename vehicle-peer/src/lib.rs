//! The vehicle role, on the gateway: the update agent that fetches verified pieces from the depot
//! and from neighbouring vehicles, the link policy's cellular fallback, delta apply, and the
//! flasher with its A/B bank and boot-control drivers.
//!
//! It must never install software that is unsigned, older than what runs, stale, or meant for other
//! hardware; never write the bank an ECU runs from; and never leave an ECU without one bootable,
//! verified bank, whatever instant the power is cut. Memory must not grow with image size.
//!
//! The storage modules import one way, each only those before it: [`boot`] and [`bank`] at the
//! bottom, [`delta`] (applying a delta into a file or a bank), [`slots`] (the
//! [`slots::Banks`] an install writes: A/B or remapped), [`remap`] and [`flasher`]; `install`
//! and `daemon` drive them. [`rauc`] is the other way to install: an ECU whose slots RAUC
//! writes and switches, with depotmesh's trial, health check and rollback around it.
pub mod agent;
pub mod bank;
pub mod boot;
pub mod config;
pub mod daemon;
pub mod delta;
pub mod flasher;
pub mod install;
pub mod mesh;
pub mod provision;
pub mod rauc;
pub mod rauc_client;
pub mod remap;
pub mod simulated;
pub mod slots;
pub mod tuf_files;
