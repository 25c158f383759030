//! The layer store: `layers/<diff-id hex>/`, each layer unpacked once in
//! overlayfs form and used read-only as a `lowerdir` by every pod whose
//! image has it.
//!
//! Keyed by diff-id (digest of the uncompressed tar) rather than chain-id:
//! with overlayfs each layer directory holds only that layer's changes
//! (its whiteouts included), independent of the layers below, so the same
//! layer under different parents is the same directory.
//!
//! A layer is unpacked into a private temp directory, its diff-id checked
//! against the image config, the filesystem synced (`syncfs`) and only
//! then renamed into place: a layer directory that exists is complete, and
//! a refused or failed unpack is deleted whole. Only blobs already in the
//! blob store (verified against their digest) are ever unpacked.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::blobs::list_digests;
use super::digest::{Digest, HashingReader};
use super::error::ImageError;
use super::fsutil::{fsync_dir, remove_any, unique_name};
use super::media::{decompress, VmPayload};
use super::unpack::{unpack, Mode, UnpackLimits};

/// Unpacked layers under `<images>/layers/`.
#[derive(Debug)]
pub(crate) struct LayerStore {
    dir: PathBuf,
    tmp: PathBuf,
    limits: UnpackLimits,
}

impl LayerStore {
    /// Opens (creating) `root/layers`; work directories go to `tmp`; no
    /// layer unpacks to more than `limits`.
    pub(crate) fn open(root: &Path, tmp: &Path, limits: UnpackLimits) -> Result<Self, ImageError> {
        let dir = root.join("layers");
        fs::create_dir_all(&dir).map_err(ImageError::io_at("create", &dir))?;
        Ok(LayerStore {
            dir,
            tmp: tmp.to_owned(),
            limits,
        })
    }

    /// What one layer may unpack to.
    pub(crate) fn limits(&self) -> UnpackLimits {
        self.limits
    }

    /// The directory of the layer with this diff-id.
    pub(crate) fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    /// Whether the layer is unpacked.
    pub(crate) fn contains(&self, diff_id: &Digest) -> bool {
        self.path(diff_id).is_dir()
    }

    /// Every unpacked layer's diff-id.
    pub(crate) fn list(&self) -> Result<Vec<Digest>, ImageError> {
        list_digests(&self.dir)
    }

    /// Unpacks the stored blob at `blob` (layer `digest` of type
    /// `media_type`, compressed or not) as the layer `diff_id`, unless it
    /// already is: a filesystem layer as a tree, a VM payload as its one
    /// file.
    pub(crate) fn unpack(
        &self,
        blob: &Path,
        digest: &Digest,
        diff_id: &Digest,
        media_type: &str,
    ) -> Result<(), ImageError> {
        if self.contains(diff_id) {
            return Ok(());
        }
        let work = self.tmp.join(unique_name("layer"));
        fs::create_dir(&work).map_err(ImageError::io_at("create", &work))?;
        let result = match VmPayload::of(media_type) {
            Some(payload) => self.unpack_payload(&work, blob, digest, diff_id, payload),
            None => self.unpack_into(&work, blob, digest, diff_id),
        };
        if result.is_err() {
            let _ = remove_any(&work);
        }
        result
    }

    fn unpack_into(
        &self,
        work: &Path,
        blob: &Path,
        digest: &Digest,
        diff_id: &Digest,
    ) -> Result<(), ImageError> {
        let file = File::open(blob).map_err(ImageError::io_at("open blob", blob))?;
        let bad = |source| ImageError::BadArchive {
            layer: digest.to_string(),
            source,
        };
        let mut tar = HashingReader::new(decompress(file).map_err(bad)?);
        unpack(&mut tar, work, Mode::Layer, digest.as_str(), self.limits)?;
        let (actual, _) = tar.finish().map_err(bad)?;
        if &actual != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed layer {digest} (diff-id)"),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        self.publish(work, diff_id)
    }

    /// A VM payload: its bytes (gunzipped when its type says so) into one
    /// world-readable file, sparse where they are zero, checked against
    /// the diff-id. A payload may not decode to more than the unpack
    /// limit's bytes.
    fn unpack_payload(
        &self,
        work: &Path,
        blob: &Path,
        digest: &Digest,
        diff_id: &Digest,
        payload: VmPayload,
    ) -> Result<(), ImageError> {
        let file = File::open(blob).map_err(ImageError::io_at("open blob", blob))?;
        let bad = |source| ImageError::BadArchive {
            layer: digest.to_string(),
            source,
        };
        let reader: Box<dyn Read> = if payload.gzipped() {
            Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
                file,
            )))
        } else {
            Box::new(file)
        };
        let mut reader = HashingReader::new(reader);
        let path = work.join(payload.file_name());
        let out = File::create(&path).map_err(ImageError::io_at("create", &path))?;
        let written = write_sparse(&mut reader, &out, self.limits.max_bytes).map_err(bad)?;
        let (actual, _) = reader.finish().map_err(bad)?;
        if &actual != diff_id {
            return Err(ImageError::DigestMismatch {
                what: format!("uncompressed VM payload {digest} (diff-id)"),
                expected: diff_id.to_string(),
                actual: actual.to_string(),
            });
        }
        out.set_len(written)
            .map_err(ImageError::io_at("size", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .map_err(ImageError::io_at("chmod", &path))?;
        self.publish(work, diff_id)
    }

    /// Makes the finished work directory the layer: mode 0755, data
    /// synced, renamed into place, the rename synced.
    fn publish(&self, work: &Path, diff_id: &Digest) -> Result<(), ImageError> {
        fs::set_permissions(work, fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io_at("chmod", work))?;
        let dir = File::open(work).map_err(ImageError::io_at("open", work))?;
        rustix::fs::syncfs(&dir).map_err(|e| ImageError::io("syncfs", work, e.into()))?;
        let dest = self.path(diff_id);
        match fs::rename(work, &dest) {
            Ok(()) => fsync_dir(&self.dir).map_err(ImageError::io_at("fsync", &self.dir)),
            // Another pull of the same layer finished first: same content.
            Err(_) if self.contains(diff_id) => {
                remove_any(work).map_err(ImageError::io_at("remove", work))
            }
            Err(e) => Err(ImageError::io("rename layer to", &dest, e)),
        }
    }
}

/// Copies `reader` into `out`, leaving 4 KiB blocks of zeros as holes;
/// returns the bytes read. More than `max_bytes` is an error.
fn write_sparse(reader: &mut impl Read, out: &File, max_bytes: u64) -> std::io::Result<u64> {
    const BLOCK: usize = 4096;
    let mut buf = vec![0u8; 1 << 20];
    let mut at: u64 = 0;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(at);
        }
        if at.saturating_add(filled as u64) > max_bytes {
            return Err(std::io::Error::other(format!(
                "the payload decodes to more than {max_bytes} bytes"
            )));
        }
        for (i, block) in buf[..filled].chunks(BLOCK).enumerate() {
            if block.iter().any(|&b| b != 0) {
                out.write_all_at(block, at + (i * BLOCK) as u64)?;
            }
        }
        at += filled as u64;
    }
}
