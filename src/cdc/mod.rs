//! Change capture: discovering tables, installing and removing the clock tables and triggers,
//! and scanning stamped rows for the publisher.
//!
//! Design and the reasoning behind it: `docs/decisions/001-state-based-capture.md`.

pub mod discover;
pub mod install;
pub mod parked;
pub mod scan;
pub mod triggers;
pub mod watch;

pub use discover::{SkippedTable, TableMeta};
pub use install::{install, remove_all};
pub use scan::{Scan, mark_published};

use crate::schema::SchemaHash;

/// Errors of installing, removing and scanning capture.
#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error("{what} failed")]
    Sqlite {
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{what} failed for table {table}")]
    Table {
        what: &'static str,
        table: String,
        #[source]
        source: rusqlite::Error,
    },
}

impl CdcError {
    /// The underlying SQLite error.
    pub fn sqlite(&self) -> &rusqlite::Error {
        match self {
            CdcError::Sqlite { source, .. } | CdcError::Table { source, .. } => source,
        }
    }
}

/// Maps a SQLite error to `CdcError::Sqlite`.
pub(crate) fn sql_err(what: &'static str) -> impl Fn(rusqlite::Error) -> CdcError {
    move |source| CdcError::Sqlite { what, source }
}

/// Maps a SQLite error to `CdcError::Table`.
pub(crate) fn table_err<'a>(
    what: &'static str,
    table: &'a str,
) -> impl Fn(rusqlite::Error) -> CdcError + 'a {
    move |source| CdcError::Table {
        what,
        table: table.to_string(),
        source,
    }
}

/// A captured table as the rest of the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackedTable {
    pub name: String,
    /// Primary-key columns; empty when the table is keyed by rowid.
    pub key_columns: Vec<String>,
    pub columns: Vec<String>,
}

/// The result of installing capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureInfo {
    pub tables: Vec<TrackedTable>,
    pub schema_hash: SchemaHash,
    /// Ordinary tables that cannot be captured, with the reason.
    pub skipped: Vec<SkippedTable>,
    /// Rows stamped by this install (first install, rebuilt or recreated tables).
    pub baselined: u64,
    /// Whether any of our schema objects was created, rebuilt or dropped.
    pub changed: bool,
}

/// What `remove_all` dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub triggers: usize,
    pub tables: usize,
}
