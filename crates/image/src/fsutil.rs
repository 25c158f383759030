//! Small durable-filesystem helpers shared by the blob store, the layer
//! store and the index: unique temp names, fsync of a directory after a
//! rename (the rename itself is only durable once its directory is), and
//! an atomic replace of a small file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique within this store's `tmp/` (cleared at every open):
/// `<prefix>-<pid>-<counter>`.
pub(crate) fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Makes the entries of `dir` (a rename into it) durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Renames `from` to `to` and fsyncs `to`'s directory.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    match to.parent() {
        Some(parent) => fsync_dir(parent),
        None => Ok(()),
    }
}

/// Replaces `path` with `bytes` atomically: write a temp file in `tmp_dir`
/// (same filesystem), fsync it, rename over `path`, fsync the directory.
/// A crash leaves either the old or the new file, never a torn one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], tmp_dir: &Path) -> io::Result<()> {
    let tmp = tmp_dir.join(unique_name("write"));
    let result = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| rename_durable(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a file or a directory tree; absent is fine. `remove_dir_all`
/// does not follow symlinks, so a tree with links to outside is safe to
/// remove.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
