//! Garbage collection: deletes every blob and layer directory that no
//! image record refers to and no unfinished pull or import has pinned.
//! Removing an image only drops its record; GC then frees what it alone
//! used (layers shared with other images stay). Items are moved out of the
//! store under the lock, one rename each, and deleted after it is released.

use super::error::ImageError;
use super::store::{empty_trash, ImageStore, Shared};
use super::txn::Pin;

/// What a GC run freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs deleted.
    pub blobs_removed: usize,
    /// Their total size.
    pub blob_bytes_freed: u64,
    /// Layer directories deleted.
    pub layers_removed: usize,
}

impl ImageStore {
    /// Deletes unreferenced blobs and layers.
    pub async fn gc(&self) -> Result<GcReport, ImageError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || collect(&shared))
            .await
            .map_err(|e| ImageError::Io {
                context: "image gc task".into(),
                source: std::io::Error::other(e),
            })?
    }
}

fn collect(shared: &Shared) -> Result<GcReport, ImageError> {
    let blobs = shared.blobs.list()?;
    let layers = shared.layers.list()?;
    let mut report = GcReport::default();
    let mut trash = Vec::new();
    {
        let state = shared.lock();
        let is_garbage = state.garbage_test();
        for digest in blobs {
            let pin = Pin::Blob(digest);
            if is_garbage(&pin) {
                let size = std::fs::metadata(shared.pin_path(&pin))
                    .map(|m| m.len())
                    .unwrap_or(0);
                if let Some(path) = shared.move_to_trash(&pin) {
                    report.blobs_removed += 1;
                    report.blob_bytes_freed += size;
                    trash.push(path);
                }
            }
        }
        for diff_id in layers {
            let pin = Pin::Layer(diff_id);
            if is_garbage(&pin) {
                if let Some(path) = shared.move_to_trash(&pin) {
                    report.layers_removed += 1;
                    trash.push(path);
                }
            }
        }
    }
    empty_trash(trash);
    Ok(report)
}
