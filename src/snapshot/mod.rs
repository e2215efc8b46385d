//! Snapshots: taking a verified copy of the database, storing it, and restoring a node from it.
//!
//! - `manifest`: what a snapshot is and covers (JSON, checked on read).

pub mod manifest;
pub mod store;
