//! Reading an import source: a directory (an OCI layout or an unpacked
//! `docker save`), or a tarball of one, which is first unpacked into the
//! store's `tmp/` in [`Mode::Archive`] (files, directories and symlinks
//! only, nothing outside). Every file is then opened with
//! `openat2(RESOLVE_BENEATH)`: a symlink in the source (old `docker save`
//! archives link duplicate layers) may point anywhere inside it but
//! nothing outside is ever read, so an archive cannot smuggle a host file
//! such as `/etc/shadow` into the store as a "blob".

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
use serde::de::DeserializeOwned;

use super::blobs::{read_limited, MAX_JSON_BLOB};
use super::digest::Digest;
use super::error::ImageError;
use super::fsutil::{remove_any, unique_name};
use super::media::decompress;
use super::unpack::{unpack, Mode as UnpackMode, UnpackLimits};

/// A directory files are read beneath.
pub(crate) struct SourceDir {
    fd: OwnedFd,
    /// The path the user gave (for messages).
    pub(crate) origin: PathBuf,
}

impl SourceDir {
    /// Opens `dir`; `origin` is what the user gave.
    pub(crate) fn open(dir: &Path, origin: &Path) -> Result<Self, ImageError> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        let fd = openat2(CWD, dir, flags, Mode::empty(), ResolveFlags::empty())
            .map_err(|e| ImageError::io("open", dir, e.into()))?;
        Ok(SourceDir {
            fd,
            origin: origin.to_owned(),
        })
    }

    /// An import error about this source.
    pub(crate) fn error(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Import {
            path: self.origin.clone(),
            reason: reason.into(),
        }
    }

    /// Opens the regular file `rel` beneath the source.
    pub(crate) fn open_file(&self, rel: &str) -> Result<File, ImageError> {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let flags = OFlags::RDONLY | OFlags::CLOEXEC;
        let fd = openat2(&self.fd, rel, flags, Mode::empty(), resolve)
            .map_err(|e| self.error(format!("{rel}: {}", std::io::Error::from(e))))?;
        let file = File::from(fd);
        let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if !is_file {
            return Err(self.error(format!("{rel} is not a regular file")));
        }
        Ok(file)
    }

    /// Whether `rel` exists beneath the source.
    pub(crate) fn exists(&self, rel: &str) -> bool {
        self.open_file(rel).is_ok()
    }

    /// Reads and parses the JSON file `rel`.
    pub(crate) fn read_json<T: DeserializeOwned>(&self, rel: &str) -> Result<T, ImageError> {
        let bytes = read_limited(self.open_file(rel)?, MAX_JSON_BLOB, rel)?;
        serde_json::from_slice(&bytes).map_err(|e| self.error(format!("{rel}: {e}")))
    }

    /// Reads an OCI layout blob and checks it hashes to `digest`.
    pub(crate) fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let bytes = read_limited(
            self.open_file(&blob_path(digest))?,
            MAX_JSON_BLOB,
            digest.as_str(),
        )?;
        let actual = Digest::of_bytes(&bytes);
        if &actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {digest} in {}", self.origin.display()),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }
}

/// Where an OCI layout keeps a blob.
pub(crate) fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// A tarball unpacked into `tmp/`, deleted on drop.
pub(crate) struct Unpacked {
    pub(crate) dir: PathBuf,
}

impl Drop for Unpacked {
    fn drop(&mut self) {
        let _ = remove_any(&self.dir);
    }
}

/// Unpacks the (optionally compressed) tarball `archive` into `tmp`.
pub(crate) fn unpack_archive(archive: &Path, tmp: &Path) -> Result<Unpacked, ImageError> {
    let dir = tmp.join(unique_name("import"));
    fs::create_dir(&dir).map_err(ImageError::io_at("create", &dir))?;
    let unpacked = Unpacked { dir };
    let file = File::open(archive).map_err(ImageError::io_at("open", archive))?;
    let name = archive.display().to_string();
    let reader: Box<dyn Read> = decompress(file).map_err(|source| ImageError::BadArchive {
        layer: name.clone(),
        source,
    })?;
    // An archive holds every layer of its images: the per-layer caps
    // would refuse big images, and the file is the operator's (it comes
    // from an artifact directory); the layers in it are capped when they
    // are unpacked.
    unpack(
        reader,
        &unpacked.dir,
        UnpackMode::Archive,
        &name,
        UnpackLimits {
            max_bytes: u64::MAX,
            max_entries: u64::MAX,
        },
    )?;
    Ok(unpacked)
}
