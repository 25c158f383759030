//! The image store: the content-addressed directory `<data>/images/`
//! shared by every pod on the node.
//!
//! ```text
//! <data>/images/
//!   index.redb            image records, for a store used alone (see
//!                         record.rs; the agent keeps them in its state file)
//!   blobs/sha256/<hex>    manifests, configs, layer blobs (see blobs.rs)
//!   layers/<diff-id hex>/ unpacked layers, overlayfs lowerdirs (see layers.rs)
//!   tmp/                  work files and directories, emptied at open
//! ```
//!
//! One mutex guards the in-memory index, the lease counts and the pins
//! (files an unfinished pull or import relies on); it is never held across
//! an `.await` or while downloading or unpacking. Cloning an `ImageStore`
//! is cheap and shares the store.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::blobs::BlobStore;
use super::digest::Digest;
use super::error::ImageError;
use super::fsutil::{remove_any, unique_name};
use super::layers::LayerStore;
use super::lease::ImageLease;
use super::media::{VmPayload, VM_CMDLINE_LABEL};
use super::record::{ImageRecord, Index};
use super::txn::Pin;
use super::unpack::UnpackLimits;

/// The node's image store. See the module docs for the layout.
#[derive(Clone, Debug)]
pub struct ImageStore {
    pub(crate) shared: Arc<Shared>,
}

/// What every clone of the store shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) root: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) blobs: BlobStore,
    pub(crate) layers: LayerStore,
    state: Mutex<State>,
}

/// The mutable state behind the store's mutex.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) index: Index,
    /// Leases per manifest digest.
    pub(crate) leases: HashMap<Digest, usize>,
    /// Files in use by unfinished pulls/imports, with use counts.
    pub(crate) pins: HashMap<Pin, usize>,
}

impl Shared {
    /// Locks the state (a panic elsewhere does not make it unusable: every
    /// change to it is a single insert/remove).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where a pinned item lives.
    pub(crate) fn pin_path(&self, pin: &Pin) -> PathBuf {
        match pin {
            Pin::Blob(d) => self.blobs.path(d),
            Pin::Layer(d) => self.layers.path(d),
        }
    }

    /// Moves a blob or layer out of the store into `tmp/` (one atomic
    /// rename, done under the lock) so it can be deleted after the lock is
    /// released. `None` if it was not there.
    pub(crate) fn move_to_trash(&self, pin: &Pin) -> Option<PathBuf> {
        let trash = self.tmp.join(unique_name("trash"));
        fs::rename(self.pin_path(pin), &trash).ok().map(|()| trash)
    }
}

impl State {
    /// Whether no record refers to the item and no operation has it pinned.
    pub(crate) fn is_garbage(&self, pin: &Pin) -> bool {
        self.garbage_test()(pin)
    }

    /// [`State::is_garbage`] for many items: the referenced sets are
    /// computed once.
    pub(crate) fn garbage_test(&self) -> impl Fn(&Pin) -> bool + '_ {
        let blobs = self.index.referenced_blobs();
        let layers = self.index.referenced_layers();
        move |pin| {
            if self.pins.get(pin).copied().unwrap_or(0) > 0 {
                return false;
            }
            match pin {
                Pin::Blob(d) => !blobs.contains(d),
                Pin::Layer(d) => !layers.contains(d),
            }
        }
    }
}

/// Only the store's owner may walk into it: unpacked layers keep their
/// setuid binaries and their files' modes, and no local user of the host
/// may run or read them through the host's tree (containerd's fix for
/// CVE-2021-41103 does the same). Containers are not affected: overlayfs
/// resolves its lower directories once, as root, at mount time. Set at
/// every open, so a store made before keeps no wider mode.
fn restrict_to_owner(root: &Path) -> Result<(), ImageError> {
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))
        .map_err(ImageError::io_at("restrict to its owner", root))
}

/// Deletes what was moved to the trash (outside the lock).
pub(crate) fn empty_trash(paths: Vec<PathBuf>) {
    for path in paths {
        if let Err(e) = remove_any(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete removed image data");
        }
    }
}

/// Where a VM image's parts are in the store. Read-only: every VM gets its
/// own copy of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmImageFiles {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub disk: PathBuf,
    /// The image's default kernel command line.
    pub cmdline: Option<String>,
}

impl ImageStore {
    /// Opens (creating) the store in `<data_dir>/images`, with its index in
    /// `<data_dir>/images/index.redb`, clearing what an interrupted pull,
    /// import or GC left in `tmp/`.
    pub fn open(data_dir: &Path) -> Result<Self, ImageError> {
        ImageStore::open_with_limits(data_dir, UnpackLimits::default())
    }

    /// [`ImageStore::open`] with other caps on what one layer may unpack
    /// to.
    pub fn open_with_limits(data_dir: &Path, limits: UnpackLimits) -> Result<Self, ImageError> {
        let root = data_dir.join("images");
        fs::create_dir_all(&root).map_err(ImageError::io_at("create", &root))?;
        let path = root.join("index.redb");
        let db = redb::Database::create(&path).map_err(|e| ImageError::CorruptIndex {
            path,
            reason: e.to_string(),
        })?;
        ImageStore::open_shared_with_limits(data_dir, Arc::new(db), limits)
    }

