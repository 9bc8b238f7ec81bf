//! depotmesh's shared language: content ids, chunk-group ranges, bao-verified range streaming,
//! the wire messages of the mesh's control traffic, signed release metadata (TUF/Uptane and the
//! typed `custom` depotmesh signs in it), the fleet's names (VINs, ECU serials, campaign ids),
//! and the director API's bodies.
//!
//! Every other crate stands on this one, and every byte that moves between nodes is checked with
//! it: a chunk group is verified against its blob's BLAKE3 root before anyone may store, forward
//! or flash it.
//!
//! It also defines [`ReadAt`], the one positioned-read trait of the workspace (bao encoding here,
//! the `delta` crate, the stores' files and the vehicle's banks all read through it).
//!
//! This crate must never do I/O of its own (no files, sockets, clocks or async runtime: callers
//! hand it bytes, a `Read`/`Write` or a [`ReadAt`]), never panic on bytes from a peer, and never
//! allocate more for a decoded message than the protocol's limits allow.

#![forbid(unsafe_code)]

pub mod bao;
mod blob_id;
pub mod campaign;
pub mod custom;
pub mod director_api;
pub mod ids;
pub mod membership;
mod ranges;
mod read_at;
pub mod tuf;
pub mod uptane;
pub mod wire;

pub use blob_id::{BlobId, ParseBlobIdError};
pub use ids::{CampaignId, EcuSerial, IdError, Vin};
pub use ranges::{ChunkGroup, ChunkGroupRanges};
pub use read_at::{ReadAhead, ReadAt};
