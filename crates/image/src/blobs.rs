//! The blob store: `blobs/sha256/<hex>`, one immutable file per manifest,
//! config or compressed layer, named by the digest of its bytes.
//!
//! Every write goes to a temp file in `tmp/`, is hashed as it is written,
//! fsynced, and renamed into place only when the hash equals the expected
//! digest; a mismatch removes the temp file and is an error. So a blob in
//! the store always matches its name, and a crash mid-write leaves only a
//! temp file, which the next open clears.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::{is_hex64, Digest};
use super::error::ImageError;
use super::fsutil::{rename_durable, unique_name};

/// Largest manifest, index or config accepted (they are read into memory).
pub(crate) const MAX_JSON_BLOB: u64 = 16 << 20;

/// Blobs by digest under `<images>/blobs/sha256/`.
#[derive(Debug)]
pub(crate) struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
}

/// A temp file being filled with a blob; [`BlobStore::commit`] moves it in.
pub(crate) struct PendingBlob {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
}

/// A fully written temp file and the digest and size of what it holds.
pub(crate) struct Staged {
    pub(crate) path: PathBuf,
    pub(crate) digest: Digest,
    pub(crate) size: u64,
}

impl BlobStore {
    /// Opens (creating) `root/blobs/sha256`; temp files go to `tmp`.
    pub(crate) fn open(root: &Path, tmp: &Path) -> Result<Self, ImageError> {
        let dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(ImageError::io_at("create", &dir))?;
        Ok(BlobStore {
            dir,
            tmp: tmp.to_owned(),
        })
    }

    /// Where the blob with this digest lives.
    pub(crate) fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// Whether the blob is stored.
    pub(crate) fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Reads a small (JSON) blob.
    pub(crate) fn read(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest);
        let file = File::open(&path).map_err(ImageError::io_at("open blob", &path))?;
        read_limited(file, MAX_JSON_BLOB, digest.as_str())
    }

    /// A new temp file to fill.
    pub(crate) fn pending(&self) -> Result<PendingBlob, ImageError> {
        let path = self.tmp.join(unique_name("blob"));
        let file = File::create(&path).map_err(ImageError::io_at("create", &path))?;
        Ok(PendingBlob { path, file })
    }

    /// Moves a filled, fsynced temp file into place if `actual` (the hash
    /// of what was written) equals `expected`; otherwise removes it and
    /// fails. A blob already stored is kept and the temp file dropped.
    pub(crate) fn commit(
        &self,
        pending: &Path,
        expected: &Digest,
        actual: &Digest,
    ) -> Result<(), ImageError> {
        if expected != actual {
            let _ = fs::remove_file(pending);
            return Err(ImageError::DigestMismatch {
                what: format!("blob {expected}"),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        if self.contains(expected) {
            let _ = fs::remove_file(pending);
            return Ok(());
        }
        let dest = self.path(expected);
        rename_durable(pending, &dest).map_err(|e| {
            let _ = fs::remove_file(pending);
            ImageError::io("store blob", &dest, e)
        })
    }

    /// Copies `reader` into a temp file, hashing and fsyncing it; the
    /// caller commits it under the digest it expects.
    pub(crate) fn stage(&self, reader: impl Read) -> Result<Staged, ImageError> {
        let mut pending = self.pending()?;
        match copy_hashing(reader, &mut pending.file) {
            Ok((digest, size)) => Ok(Staged {
                path: pending.path,
                digest,
                size,
            }),
            Err(e) => {
                let _ = fs::remove_file(&pending.path);
                Err(ImageError::io("write", &pending.path, e))
            }
        }
    }

    /// The stored size of a blob.
    pub(crate) fn size(&self, digest: &Digest) -> Result<u64, ImageError> {
        let path = self.path(digest);
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(ImageError::io_at("stat", &path))
    }

    /// Every stored blob's digest (names that are not digests are ignored).
    pub(crate) fn list(&self) -> Result<Vec<Digest>, ImageError> {
        list_digests(&self.dir)
    }
}

/// Copies `reader` into `file`, hashing, then fsyncs the file.
fn copy_hashing(mut reader: impl Read, file: &mut File) -> io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])?;
        size += n as u64;
    }
    file.sync_all()?;
    Ok((Digest::from_hasher(hasher), size))
}

/// Reads at most `limit` bytes, refusing anything longer.
pub(crate) fn read_limited(
    reader: impl Read,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageError::Io {
            context: format!("read {what}"),
            source: e,
        })?;
    if bytes.len() as u64 > limit {
        return Err(ImageError::invalid(
            what,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// Digests named by the entries of `dir` (`<hex>` names only).
pub(crate) fn list_digests(dir: &Path) -> Result<Vec<Digest>, ImageError> {
    let entries = fs::read_dir(dir).map_err(ImageError::io_at("list", dir))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ImageError::io_at("list", dir))?;
        let name = entry.file_name();
        if let Some(hex) = name.to_str().filter(|n| is_hex64(n)) {
            out.push(Digest::parse(&format!("sha256:{hex}"))?);
        }
    }
    out.sort();
    Ok(out)
}
