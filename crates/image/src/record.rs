//! Image records and the index that persists them.
//!
//! The index is a redb table, `images`: one row per image, keyed by its
//! manifest digest, the value a format version byte and the record as
//! JSON. The table lives in the agent's state file beside every other
//! record (shared through [`crate::ImageStore::open_shared`]), or in
//! `<images>/index.redb` for a store used alone. Each change is one
//! fsynced transaction, all-or-nothing; records are committed only after
//! their blobs and layers are durable, so a crash at any point leaves
//! either no record (and unreferenced files that GC removes) or a complete
//! image. A row that cannot be read at open is moved, bytes unchanged, to
//! the shared `quarantine` table (key `images/<digest>`) and reported; the
//! other images are served. [`import_index_file`] moves a store's earlier
//! `index.json` into the table.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use super::digest::{is_hex64, Digest};
use super::error::ImageError;
use super::reference;

/// The index file's format version.
pub const INDEX_VERSION: u32 = 1;

/// The format of an `images` row (its first byte).
const ROW_VERSION: u8 = 1;

/// One stored image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id: the digest of its config (as Docker and CRI use it).
    pub id: Digest,
    /// The digest of its manifest, which the record is keyed by.
    pub manifest_digest: Digest,
    /// Canonical names (`registry/repo:tag`, `registry/repo@digest`).
    pub references: Vec<String>,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// The image config (entrypoint, cmd, env, user, workdir…).
    pub config: ImageConfiguration,
    /// Sum of the layer blobs' sizes.
    pub size_bytes: u64,
    /// When it was stored, seconds since the epoch.
    pub stored_at_unix: u64,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as distributed (compressed).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// The blob's size.
    pub size: u64,
    /// Digest of the uncompressed tar: the layer directory's name.
    pub diff_id: Digest,
}

impl ImageRecord {
    /// Whether this is a VM image (kernel, initramfs, disk) rather than a
    /// container image.
    pub fn is_vm_image(&self) -> bool {
        self.layers
            .iter()
            .any(|l| super::media::VmPayload::of(&l.media_type).is_some())
    }

    /// The first reference, or the short id when it has none.
    pub fn display_name(&self) -> String {
        self.references
            .first()
            .cloned()
            .unwrap_or_else(|| self.id.short().to_owned())
    }
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: Vec<ImageRecord>,
}

/// The records in memory and where they persist.
/// manifest digest → format version byte + JSON [`ImageRecord`].
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// Rows that could not be read, moved aside: `images/<key>` → the bytes.
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

/// The index: every record in memory, each change committed to the table.
pub(crate) struct Index {
    db: Arc<Database>,
    images: BTreeMap<Digest, ImageRecord>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("images", &self.images.len())
            .finish()
    }
}

impl Index {
    /// Loads the index from `db`, creating the table if missing; rows that
    /// cannot be read go to quarantine (logged), in the same transaction.
    pub(crate) fn load(db: Arc<Database>) -> Result<Self, ImageError> {
        let tx = db.begin_write().map_err(db_error)?;
        let mut images = BTreeMap::new();
        let mut unreadable = Vec::new();
        {
            let table = tx.open_table(IMAGES).map_err(db_error)?;
            for row in table.iter().map_err(db_error)? {
                let (key, value) = row.map_err(db_error)?;
                match decode(key.value(), value.value()) {
                    Ok(record) => {
                        images.insert(record.manifest_digest.clone(), record);
                    }
                    Err(reason) => {
                        unreadable.push((key.value().to_string(), value.value().to_vec(), reason))
                    }
                }
            }
        }
        if !unreadable.is_empty() {
            let mut table = tx.open_table(IMAGES).map_err(db_error)?;
            let mut quarantine = tx.open_table(QUARANTINE).map_err(db_error)?;
            for (key, bytes, reason) in unreadable {
                tracing::error!(
                    image = %key,
                    %reason,
                    "an unreadable image record was moved to the store's quarantine table"
                );
                quarantine
                    .insert(format!("images/{key}").as_str(), bytes.as_slice())
                    .map_err(db_error)?;
                table.remove(key.as_str()).map_err(db_error)?;
            }
        }
        tx.commit().map_err(db_error)?;
        Ok(Index { db, images })
    }

    /// Commits the rows that differ between `before` and the index now.
    fn save(&self, before: &BTreeMap<Digest, ImageRecord>) -> Result<(), ImageError> {
        let tx = self.db.begin_write().map_err(db_error)?;
        {
            let mut table = tx.open_table(IMAGES).map_err(db_error)?;
            for digest in before.keys().filter(|d| !self.images.contains_key(*d)) {
                table.remove(digest.as_str()).map_err(db_error)?;
            }
            for (digest, record) in &self.images {
                if before.get(digest) != Some(record) {
                    table
                        .insert(digest.as_str(), encode(record)?.as_slice())
                        .map_err(db_error)?;
                }
            }
        }
        tx.commit().map_err(db_error)
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.values()
    }

