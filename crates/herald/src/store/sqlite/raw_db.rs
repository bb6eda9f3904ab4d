//! A minimal synchronous SQLite connection for the writer thread, on the same libsqlite3-sys that sqlx links.
//!
//! Why not sqlx here: sqlx runs each SQLite statement on a worker thread and hands every statement and every
//! returned row across threads. Measured on the accept path (32-256 clients, 11 KB messages): about 20 futex
//! calls and 250 µs of kernel time per message, capping durable accepts near 2,500/s. The writer is one
//! thread doing one transaction per group, so it needs none of that: it owns a plain connection, keeps its
//! statements prepared, and steps them directly. Reads still go through sqlx's pool.
#![allow(unsafe_code)] // SQLite's C API, called directly for the reason above; each block says why it holds.

use std::{
    collections::HashMap,
    ffi::{CStr, CString, c_int},
    path::Path,
    ptr,
};

use libsqlite3_sys as ffi;

/// An error from SQLite on the writer's connection: its result code and message. Clone, because one failed
/// group commit answers every caller in the group with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sqlite error {code}: {message}")]
pub struct SqliteError {
    pub code: c_int,
    pub message: String,
}

pub type DbResult<T> = Result<T, SqliteError>;

/// One value to bind.
pub enum Value<'a> {
    Null,
    Int(i64),
    Text(&'a str),
    Blob(&'a [u8]),
}

impl From<i64> for Value<'_> {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl<'a> From<&'a str> for Value<'a> {
    fn from(v: &'a str) -> Self {
        Value::Text(v)
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(v: &'a String) -> Self {
        Value::Text(v)
    }
}
impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(v: &'a [u8]) -> Self {
        Value::Blob(v)
    }
}
impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// The writer's connection. Not shared: one thread owns it.
pub struct RawDb {
    db: *mut ffi::sqlite3,
    statements: HashMap<&'static str, *mut ffi::sqlite3_stmt>,
}

// SAFETY: the connection is opened in SQLite's multi-thread (NOMUTEX) mode, which allows a connection to be
// used by any thread as long as no two use it at once. `RawDb` is `Send` but not `Sync` and every use takes
// `&mut self`, so one thread at a time is what the compiler enforces (the writer, syncer or checkpointer
// thread that owns it). Serialized mode locked a mutex on every API call for nothing: 3% of the server's CPU
// on small alerts (perf).
unsafe impl Send for RawDb {}

impl RawDb {
    pub fn open(path: &Path) -> DbResult<Self> {
        let c_path = CString::new(path.to_string_lossy().as_bytes()).map_err(|_| SqliteError {
            code: ffi::SQLITE_MISUSE,
            message: "database path contains NUL".into(),
        })?;
        let mut db = ptr::null_mut();
        let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE | ffi::SQLITE_OPEN_NOMUTEX;
        // SAFETY: valid C string and out-pointer; on failure SQLite still hands back a handle to close.
        let rc = unsafe { ffi::sqlite3_open_v2(c_path.as_ptr(), &mut db, flags, ptr::null()) };
        let this = Self {
            db,
            statements: HashMap::new(),
        };
        if rc != ffi::SQLITE_OK {
            return Err(this.error(rc));
        }
        // SAFETY: db is an open connection.
        unsafe { ffi::sqlite3_busy_timeout(db, 30_000) };
        Ok(this)
    }

    fn error(&self, code: c_int) -> SqliteError {
        let message = if self.db.is_null() {
            "out of memory".to_owned()
        } else {
            // SAFETY: errmsg returns a NUL-terminated string owned by the connection.
            unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.db)) }
                .to_string_lossy()
                .into_owned()
        };
        SqliteError { code, message }
    }

    /// Runs SQL with no parameters and no rows (pragmas, BEGIN/COMMIT).
    pub fn exec(&self, sql: &str) -> DbResult<()> {
        let c_sql = CString::new(sql).expect("static SQL has no NUL");
        // SAFETY: open connection, valid C string, no callback.
        let rc = unsafe {
            ffi::sqlite3_exec(
                self.db,
                c_sql.as_ptr(),
                None,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error(rc))
        }
    }

    /// A prepared statement for `sql`, prepared once and reused (bindings cleared when the `Stmt` drops).
    pub fn stmt(&mut self, sql: &'static str) -> DbResult<Stmt<'_>> {
        let raw = match self.statements.get(sql) {
            Some(raw) => *raw,
            None => {
                let mut raw = ptr::null_mut();
                // SAFETY: open connection; sql is valid UTF-8 with its exact length.
                let rc = unsafe {
                    ffi::sqlite3_prepare_v2(
                        self.db,
                        sql.as_ptr().cast(),
                        sql.len() as c_int,
                        &mut raw,
                        ptr::null_mut(),
                    )
                };
                if rc != ffi::SQLITE_OK {
                    return Err(self.error(rc));
                }
                self.statements.insert(sql, raw);
                raw
            }
        };
        Ok(Stmt { db: self, raw })
    }

    pub fn changes(&self) -> u64 {
        // SAFETY: open connection.
        unsafe { ffi::sqlite3_changes64(self.db) as u64 }
    }

    pub fn last_insert_rowid(&self) -> i64 {
        // SAFETY: open connection.
        unsafe { ffi::sqlite3_last_insert_rowid(self.db) }
    }
}

