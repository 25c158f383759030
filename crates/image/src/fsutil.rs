//! Small durable-filesystem helpers shared by the blob store and the layer
//! store: unique temp names, fsync of a directory after a rename (the
//! rename itself is only durable once its directory is), and removal.

use std::fs::{self, File};
use std::io;
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
