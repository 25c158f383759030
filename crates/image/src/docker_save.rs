//! Importing a `docker save` archive in its classic form: `manifest.json`
//! listing, per image, a config file, `RepoTags` and layer tar files by
//! path. There are no digests to check against, so each file is stored
//! under the digest of its bytes, and an OCI manifest is written for the
//! image (layer media type from the file's compression); the layers'
//! diff-ids in the config are still verified when they are unpacked.

use std::io::Read;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;

use super::assemble::{parse_manifest, Staged};
use super::digest::Digest;
use super::error::ImageError;
use super::media::{Compression, OCI_CONFIG, OCI_MANIFEST};
use super::reference::archive_names;
use super::source::SourceDir;
use super::store::Shared;
use super::txn::Txn;

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Copies every image of the archive into the store (blobs only).
pub(crate) fn stage(shared: &Arc<Shared>, dir: &SourceDir) -> Result<Vec<Staged>, ImageError> {
    let entries: Vec<Entry> = dir.read_json("manifest.json")?;
    if entries.is_empty() {
        return Err(dir.error("manifest.json lists no image"));
    }
    entries
        .iter()
        .map(|e| stage_image(shared, dir, e))
        .collect()
}

fn stage_image(shared: &Arc<Shared>, dir: &SourceDir, entry: &Entry) -> Result<Staged, ImageError> {
    let mut txn = Txn::new(shared.clone());
    let (config_digest, config_size) = txn.put(None, dir.open_file(&entry.config)?)?;
    let mut layers = Vec::new();
    for path in &entry.layers {
        let (digest, size) = txn.put(None, dir.open_file(path)?)?;
        let media_type = compression_of(shared, &digest)?.oci_layer_type();
        layers.push(json!({"mediaType": media_type, "digest": digest.as_str(), "size": size}));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config_size},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| dir.error(e.to_string()))?;
    let manifest_digest = Digest::of_bytes(&bytes);
    txn.put_bytes(&manifest_digest, &bytes)?;
    let mut names = Vec::new();
    for tag in entry.repo_tags.iter().flatten() {
        names.extend(archive_names(tag)?);
    }
    Ok(Staged {
        txn,
        manifest: parse_manifest(&bytes, &manifest_digest)?,
        manifest_digest,
        names,
    })
}

/// The compression of a stored blob, from its first bytes.
fn compression_of(shared: &Shared, digest: &Digest) -> Result<Compression, ImageError> {
    let path = shared.blobs.path(digest);
    let mut head = Vec::with_capacity(4);
    std::fs::File::open(&path)
        .and_then(|f| f.take(4).read_to_end(&mut head))
        .map_err(ImageError::io_at("read", &path))?;
    Ok(Compression::sniff(&head))
}