impl Drop for RawDb {
    fn drop(&mut self) {
        // SAFETY: every statement belongs to this connection and is finalized once, before closing it.
        unsafe {
            for raw in self.statements.values() {
                ffi::sqlite3_finalize(*raw);
            }
            ffi::sqlite3_close(self.db);
        }
    }
}

/// A prepared statement borrowed from the connection for one use.
pub struct Stmt<'db> {
    db: &'db RawDb,
    raw: *mut ffi::sqlite3_stmt,
}

impl Stmt<'_> {
    /// Binds parameters 1.. in order. Values are copied by SQLite (SQLITE_TRANSIENT), so they need not outlive
    /// the call.
    pub fn bind<'v>(&mut self, values: impl IntoIterator<Item = Value<'v>>) -> DbResult<&mut Self> {
        for (i, value) in values.into_iter().enumerate() {
            let index = i as c_int + 1;
            // SAFETY: the statement is prepared; pointers and lengths describe live slices; TRANSIENT copies.
            let rc = unsafe {
                match value {
                    Value::Null => ffi::sqlite3_bind_null(self.raw, index),
                    Value::Int(v) => ffi::sqlite3_bind_int64(self.raw, index, v),
                    Value::Text(v) => ffi::sqlite3_bind_text(
                        self.raw,
                        index,
                        v.as_ptr().cast(),
                        v.len() as c_int,
                        ffi::SQLITE_TRANSIENT(),
                    ),
                    Value::Blob(v) => ffi::sqlite3_bind_blob(
                        self.raw,
                        index,
                        v.as_ptr().cast(),
                        v.len() as c_int,
                        ffi::SQLITE_TRANSIENT(),
                    ),
                }
            };
            if rc != ffi::SQLITE_OK {
                return Err(self.db.error(rc));
            }
        }
        Ok(self)
    }

    /// Steps once: `true` when a row is ready to read.
    pub fn step(&mut self) -> DbResult<bool> {
        // SAFETY: prepared statement.
        match unsafe { ffi::sqlite3_step(self.raw) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(self.db.error(rc)),
        }
    }

    /// Runs to completion; returns the rows changed.
    pub fn execute(&mut self) -> DbResult<u64> {
        while self.step()? {}
        Ok(self.db.changes())
    }

    pub fn int(&self, column: c_int) -> i64 {
        // SAFETY: called only after step() returned a row.
        unsafe { ffi::sqlite3_column_int64(self.raw, column) }
    }

    pub fn is_null(&self, column: c_int) -> bool {
        // SAFETY: as above.
        unsafe { ffi::sqlite3_column_type(self.raw, column) == ffi::SQLITE_NULL }
    }

    pub fn text(&self, column: c_int) -> String {
        self.str(column).into_owned()
    }

    /// The column's text, borrowed while it is valid UTF-8 (valid until the next step or reset).
    pub fn str(&self, column: c_int) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.bytes(column))
    }

    /// The column's bytes, valid until the next step or reset.
    pub fn bytes(&self, column: c_int) -> &[u8] {
        // SAFETY: after a row; text/blob pointers stay valid until the next step/reset, which need &mut self.
        unsafe {
            let ptr = ffi::sqlite3_column_blob(self.raw, column);
            let len = ffi::sqlite3_column_bytes(self.raw, column);
            if ptr.is_null() || len <= 0 {
                &[]
            } else {
                std::slice::from_raw_parts(ptr.cast(), len as usize)
            }
        }
    }
}

impl Drop for Stmt<'_> {
    fn drop(&mut self) {
        // SAFETY: prepared statement; reset makes it reusable, clear_bindings drops copied values.
        unsafe {
            ffi::sqlite3_reset(self.raw);
            ffi::sqlite3_clear_bindings(self.raw);
        }
    }
}
