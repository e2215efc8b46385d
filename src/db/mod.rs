//! The only code that opens SQLite: the writer thread (an actor that owns the engine's one
//! read-write connection and drives capture install, apply and restore through it), read-only
//! readers, and the pragmas every connection sets. What the SQL says lives below: `sql`
//! (names, values, errors), `catalog` (the application's tables), `cdc` and `apply`.

mod idle;
pub mod merge;
pub mod pragmas;
pub mod read;
pub mod restore;
pub mod writer;

#[cfg(test)]
pub(crate) mod testutil;

use std::path::{Path, PathBuf};

use crate::cdc::CleanupReport;
use crate::sql::{SqlError, is_fatal_sqlite};

pub use read::{AcceptedGapEntry, ConflictEntry, Reader};
pub use writer::{AcceptedGap, WriterHandle};

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{what} failed on database {path}")]
    Sqlite {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} holds harmonylite state format {found}, newer than this build's \
         {supported}: a newer harmonylite has run on it; run that version or a later one \
         (downgrades are refused, see docs/operations.md)"
    )]
    NewerFormat {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("capture failed on database {path}")]
    Capture {
        path: PathBuf,
        #[source]
        source: Box<SqlError>,
    },
    #[error("applying changes failed on database {path}")]
    Apply {
        path: PathBuf,
        #[source]
        source: Box<SqlError>,
    },
    #[error("snapshot refused: {reason} (an operator can force it)")]
    RestoreRefused { reason: String },
    #[error("cannot start the writer thread")]
    Spawn(#[source] std::io::Error),
    #[error("the writer thread has stopped")]
    WriterGone,
}

impl DbError {
    /// A capture error on the database at `path`.
    pub fn capture(path: &Path, source: SqlError) -> DbError {
        DbError::Capture {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }

    /// An apply error on the database at `path`.
    pub fn apply(path: &Path, source: SqlError) -> DbError {
        DbError::Apply {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }

    /// Whether the node cannot go on (disk full, corruption, read-only file system, I/O
    /// failure); busy or locked databases are transient.
    pub fn is_fatal(&self) -> bool {
        match self {
            DbError::Open { source, .. } | DbError::Sqlite { source, .. } => {
                is_fatal_sqlite(source)
            }
            DbError::Capture { source, .. } | DbError::Apply { source, .. } => source.is_fatal(),
            DbError::NewerFormat { .. } | DbError::Spawn(_) | DbError::WriterGone => true,
            DbError::RestoreRefused { .. } => false,
        }
    }
}

/// Whether the database at `path` holds HarmonyLite's state (our state table): false for a
/// missing or empty file and for a database HarmonyLite never ran on. A database without it is
/// new, whatever any file beside it says. Call before anything opens (and so creates) it.
pub fn has_internal_state(path: &Path) -> bool {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return false;
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let Ok(conn) = rusqlite::Connection::open_with_flags(path, flags) else {
        return false;
    };
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
        [crate::sql::internal::STATE],
        |r| r.get(0),
    )
    .unwrap_or(false)
}

/// Removes every harmonylite trigger and table from the database at `path` (the `-cleanup`
/// command); the application's objects are untouched.
pub fn remove_all(path: &Path) -> Result<CleanupReport, DbError> {
    let open_err = |source| DbError::Open {
        path: path.to_path_buf(),
        source,
    };
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = rusqlite::Connection::open_with_flags(path, flags).map_err(open_err)?;
    pragmas::configure_maintenance(&conn).map_err(open_err)?;
    crate::cdc::remove_all(&mut conn).map_err(|source| DbError::capture(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors() {
        let err = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let db = |code| DbError::Sqlite {
            what: "test",
            path: "x".into(),
            source: err(code),
        };
        assert!(db(rusqlite::ffi::SQLITE_FULL).is_fatal());
        assert!(db(rusqlite::ffi::SQLITE_CORRUPT).is_fatal());
        assert!(db(rusqlite::ffi::SQLITE_READONLY).is_fatal());
        assert!(!db(rusqlite::ffi::SQLITE_BUSY).is_fatal());
        assert!(!db(rusqlite::ffi::SQLITE_LOCKED).is_fatal());
        assert!(!db(rusqlite::ffi::SQLITE_CONSTRAINT).is_fatal());
    }
}
