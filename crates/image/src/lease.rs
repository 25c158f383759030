//! Leases: how pods keep the image under their containers' root
//! filesystems from being removed. A lease is a guard; dropping it
//! releases it. The count lives in the store's state, keyed by manifest
//! digest, and [`ImageStore::remove`](super::ImageStore::remove) refuses
//! while it is non-zero.

use std::path::PathBuf;
use std::sync::Arc;

use super::record::ImageRecord;
use super::store::Shared;

/// A pod's hold on an image.
#[derive(Debug)]
pub struct ImageLease {
    shared: Arc<Shared>,
    record: ImageRecord,
    lowerdirs: Vec<PathBuf>,
}

impl ImageLease {
    pub(crate) fn new(shared: Arc<Shared>, record: ImageRecord, lowerdirs: Vec<PathBuf>) -> Self {
        ImageLease {
            shared,
            record,
            lowerdirs,
        }
    }

    /// The leased image.
    pub fn record(&self) -> &ImageRecord {
        &self.record
    }

    /// Its layer directories, top first, for overlayfs `lowerdir=`.
    pub fn lowerdirs(&self) -> &[PathBuf] {
        &self.lowerdirs
    }
}

impl Drop for ImageLease {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let key = &self.record.manifest_digest;
        if let Some(count) = state.leases.get_mut(key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.leases.remove(key);
            }
        }
    }
}
