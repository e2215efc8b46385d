//! Running one statement whose text and blob parameters SQLite reads in place
//! (`SQLITE_STATIC`) instead of copying them first. rusqlite binds every text and blob with
//! `SQLITE_TRANSIENT` (a copy), which for a row holding a 64 MiB value means the value three
//! times over while SQLite writes it: ours, the bound copy and SQLite's record. The applier
//! writes such rows through here (`apply::plan`), so it holds two. Everything else binds
//! through rusqlite.

use std::ffi::{CStr, CString, c_char, c_int};
use std::ptr;

use rusqlite::{Connection, ffi};

use crate::change::Value;

/// Prepares `sql` on `conn`, binds `params` (SQLite reads the bytes of texts and blobs where
/// they are), runs it to completion and returns the number of rows it changed. Errors are
/// rusqlite's, with SQLite's extended code and message, as a statement run through rusqlite
/// would give them.
pub fn execute(conn: &Connection, sql: &str, params: &[&Value]) -> rusqlite::Result<usize> {
    let text = CString::new(sql).map_err(rusqlite::Error::NulError)?;
    // SAFETY: the handle is used on the thread that owns `conn`, within this call only, and
    // for statements this function prepares and finalizes itself.
    let db = unsafe { conn.handle() };
    let mut raw = ptr::null_mut();
    // SAFETY: `text` is NUL-terminated and outlives the call; `raw` receives the statement.
    let rc = unsafe { ffi::sqlite3_prepare_v2(db, text.as_ptr(), -1, &mut raw, ptr::null_mut()) };
    if rc != ffi::SQLITE_OK {
        return Err(failure(db, rc));
    }
    let stmt = Finalized(raw);
    for (i, value) in params.iter().enumerate() {
        // SAFETY: `stmt` is a live statement; the bytes bound `SQLITE_STATIC` belong to
        // `params`, which outlive the statement (it is finalized before this function returns).
        let rc = unsafe { bind(stmt.0, i as c_int + 1, value) };
        if rc != ffi::SQLITE_OK {
            return Err(failure(db, rc));
        }
    }
    // SAFETY: a prepared statement with every parameter bound.
    match unsafe { ffi::sqlite3_step(stmt.0) } {
        // SAFETY: plain reads of the connection's state.
        ffi::SQLITE_DONE => Ok(unsafe { ffi::sqlite3_changes64(db) } as usize),
        ffi::SQLITE_ROW => Err(rusqlite::Error::ExecuteReturnedResults),
        rc => Err(failure(db, rc)),
    }
}

/// Binds one value at `index` (from 1).
///
/// # Safety
/// `stmt` is a live statement, and a text's or blob's bytes stay where they are until it is
/// finalized.
unsafe fn bind(stmt: *mut ffi::sqlite3_stmt, index: c_int, value: &Value) -> c_int {
    // SAFETY: as the caller promises.
    unsafe {
        match value {
            Value::Null => ffi::sqlite3_bind_null(stmt, index),
            Value::Integer(i) => ffi::sqlite3_bind_int64(stmt, index, *i),
            Value::Real(r) => ffi::sqlite3_bind_double(stmt, index, *r),
            // Raw bytes, as `sql::value` binds text: invalid UTF-8 round-trips byte for byte.
            Value::Text(t) => ffi::sqlite3_bind_text64(
                stmt,
                index,
                t.as_ptr().cast::<c_char>(),
                t.len() as u64,
                ffi::SQLITE_STATIC(),
                ffi::SQLITE_UTF8 as u8,
            ),
            Value::Blob(b) if b.is_empty() => ffi::sqlite3_bind_zeroblob(stmt, index, 0),
            Value::Blob(b) => ffi::sqlite3_bind_blob64(
                stmt,
                index,
                b.as_ptr().cast(),
                b.len() as u64,
                ffi::SQLITE_STATIC(),
            ),
        }
    }
}

/// The error SQLite reports for the last call on `db` that returned `rc`.
fn failure(db: *mut ffi::sqlite3, rc: c_int) -> rusqlite::Error {
    // SAFETY: plain reads of the connection's error state, right after the failed call; the
    // message is copied before anything else runs on the connection.
    let (code, message) = unsafe {
        let extended = ffi::sqlite3_extended_errcode(db);
        let msg = ffi::sqlite3_errmsg(db);
        let message = (!msg.is_null()).then(|| CStr::from_ptr(msg).to_string_lossy().into_owned());
        (if extended != 0 { extended } else { rc }, message)
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), message)
}

/// A statement finalized when dropped.
struct Finalized(*mut ffi::sqlite3_stmt);

impl Drop for Finalized {
    fn drop(&mut self) {
        // SAFETY: the statement this value prepared (or null, which SQLite accepts).
        unsafe { ffi::sqlite3_finalize(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_every_kind_in_place_and_reports_constraints_like_rusqlite() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, a, b, c, d, e)")
            .unwrap();
        let big = Value::Blob(vec![7; 3 << 20]);
        let values = [
            Value::Integer(1),
            Value::Null,
            Value::Real(-0.5),
            Value::Text(b"caf\xc3\xa9 \xff".to_vec()),
            big.clone(),
            Value::Blob(Vec::new()),
        ];
        let params: Vec<&Value> = values.iter().collect();
        let sql = "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
        assert_eq!(execute(&conn, sql, &params).unwrap(), 1);
        let row: Vec<Value> = conn
            .query_row("SELECT * FROM t", [], |r| {
                (0..6).map(|i| r.get(i)).collect()
            })
            .unwrap();
        assert!(
            row.iter().zip(&values).all(|(a, b)| a.same_as(b)),
            "{row:?}"
        );
        let again = execute(&conn, sql, &params).unwrap_err();
        let through_rusqlite = conn
            .execute(sql, rusqlite::params_from_iter(params.iter()))
            .unwrap_err();
        assert_eq!(
            again.sqlite_error_code(),
            Some(rusqlite::ErrorCode::ConstraintViolation)
        );
        assert_eq!(
            format!("{again:?}"),
            format!("{through_rusqlite:?}"),
            "the same error as rusqlite gives"
        );
        let updated = execute(&conn, "UPDATE t SET a = ?1 WHERE id = 2", &[&big]).unwrap();
        assert_eq!(updated, 0);
    }
}
