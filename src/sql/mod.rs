//! The bottom of the SQLite stack: how we write SQL text and read SQLite's answers, shared by
//! capture, apply, the catalog and the database layer.
//!
//! - identifier quoting (`quote_ident`): every table and column name in our SQL goes through it;
//! - `internal`: the names and shapes of our own `__harmonylite__*` tables;
//! - `value`: conversions between the change model's `Value` and SQLite values;
//! - `in_place`: running a statement whose big values SQLite reads without copying;
//! - `SqlError`: a failed statement with what we were doing and on which table, and the
//!   classification of SQLite errors (fatal for the node, or only for one row).
//!
//! Nothing here opens a connection or knows about capture, apply or the network.

pub mod in_place;
pub mod internal;
pub mod value;

use rusqlite::ErrorCode;

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

/// A statement of capture, apply or the catalog that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
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

impl SqlError {
    /// The underlying SQLite error.
    pub fn sqlite(&self) -> &rusqlite::Error {
        match self {
            SqlError::Sqlite { source, .. } | SqlError::Table { source, .. } => source,
        }
    }

    /// Whether the database (or its disk) is unusable (`is_fatal_sqlite`).
    pub fn is_fatal(&self) -> bool {
        is_fatal_sqlite(self.sqlite())
    }
}

/// Maps a SQLite error to `SqlError::Sqlite`.
pub fn sql_err(what: &'static str) -> impl Fn(rusqlite::Error) -> SqlError {
    move |source| SqlError::Sqlite { what, source }
}

/// Maps a SQLite error to `SqlError::Table`.
pub fn table_err<'a>(
    what: &'static str,
    table: &'a str,
) -> impl Fn(rusqlite::Error) -> SqlError + 'a {
    move |source| SqlError::Table {
        what,
        table: table.to_string(),
        source,
    }
}

/// Whether a SQLite error means the database (or its disk) is unusable: disk full,
/// corruption, a read-only or failing file system. Busy or locked databases are transient.
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

/// A table that is not there (for instance a capture log of a table captured by a build from
/// before capture logs existed, until the next install creates it).
pub fn is_missing_table(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(_, Some(m)) if m.starts_with("no such table"))
}

/// Errors that concern one row only: SQLite rolled back that statement, a batch can go on.
pub fn is_row_level(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch | ErrorCode::TooBig)
    )
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
        assert!(is_fatal_sqlite(&err(rusqlite::ffi::SQLITE_FULL)));
        assert!(is_fatal_sqlite(&err(rusqlite::ffi::SQLITE_CORRUPT)));
        assert!(is_fatal_sqlite(&err(rusqlite::ffi::SQLITE_READONLY)));
        assert!(!is_fatal_sqlite(&err(rusqlite::ffi::SQLITE_BUSY)));
        assert!(!is_fatal_sqlite(&err(rusqlite::ffi::SQLITE_LOCKED)));
        assert!(!is_fatal_sqlite(&err(rusqlite::ffi::SQLITE_CONSTRAINT)));
        assert!(is_row_level(&err(rusqlite::ffi::SQLITE_CONSTRAINT)));
        assert!(!is_row_level(&err(rusqlite::ffi::SQLITE_BUSY)));
        let table = SqlError::Table {
            what: "x",
            table: "t".into(),
            source: err(rusqlite::ffi::SQLITE_FULL),
        };
        assert!(table.is_fatal());
        assert_eq!(table.to_string(), "x failed for table t");
    }
}
