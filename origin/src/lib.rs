//! The cloud side: release publishing (sign images the TUF/Uptane way, build bao outboards and
//! deltas, publish targets metadata) and the director (per-vehicle signed targets, staged
//! campaigns with gates, and the append-only audit trail).
//!
//! It must never sign a release or promote a campaign wave without recording who approved it, and
//! must keep offline (root, image targets) keys apart from the director's online key.
