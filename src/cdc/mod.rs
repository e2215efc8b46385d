//! Change capture: installing and removing the clock tables, capture logs and triggers over the
//! catalog's tables, folding the logs into the clocks, scanning stamped rows for the publisher,
//! and watching the database for commits.
//!
//! Design and the reasoning behind it: `docs/decisions/001-state-based-capture.md`.

pub mod baseline;
#[cfg(test)]
mod capture_cost;
pub mod digest;
pub mod fold;
pub mod install;
pub mod parked;
pub mod scan;
pub mod triggers;
pub mod watch;

pub use install::{install, remove_all};
pub use scan::{Scan, mark_published};

use crate::catalog::{SchemaHash, SkippedTable, TableMeta, hash_tables};

/// The result of installing capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureInfo {
    /// The captured tables (the schema hash is computed over them: `catalog::hash_tables`).
    pub tables: Vec<TableMeta>,
    /// Ordinary tables that cannot be captured, with the reason.
    pub skipped: Vec<SkippedTable>,
    /// Rows stamped by this install (first install, rebuilt or recreated tables).
    pub baselined: u64,
    /// Whether any of our schema objects was created, rebuilt or dropped.
    pub changed: bool,
}

impl CaptureInfo {
    /// The schema hash of the captured tables.
    pub fn schema_hash(&self) -> SchemaHash {
        hash_tables(&self.tables)
    }
}

/// What `remove_all` dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub triggers: usize,
    pub tables: usize,
}
