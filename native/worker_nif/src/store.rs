//! `Worker.Store`: what durable files need beyond OTP's `:file`.

use crate::error::{self, Error};
use rustler::{Binary, Env, Term};
use std::os::unix::ffi::OsStrExt;

/// Flushes a directory's entries, so that a file renamed into it survives a
/// power loss, not only a crash. OTP cannot open a directory to `fsync` it.
/// `:ok` or `{:error, reason}`.
#[rustler::nif(schedule = "DirtyIo")]
fn store_sync_dir<'a>(env: Env<'a>, path: Binary<'a>) -> Term<'a> {
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.as_slice()));
    let synced = std::fs::File::open(path).and_then(|dir| dir.sync_all());
    error::status(
        env,
        synced.map_err(|e| Error::Reason(format!("{}: {e}", path.display()))),
    )
}
