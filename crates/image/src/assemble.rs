//! From a stored manifest to an image record, shared by pull and import:
//! parse the manifest and config (config type, platform, one diff-id per
//! layer, layer media types), unpack the layers, commit the record.

use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::{Arch, ImageConfiguration, ImageManifest, Os};

use super::digest::Digest;
use super::error::ImageError;
use super::media::{check_config_type, check_layer_type, VmPayload};
use super::platform::PLATFORM;
use super::record::{ImageRecord, LayerRecord};
use super::txn::{Pin, Txn};

/// A manifest whose blobs are stored (and pinned by `txn`).
pub(crate) struct Staged {
    pub(crate) txn: Txn,
    pub(crate) manifest_digest: Digest,
    pub(crate) manifest: ImageManifest,
    pub(crate) names: Vec<String>,
}

/// Parses image-manifest JSON already checked to be a manifest.
pub(crate) fn parse_manifest(bytes: &[u8], digest: &Digest) -> Result<ImageManifest, ImageError> {
    ImageManifest::from_reader(bytes)
        .map_err(|e| ImageError::invalid(format!("manifest {digest}"), e))
}

/// The config's digest and size, after checking its media type.
pub(crate) fn config_of(
    manifest: &ImageManifest,
    digest: &Digest,
) -> Result<(Digest, u64), ImageError> {
    let config = manifest.config();
    check_config_type(
        config.media_type().as_ref(),
        &format!("config of manifest {digest}"),
    )?;
    Ok((Digest::parse(config.digest().as_ref())?, config.size()))
}

/// Parses the config and checks it is for this node's platform.
pub(crate) fn parse_config(
    bytes: &[u8],
    digest: &Digest,
) -> Result<ImageConfiguration, ImageError> {
    let what = format!("config {digest}");
    let config =
        ImageConfiguration::from_reader(bytes).map_err(|e| ImageError::invalid(&what, e))?;
    if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
        let found = format!("{}/{}", config.os(), config.architecture());
        return Err(ImageError::invalid(
            what,
            format!("built for {found}, this node runs {PLATFORM}"),
        ));
    }
    Ok(config)
}

/// Pairs each layer with its diff-id (the config must list exactly one
/// per layer) after checking the layer media types.
pub(crate) fn layer_records(
    manifest: &ImageManifest,
    config: &ImageConfiguration,
    digest: &Digest,
) -> Result<Vec<LayerRecord>, ImageError> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        let reason = format!(
            "{} layers but {} diff-ids in its config",
            manifest.layers().len(),
            diff_ids.len()
        );
        return Err(ImageError::invalid(format!("manifest {digest}"), reason));
    }
    let mut out = Vec::with_capacity(diff_ids.len());
    for (layer, diff_id) in manifest.layers().iter().zip(diff_ids) {
        let layer_digest = Digest::parse(layer.digest().as_ref())?;
        let media_type = layer.media_type().to_string();
        check_layer_type(&media_type, &format!("layer {layer_digest}"))?;
        out.push(LayerRecord {
            digest: layer_digest,
            media_type,
            size: layer.size(),
            diff_id: Digest::parse(diff_id)?,
        });
    }
    check_vm_payloads(&out, digest)?;
    Ok(out)
}

/// A VM image is VM payloads only: one kernel, at most one initramfs, one
/// disk. Payloads mixed with filesystem layers make neither a container
/// image nor a VM image.
fn check_vm_payloads(layers: &[LayerRecord], digest: &Digest) -> Result<(), ImageError> {
    let payloads: Vec<Option<VmPayload>> = layers
        .iter()
        .map(|l| VmPayload::of(&l.media_type))
        .collect();
    if payloads.iter().all(Option::is_none) {
        return Ok(());
    }
    let count = |kind| payloads.iter().filter(|p| **p == Some(kind)).count();
    let valid = payloads.iter().all(Option::is_some)
        && count(VmPayload::Kernel) == 1
        && count(VmPayload::Initrd) <= 1
        && count(VmPayload::Disk) == 1;
    if valid {
        Ok(())
    } else {
        Err(ImageError::invalid(
            format!("manifest {digest}"),
            "a VM image has one kernel, at most one initramfs and one disk, and nothing else",
        ))
    }
}

/// A new record.
pub(crate) fn new_record(
    manifest_digest: Digest,
    id: Digest,
    config: ImageConfiguration,
    layers: Vec<LayerRecord>,
    references: Vec<String>,
) -> ImageRecord {
    let size_bytes = layers.iter().map(|l| l.size).sum();
    let stored_at_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ImageRecord {
        id,
        manifest_digest,
        references,
        layers,
        config,
        size_bytes,
        stored_at_unix,
    }
}

/// Completes an import: reads the stored config, unpacks every layer
/// (blocking) and commits the record.
pub(crate) fn finish(staged: Staged) -> Result<ImageRecord, ImageError> {
    let Staged {
        mut txn,
        manifest_digest,
        manifest,
        names,
    } = staged;
    let shared = txn.shared().clone();
    let (config_digest, _) = config_of(&manifest, &manifest_digest)?;
    let config = parse_config(&shared.blobs.read(&config_digest)?, &config_digest)?;
    let layers = layer_records(&manifest, &config, &manifest_digest)?;
    for layer in &layers {
        txn.pin(Pin::Layer(layer.diff_id.clone()));
        if !shared.blobs.contains(&layer.digest) {
            return Err(ImageError::invalid(
                format!("manifest {manifest_digest}"),
                format!("layer {} missing", layer.digest),
            ));
        }
        shared.layers.unpack(
            &shared.blobs.path(&layer.digest),
            &layer.digest,
            &layer.diff_id,
            &layer.media_type,
        )?;
    }
    txn.commit(new_record(
        manifest_digest,
        config_digest,
        config,
        layers,
        names,
    ))
}
