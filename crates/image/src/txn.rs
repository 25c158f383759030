//! One pull or import in progress: the blobs and layers it has written or
//! relies on are *pinned*, so neither GC nor the failure of another
//! operation deletes them before the image's record is committed.
//!
//! A pin is taken before a file is looked for or written, and the store
//! deletes an item only under its lock when it is neither pinned nor
//! referenced by a record; so an operation never uses a file that is being
//! removed. When an operation fails (digest mismatch, refused layer,
//! registry error) its transaction is dropped uncommitted and what it
//! pinned that nothing else needs is removed: a failed pull or import
//! leaves nothing behind.

use std::io::Read;
use std::sync::Arc;

use super::digest::Digest;
use super::error::ImageError;
use super::record::ImageRecord;
use super::store::{empty_trash, Shared};

/// A pinned store item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Pin {
    /// `blobs/sha256/<hex>`.
    Blob(Digest),
    /// `layers/<diff-id hex>`.
    Layer(Digest),
}

/// An operation's pins; commit or drop (= roll back).
pub(crate) struct Txn {
    shared: Arc<Shared>,
    pins: Vec<Pin>,
    committed: bool,
}

impl Txn {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Txn {
            shared,
            pins: Vec::new(),
            committed: false,
        }
    }

    /// The store this operation writes to.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Pins an item for the rest of the operation.
    pub(crate) fn pin(&mut self, pin: Pin) {
        *self.shared.lock().pins.entry(pin.clone()).or_default() += 1;
        self.pins.push(pin);
    }

    /// Stores the bytes of `reader`. With `expected`, content hashing to
    /// anything else is refused (and a blob already stored is not read
    /// again); without, the blob is stored under its own digest. Returns
    /// the digest and size.
    pub(crate) fn put(
        &mut self,
        expected: Option<&Digest>,
        reader: impl Read,
    ) -> Result<(Digest, u64), ImageError> {
        if let Some(digest) = expected {
            self.pin(Pin::Blob(digest.clone()));
            if self.shared.blobs.contains(digest) {
                return Ok((digest.clone(), self.shared.blobs.size(digest)?));
            }
        }
        let staged = self.shared.blobs.stage(reader)?;
        if expected.is_none() {
            self.pin(Pin::Blob(staged.digest.clone()));
        }
        let want = expected.unwrap_or(&staged.digest);
        self.shared
            .blobs
            .commit(&staged.path, want, &staged.digest)?;
        Ok((staged.digest, staged.size))
    }

    /// Stores `bytes`, which must hash to `expected`.
    pub(crate) fn put_bytes(&mut self, expected: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
        self.put(Some(expected), bytes).map(|_| ())
    }

    /// Records the image (every file it needs is in place) and ends the
    /// operation.
    pub(crate) fn commit(mut self, record: ImageRecord) -> Result<ImageRecord, ImageError> {
        let stored = self.shared.lock().index.insert(record)?;
        self.committed = true;
        Ok(stored)
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        let mut trash = Vec::new();
        {
            let mut state = self.shared.lock();
            for pin in self.pins.drain(..) {
                if let Some(count) = state.pins.get_mut(&pin) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        state.pins.remove(&pin);
                    }
                }
                if !self.committed && state.is_garbage(&pin) {
                    trash.extend(self.shared.move_to_trash(&pin));
                }
            }
        }
        empty_trash(trash);
    }
}
