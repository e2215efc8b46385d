//! The only code that opens SQLite: the writer thread (actor), read-only readers, pragmas, our
//! internal tables, and value conversions.

pub mod migrate;
pub mod pragmas;
pub mod read;
pub mod restore;
pub mod value;
pub mod writer;

#[cfg(test)]
pub(crate) mod testutil;

use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

use crate::apply::ApplyError;
use crate::cdc::{CdcError, CleanupReport};

pub use read::{ConflictEntry, Reader};
pub use writer::WriterHandle;

/// Quotes an identifier for SQL text: double quotes, inner double quotes doubled. Every table
/// and column name we put into SQL goes through here (tables named `order` or `my "t"` work).
pub fn quote_ident(name: &str) -> String {
    let mut q = String::with_capacity(name.len() + 2);
    q.push('"');
    for c in name.chars() {
        if c == '"' {
            q.push('"');
        }
        q.push(c);
    }
    q.push('"');
    q
}

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
        "database {path} holds harmonylite state format {found}, newer than this build's {supported}"
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
        source: Box<CdcError>,
    },
    #[error("applying changes failed on database {path}")]
    Apply {
        path: PathBuf,
        #[source]
        source: Box<ApplyError>,
    },
    #[error("cannot start the writer thread")]
    Spawn(#[source] std::io::Error),
    #[error("the writer thread has stopped")]
    WriterGone,
}

impl DbError {
    /// A capture error on the database at `path`.
    pub fn capture(path: &Path, source: CdcError) -> DbError {
        DbError::Capture {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }

    /// An apply error on the database at `path`.
    pub fn apply(path: &Path, source: ApplyError) -> DbError {
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
            DbError::Capture { source, .. } => is_fatal_sqlite(source.sqlite()),
            DbError::Apply { source, .. } => is_fatal_sqlite(source.sqlite()),
            DbError::NewerFormat { .. } | DbError::Spawn(_) | DbError::WriterGone => true,
        }
    }
}

/// Whether a SQLite error means the database (or its disk) is unusable.
pub fn is_fatal_sqlite(e: &rusqlite::Error) -> bool {
    match e.sqlite_error_code() {
        Some(code) => matches!(
            code,
            ErrorCode::DiskFull
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::NotADatabase
                | ErrorCode::ReadOnly
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::PermissionDenied
        ),
        None => false,
    }
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
    fn quotes_identifiers() {
        assert_eq!(quote_ident("order"), r#""order""#);
        assert_eq!(quote_ident("my table"), r#""my table""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }

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