    /// The record named by `name`: a reference, a manifest digest, an id
    /// (`sha256:…` or bare hex).
    pub(crate) fn find(&self, name: &str) -> Option<&ImageRecord> {
        let digest = if is_hex64(name) {
            Digest::parse(&format!("sha256:{name}")).ok()
        } else {
            Digest::parse(name).ok()
        };
        if let Some(d) = digest {
            return self
                .images
                .values()
                .find(|r| r.manifest_digest == d || r.id == d);
        }
        let wanted = reference::parse(name)
            .ok()
            .and_then(|r| reference::lookup_name(&r))?;
        self.images
            .values()
            .find(|r| r.references.contains(&wanted))
    }

    /// Stores `record` (merging references into an existing record of the
    /// same manifest; a reference moves off any other image) and persists.
    /// On a failed write the in-memory index is left as it was.
    pub(crate) fn insert(&mut self, mut record: ImageRecord) -> Result<ImageRecord, ImageError> {
        let before = self.images.clone();
        if let Some(existing) = self.images.get(&record.manifest_digest) {
            let mut refs = existing.references.clone();
            refs.extend(record.references.iter().cloned());
            dedup(&mut refs);
            record.references = refs;
        }
        for other in self.images.values_mut() {
            other.references.retain(|r| !record.references.contains(r));
        }
        self.images
            .insert(record.manifest_digest.clone(), record.clone());
        self.save_or_restore(before).map(|()| record)
    }

    /// Removes the record of `manifest` and persists.
    pub(crate) fn remove(&mut self, manifest: &Digest) -> Result<Option<ImageRecord>, ImageError> {
        let before = self.images.clone();
        let removed = self.images.remove(manifest);
        self.save_or_restore(before).map(|()| removed)
    }

    fn save_or_restore(&mut self, before: BTreeMap<Digest, ImageRecord>) -> Result<(), ImageError> {
        let result = self.save(&before);
        if result.is_err() {
            self.images = before;
        }
        result
    }

    /// Blobs some record needs: manifests, configs, layers.
    pub(crate) fn referenced_blobs(&self) -> HashSet<Digest> {
        let mut out = HashSet::new();
        for r in self.images.values() {
            out.insert(r.manifest_digest.clone());
            out.insert(r.id.clone());
            out.extend(r.layers.iter().map(|l| l.digest.clone()));
        }
        out
    }

    /// Layer directories some record needs.
    pub(crate) fn referenced_layers(&self) -> HashSet<Digest> {
        self.images
            .values()
            .flat_map(|r| r.layers.iter().map(|l| l.diff_id.clone()))
            .collect()
    }
}

fn dedup(refs: &mut Vec<String>) {
    let mut seen = HashSet::new();
    refs.retain(|r| seen.insert(r.clone()));
}

/// Copies the records of a store's earlier `index.json` at `path` into the
/// `images` table in `into`; its caller commits it, or drops it and
/// nothing moved. A missing file moves nothing.
pub fn import_index_file(path: &Path, into: &WriteTransaction) -> Result<usize, ImageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(ImageError::io("read", path, e)),
    };
    let corrupt = |reason: String| ImageError::CorruptIndex {
        path: path.to_owned(),
        reason,
    };
    let file: IndexFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.version != INDEX_VERSION {
        return Err(corrupt(format!(
            "format version {} (this agent reads {INDEX_VERSION})",
            file.version
        )));
    }
    let mut table = into.open_table(IMAGES).map_err(db_error)?;
    for record in &file.images {
        table
            .insert(record.manifest_digest.as_str(), encode(record)?.as_slice())
            .map_err(db_error)?;
    }
    Ok(file.images.len())
}

/// A record's row: the format version byte, then JSON.
fn encode(record: &ImageRecord) -> Result<Vec<u8>, ImageError> {
    let mut bytes = vec![ROW_VERSION];
    serde_json::to_writer(&mut bytes, record).map_err(|e| ImageError::Io {
        context: "encode an image record".into(),
        source: e.into(),
    })?;
    Ok(bytes)
}

/// The record in a row, or why it cannot be read.
fn decode(key: &str, bytes: &[u8]) -> Result<ImageRecord, String> {
    let (version, body) = bytes.split_first().ok_or("empty row")?;
    if *version != ROW_VERSION {
        return Err(format!(
            "format version {version}, this agent reads {ROW_VERSION}"
        ));
    }
    let record: ImageRecord = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if record.manifest_digest.as_str() != key {
        return Err(format!(
            "the record is of {}, not of its key",
            record.manifest_digest
        ));
    }
    Ok(record)
}

fn db_error(e: impl Into<redb::Error>) -> ImageError {
    ImageError::Index(e.into())
}
