//! Schema versions: the hash every message carries (`catalog::SchemaHash`), so nodes on
//! different schemas pause instead of applying rows to a table shaped differently.
//!
//! - `gate`: which messages may be applied; paused shards (pure decision + watch state).
//! - `tracker`: keeps the local hash current (start, DDL poll, periodic recheck) and re-installs
//!   capture when the schema changes.
//! - `store`: the state file that keeps the previous hash across restarts.
//! - `registry`: this node's entry in the `harmonylite-schema-registry` KV bucket.
//! - `report`: the `-schema-status` and `-schema-status-cluster` commands.
//!
//! Design: `docs/decisions/003-schema-versioning.md`.

pub mod gate;
pub mod identity;
pub mod registry;
pub mod report;
pub mod store;
pub mod tracker;

pub use gate::{Decision, Gate, SchemaVersions};
pub use tracker::SchemaTracker;
