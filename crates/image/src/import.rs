//! `import`: images from a file instead of a registry — an OCI image
//! layout directory or tarball, or a `docker save` tarball (or its
//! unpacked directory). The format is recognised by its marker file
//! (`oci-layout` first, since Docker 25+ writes both, then
//! `manifest.json`). Blobs are staged and verified by
//! `oci_layout.rs` / `docker_save.rs`,
//! then layers are unpacked and records committed as for a pull.

use std::path::{Path, PathBuf};

use super::assemble::{finish, Staged};
use super::docker_save;
use super::error::ImageError;
use super::oci_layout;
use super::record::ImageRecord;
use super::reference;
use super::source::{unpack_archive, SourceDir, Unpacked};
use super::store::ImageStore;

/// Import settings.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Name the imported image this (instead of, or when the archive has
    /// no, name). Only for a source holding a single image.
    pub reference: Option<String>,
}

impl ImageStore {
    /// Imports every linux/amd64 image found at `path`; returns their
    /// records. Runs on a blocking thread.
    pub async fn import(
        &self,
        path: &Path,
        options: &ImportOptions,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let (store, path, options) = (self.clone(), path.to_owned(), options.clone());
        tokio::task::spawn_blocking(move || store.import_blocking(&path, &options))
            .await
            .map_err(|e| ImageError::Io {
                context: "image import task".into(),
                source: std::io::Error::other(e),
            })?
    }

    fn import_blocking(
        &self,
        path: &Path,
        options: &ImportOptions,
    ) -> Result<Vec<ImageRecord>, ImageError> {
        let meta = std::fs::metadata(path).map_err(ImageError::io_at("import", path))?;
        let _unpacked: Option<Unpacked>;
        let dir: PathBuf = if meta.is_dir() {
            _unpacked = None;
            path.to_owned()
        } else {
            let unpacked = unpack_archive(path, &self.shared.tmp)?;
            let dir = unpacked.dir.clone();
            _unpacked = Some(unpacked);
            dir
        };
        let source = SourceDir::open(&dir, path)?;
        let mut staged = self.stage(&source)?;
        rename(&mut staged, options, &source)?;
        staged.into_iter().map(finish).collect()
    }

    fn stage(&self, source: &SourceDir) -> Result<Vec<Staged>, ImageError> {
        if source.exists("oci-layout") {
            oci_layout::stage(&self.shared, source)
        } else if source.exists("manifest.json") {
            docker_save::stage(&self.shared, source)
        } else {
            Err(source.error("neither an OCI image layout (no oci-layout file) nor a docker save archive (no manifest.json)"))
        }
    }
}

/// Applies [`ImportOptions::reference`].
fn rename(
    staged: &mut [Staged],
    options: &ImportOptions,
    source: &SourceDir,
) -> Result<(), ImageError> {
    let Some(given) = &options.reference else {
        return Ok(());
    };
    let names = reference::names(&reference::parse(given)?);
    match staged {
        [only] => {
            only.names = names;
            Ok(())
        }
        _ => Err(source.error(format!(
            "holds {} images; a reference names only one",
            staged.len()
        ))),
    }
}