    /// [`ImageStore::open`] with the index's table in `db`, a database the
    /// caller shares (the agent's state file).
    pub fn open_shared(data_dir: &Path, db: Arc<redb::Database>) -> Result<Self, ImageError> {
        ImageStore::open_shared_with_limits(data_dir, db, UnpackLimits::default())
    }

    /// [`ImageStore::open_shared`] with other caps on what one layer may
    /// unpack to.
    pub fn open_shared_with_limits(
        data_dir: &Path,
        db: Arc<redb::Database>,
        limits: UnpackLimits,
    ) -> Result<Self, ImageError> {
        let root = data_dir.join("images");
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).map_err(ImageError::io_at("create", &tmp))?;
        restrict_to_owner(&root)?;
        clear_dir(&tmp)?;
        let blobs = BlobStore::open(&root, &tmp)?;
        let layers = LayerStore::open(&root, &tmp, limits)?;
        let index = Index::load(db)?;
        let state = Mutex::new(State {
            index,
            leases: HashMap::new(),
            pins: HashMap::new(),
        });
        let shared = Shared {
            root,
            tmp,
            blobs,
            layers,
            state,
        };
        Ok(ImageStore {
            shared: Arc::new(shared),
        })
    }

    /// The store's directory (`<data>/images`).
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Every stored image.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.shared.lock().index.all().cloned().collect()
    }

    /// The image named by a reference, manifest digest or id.
    pub fn get(&self, name: &str) -> Result<ImageRecord, ImageError> {
        self.shared
            .lock()
            .index
            .find(name)
            .cloned()
            .ok_or_else(|| ImageError::UnknownImage(name.to_owned()))
    }

    /// Leases the image for a pod: it cannot be removed until every lease
    /// is dropped. Leases live in memory; after an agent restart the pods
    /// being re-adopted take theirs again before the API serves removals.
    pub fn acquire(&self, name: &str) -> Result<ImageLease, ImageError> {
        let mut state = self.shared.lock();
        let record = state
            .index
            .find(name)
            .cloned()
            .ok_or_else(|| ImageError::UnknownImage(name.to_owned()))?;
        *state
            .leases
            .entry(record.manifest_digest.clone())
            .or_default() += 1;
        drop(state);
        let lowerdirs = self.lowerdirs(&record);
        Ok(ImageLease::new(self.shared.clone(), record, lowerdirs))
    }

    /// How many leases the image holds.
    pub fn lease_count(&self, name: &str) -> Result<usize, ImageError> {
        let state = self.shared.lock();
        let record = state
            .index
            .find(name)
            .ok_or_else(|| ImageError::UnknownImage(name.to_owned()))?;
        Ok(state
            .leases
            .get(&record.manifest_digest)
            .copied()
            .unwrap_or(0))
    }

    /// Removes the image (every reference to it), refusing while it is
    /// leased. Its blobs and layers stay until [`ImageStore::gc`] (they may
    /// be shared with other images).
    pub fn remove(&self, name: &str) -> Result<ImageRecord, ImageError> {
        let mut state = self.shared.lock();
        let record = state
            .index
            .find(name)
            .cloned()
            .ok_or_else(|| ImageError::UnknownImage(name.to_owned()))?;
        let leases = state
            .leases
            .get(&record.manifest_digest)
            .copied()
            .unwrap_or(0);
        if leases > 0 {
            return Err(ImageError::InUse {
                image: record.display_name(),
                leases,
            });
        }
        state.index.remove(&record.manifest_digest)?;
        Ok(record)
    }

    /// The overlayfs `lowerdir` list for an image: its layer directories,
    /// top layer first (the order `lowerdir=` wants).
    pub fn lowerdirs(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record
            .layers
            .iter()
            .rev()
            .map(|l| self.shared.layers.path(&l.diff_id))
            .collect()
    }

    /// A VM image's files in the store, and its default kernel command
    /// line; `None` for a container image.
    pub fn vm_files(&self, record: &ImageRecord) -> Option<VmImageFiles> {
        if !record.is_vm_image() {
            return None;
        }
        let file = |kind: VmPayload| {
            record
                .layers
                .iter()
                .find(|l| VmPayload::of(&l.media_type) == Some(kind))
                .map(|l| self.layer_dir(&l.diff_id).join(kind.file_name()))
        };
        let cmdline = record
            .config
            .config()
            .as_ref()
            .and_then(|c| c.labels().as_ref())
            .and_then(|labels| labels.get(VM_CMDLINE_LABEL))
            .cloned();
        Some(VmImageFiles {
            kernel: file(VmPayload::Kernel)?,
            initrd: file(VmPayload::Initrd),
            disk: file(VmPayload::Disk)?,
            cmdline,
        })
    }
    /// The directory of the unpacked layer with this diff-id.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.shared.layers.path(diff_id)
    }

    /// The file of the blob with this digest.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.shared.blobs.path(digest)
    }
}

/// Removes everything inside `dir`.
fn clear_dir(dir: &Path) -> Result<(), ImageError> {
    for entry in fs::read_dir(dir).map_err(ImageError::io_at("list", dir))? {
        let path = entry.map_err(ImageError::io_at("list", dir))?.path();
        remove_any(&path).map_err(ImageError::io_at("remove", &path))?;
    }
    Ok(())
}
