//! Image records and the index that persists them.
//!
//! The index is one JSON file, `<images>/index.json`, replaced atomically
//! (temp file, fsync, rename, fsync of the directory) on every change. It
//! is small (one record per image), written only by pull, import and
//! remove, and read once at open; a whole-file replace makes every change
//! all-or-nothing without a second database next to the agent's redb state
//! file, and leaves an index an operator can read. Records are committed
//! only after their blobs and layers are durable, so a crash at any point
//! leaves either no record (and unreferenced files that GC removes) or a
//! complete image.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use super::digest::{is_hex64, Digest};
use super::error::ImageError;
use super::fsutil::write_atomic;
use super::reference;

/// The index file's format version.
pub const INDEX_VERSION: u32 = 1;

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
#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    tmp: PathBuf,
    images: BTreeMap<Digest, ImageRecord>,
}

impl Index {
    /// Loads `path` (absent means empty).
    pub(crate) fn load(path: &Path, tmp: &Path) -> Result<Self, ImageError> {
        let mut index = Index {
            path: path.to_owned(),
            tmp: tmp.to_owned(),
            images: BTreeMap::new(),
        };
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(index),
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
        for record in file.images {
            index.images.insert(record.manifest_digest.clone(), record);
        }
        Ok(index)
    }

    fn save(&self) -> Result<(), ImageError> {
        let file = IndexFile {
            version: INDEX_VERSION,
            images: self.images.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| ImageError::Io {
            context: "encode image index".into(),
            source: e.into(),
        })?;
        write_atomic(&self.path, &bytes, &self.tmp).map_err(ImageError::io_at("write", &self.path))
    }

    /// Every record, in manifest-digest order.
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
        let result = self.save();
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
