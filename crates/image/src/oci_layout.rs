//! Importing an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`), as written by `skopeo copy … oci:DIR`, `umoci` or
//! Docker 25+'s `docker save`. Each entry of `index.json` is an image
//! (a nested index is resolved to its linux/amd64 image); every blob is
//! verified against its digest as it is copied into the store.
//!
//! Names come from the `io.containerd.image.name` annotation, else
//! `org.opencontainers.image.ref.name` when it is a full reference (a bare
//! tag such as skopeo writes is not a name; give one with
//! [`ImportOptions::reference`](super::ImportOptions::reference)).

use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageIndex};
use serde::Deserialize;

use super::assemble::{config_of, parse_manifest, Staged};
use super::digest::Digest;
use super::error::ImageError;
use super::media::{manifest_kind, ManifestKind};
use super::platform::{is_host_platform, select};
use super::reference::archive_names;
use super::source::{blob_path, SourceDir};
use super::store::Shared;
use super::txn::Txn;

const NAME_ANNOTATIONS: &[&str] = &[
    "io.containerd.image.name",
    "org.opencontainers.image.ref.name",
];

#[derive(Deserialize)]
struct LayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

/// Copies every image of the layout into the store (blobs only).
pub(crate) fn stage(shared: &Arc<Shared>, dir: &SourceDir) -> Result<Vec<Staged>, ImageError> {
    let layout: LayoutFile = dir.read_json("oci-layout")?;
    if !layout.version.starts_with("1.") {
        return Err(dir.error(format!(
            "unsupported imageLayoutVersion {:?}",
            layout.version
        )));
    }
    let index: ImageIndex = dir.read_json("index.json")?;
    let mut out = Vec::new();
    for descriptor in index.manifests() {
        let names = names_of(descriptor)?;
        if let Some(manifest) = resolve(dir, descriptor)? {
            out.push(stage_image(shared, dir, &manifest, names)?);
        }
    }
    if out.is_empty() {
        return Err(dir.error("no linux/amd64 image in index.json"));
    }
    Ok(out)
}

fn names_of(descriptor: &Descriptor) -> Result<Vec<String>, ImageError> {
    let Some(annotations) = descriptor.annotations() else {
        return Ok(Vec::new());
    };
    for key in NAME_ANNOTATIONS {
        if let Some(value) = annotations.get(*key) {
            let names = archive_names(value)?;
            if !names.is_empty() {
                return Ok(names);
            }
        }
    }
    Ok(Vec::new())
}

/// The image-manifest digest an `index.json` entry stands for, or `None`
/// for another platform's image.
fn resolve(dir: &SourceDir, descriptor: &Descriptor) -> Result<Option<Digest>, ImageError> {
    let digest = Digest::parse(descriptor.digest().as_ref())?;
    let bytes = dir.read_blob(&digest)?;
    match manifest_kind(&bytes, &format!("manifest {digest}"))? {
        ManifestKind::Manifest
            if descriptor.platform().is_none() || is_host_platform(descriptor) =>
        {
            Ok(Some(digest))
        }
        ManifestKind::Manifest => Ok(None),
        ManifestKind::Index => {
            let nested = ImageIndex::from_reader(&bytes[..])
                .map_err(|e| ImageError::invalid(format!("index {digest}"), e))?;
            select(&nested)
                .map(|d| Digest::parse(d.digest().as_ref()))
                .transpose()
        }
    }
}

fn stage_image(
    shared: &Arc<Shared>,
    dir: &SourceDir,
    digest: &Digest,
    names: Vec<String>,
) -> Result<Staged, ImageError> {
    let mut txn = Txn::new(shared.clone());
    let bytes = dir.read_blob(digest)?;
    if manifest_kind(&bytes, &format!("manifest {digest}"))? != ManifestKind::Manifest {
        return Err(dir.error(format!("{digest} is not an image manifest")));
    }
    txn.put_bytes(digest, &bytes)?;
    let manifest = parse_manifest(&bytes, digest)?;
    let (config, _) = config_of(&manifest, digest)?;
    let mut blobs = vec![config];
    for layer in manifest.layers() {
        blobs.push(Digest::parse(layer.digest().as_ref())?);
    }
    for blob in &blobs {
        let file = dir.open_file(&blob_path(blob))?;
        txn.put(Some(blob), file)?;
    }
    Ok(Staged {
        txn,
        manifest_digest: digest.clone(),
        manifest,
        names,
    })
}
