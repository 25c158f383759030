//! Pulling an image from a registry into the store.
//!
//! Resolve the reference to a manifest (choosing linux/amd64 from an
//! index), store it, download the config and each missing layer blob into
//! the blob store (hashed on the way; a blob whose bytes do not match its
//! digest or size is refused and deleted), unpack each layer from the
//! verified blob, and commit the record. Blobs and layers already stored
//! are not fetched again. On any failure the operation's transaction rolls
//! back what only it had written.

use oci_client::{Client, Reference};
use oci_spec::image::{ImageConfiguration, ImageIndex};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use super::assemble::{config_of, layer_records, new_record, parse_config, parse_manifest};
use super::blobs::MAX_JSON_BLOB;
use super::digest::Digest;
use super::error::ImageError;
use super::media::{manifest_kind, ManifestKind, MANIFEST_TYPES};
use super::platform::{select, PLATFORM};
use super::progress::{LayerPhase, Meter, ProgressSink, PullEvent};
use super::record::{ImageRecord, LayerRecord};
use super::reference;
use super::registry::{client, map_error, map_io_error, PullOptions, RegistryCredentials};
use super::store::ImageStore;
use super::txn::{Pin, Txn};

/// An image's manifest digest, config and layers, once stored.
struct Metadata {
    manifest_digest: Digest,
    config_digest: Digest,
    config: ImageConfiguration,
    layers: Vec<LayerRecord>,
}

/// One pull's connection to its registry.
struct Session {
    client: Client,
    reference: Reference,
    auth: oci_client::secrets::RegistryAuth,
    registry: String,
}

impl ImageStore {
    /// Pulls `reference` (e.g. `127.0.0.1:5000/busybox:1`, `busybox`)
    /// into the store and returns its record. See the module docs.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: &RegistryCredentials,
        options: &PullOptions,
        progress: &ProgressSink,
    ) -> Result<ImageRecord, ImageError> {
        let mut reference = reference::parse(reference)?;
        if let Some(mirror) = options.mirror_of(reference.registry()) {
            reference.set_mirror_registry(mirror.host.clone());
        }
        let session = Session {
            client: client(options)?,
            registry: reference.resolve_registry().to_owned(),
            auth: credentials.to_oci(),
            reference,
        };
        let mut txn = Txn::new(self.shared.clone());
        let image = self.fetch_metadata(&session, &mut txn).await?;
        progress.emit(PullEvent::Resolved {
            reference: session.reference.whole(),
            manifest_digest: image.manifest_digest.clone(),
            layers: image.layers.len(),
            total_bytes: image.layers.iter().map(|l| l.size).sum(),
        });
        self.check_room(&image.layers, options)?;
        for layer in &image.layers {
            self.fetch_layer(&session, &mut txn, layer, progress)
                .await?;
        }
        let names = reference::names(&session.reference);
        let Metadata {
            manifest_digest,
            config_digest,
            config,
            layers,
        } = image;
        txn.commit(new_record(
            manifest_digest,
            config_digest,
            config,
            layers,
            names,
        ))
    }

    /// Refuses a pull before its first layer: a layer that declares more
    /// than the store takes from one layer, or missing layers that would
    /// not fit above `options.keep_free` (each counted twice: its blob,
    /// and its unpacked tree, which is at least as large).
    fn check_room(&self, layers: &[LayerRecord], options: &PullOptions) -> Result<(), ImageError> {
        let max_bytes = self.shared.layers.limits().max_bytes;
        let mut needed: u64 = 0;
        for layer in layers {
            if layer.size > max_bytes {
                return Err(ImageError::DeclaredTooLarge {
                    layer: layer.digest.to_string(),
                    size: layer.size,
                    max_bytes,
                });
            }
            let stored = self.shared.blobs.contains(&layer.digest)
                && self.shared.layers.contains(&layer.diff_id);
            if !stored {
                needed = needed.saturating_add(layer.size.saturating_mul(2));
            }
        }
        let root = self.root();
        let stat = rustix::fs::statvfs(root)
            .map_err(|e| ImageError::io_at("measure the free space of", root)(e.into()))?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        if needed.saturating_add(options.keep_free) > available {
            return Err(ImageError::NoSpace {
                needed,
                keep_free: options.keep_free,
                available,
            });
        }
        Ok(())
    }

    /// Stores the manifest and config; returns what they say.
    async fn fetch_metadata(
        &self,
        session: &Session,
        txn: &mut Txn,
    ) -> Result<Metadata, ImageError> {
        let (manifest_digest, manifest_bytes) = session.resolve().await?;
        txn.put_bytes(&manifest_digest, &manifest_bytes)?;
        let manifest = parse_manifest(&manifest_bytes, &manifest_digest)?;
        let (config_digest, config_size) = config_of(&manifest, &manifest_digest)?;
        if config_size > MAX_JSON_BLOB {
            return Err(ImageError::invalid(
                format!("config {config_digest}"),
                "too large",
            ));
        }
        self.download(session, txn, &config_digest, config_size, None)
            .await?;
        let config = parse_config(&self.shared.blobs.read(&config_digest)?, &config_digest)?;
        let layers = layer_records(&manifest, &config, &manifest_digest)?;
        Ok(Metadata {
            manifest_digest,
            config_digest,
            config,
            layers,
        })
    }

    /// Makes one layer present: blob downloaded and verified, unpacked.
    async fn fetch_layer(
        &self,
        session: &Session,
        txn: &mut Txn,
        layer: &LayerRecord,
        progress: &ProgressSink,
    ) -> Result<(), ImageError> {
        txn.pin(Pin::Layer(layer.diff_id.clone()));
        txn.pin(Pin::Blob(layer.digest.clone()));
        let shared = &self.shared;
        if shared.blobs.contains(&layer.digest) && shared.layers.contains(&layer.diff_id) {
            progress.layer(
                &layer.digest,
                layer.size,
                layer.size,
                LayerPhase::AlreadyPresent,
            );
            return Ok(());
        }
        self.download(session, txn, &layer.digest, layer.size, Some(progress))
            .await?;
        progress.layer(&layer.digest, layer.size, layer.size, LayerPhase::Unpacking);
        let (shared, l) = (shared.clone(), layer.clone());
        tokio::task::spawn_blocking(move || {
            shared.layers.unpack(
                &shared.blobs.path(&l.digest),
                &l.digest,
                &l.diff_id,
                &l.media_type,
            )
        })
        .await
        .map_err(|e| ImageError::Io {
            context: format!("unpack task for layer {}", layer.digest),
            source: std::io::Error::other(e),
        })??;
        progress.layer(&layer.digest, layer.size, layer.size, LayerPhase::Done);
        Ok(())
    }

    /// Downloads a blob into the store unless present.
    async fn download(
        &self,
        session: &Session,
        txn: &mut Txn,
        digest: &Digest,
        size: u64,
        progress: Option<&ProgressSink>,
    ) -> Result<(), ImageError> {
        txn.pin(Pin::Blob(digest.clone()));
        let blobs = &self.shared.blobs;
        if blobs.contains(digest) {
            return Ok(());
        }
        let pending = blobs.pending()?;
        let file = tokio::fs::File::from_std(pending.file);
        match session.stream_blob(digest, size, file, progress).await {
            Ok(actual) => blobs.commit(&pending.path, digest, &actual),
            Err(e) => {
                let _ = std::fs::remove_file(&pending.path);
                Err(e)
            }
        }
    }
}

impl Session {
    fn err(&self, e: oci_client::errors::OciDistributionError) -> ImageError {
        map_error(&self.registry, e)
    }

    /// The image manifest for the reference (through an index if need be),
    /// with its digest.
    async fn resolve(&self) -> Result<(Digest, Vec<u8>), ImageError> {
        let (digest, bytes) = self.fetch_manifest(&self.reference).await?;
        let what = format!("manifest {digest}");
        if manifest_kind(&bytes, &what)? == ManifestKind::Manifest {
            return Ok((digest, bytes));
        }
        let index =
            ImageIndex::from_reader(&bytes[..]).map_err(|e| ImageError::invalid(&what, e))?;
        let chosen = select(&index).ok_or_else(|| ImageError::NoMatchingPlatform {
            reference: self.reference.whole(),
            platform: PLATFORM.into(),
        })?;
        let mut pinned = Reference::with_digest(
            self.reference.registry().to_owned(),
            self.reference.repository().to_owned(),
            chosen.digest().to_string(),
        );
        if self.reference.namespace().is_some() {
            // Through the same mirror as the reference.
            pinned.set_mirror_registry(self.registry.clone());
        }
        let (digest, bytes) = self.fetch_manifest(&pinned).await?;
        let what = format!("manifest {digest}");
        match manifest_kind(&bytes, &what)? {
            ManifestKind::Manifest => Ok((digest, bytes)),
            ManifestKind::Index => Err(ImageError::invalid(what, "an index inside an index")),
        }
    }

    /// One manifest's bytes, checked against the reference's digest when
    /// it has one.
    async fn fetch_manifest(&self, reference: &Reference) -> Result<(Digest, Vec<u8>), ImageError> {
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| self.err(e))?;
        if bytes.len() as u64 > MAX_JSON_BLOB {
            return Err(ImageError::invalid(
                format!("manifest of {reference}"),
                "too large",
            ));
        }
        let digest = Digest::of_bytes(&bytes);
        match reference.digest() {
            Some(pinned) if pinned != digest.as_str() => Err(ImageError::DigestMismatch {
                what: format!("manifest of {reference}"),
                expected: pinned.to_owned(),
                actual: digest.to_string(),
            }),
            _ => Ok((digest, bytes.to_vec())),
        }
    }

    /// Streams a blob into `file`, refusing more or fewer bytes than
    /// `size`; returns the digest of what was received.
    async fn stream_blob(
        &self,
        digest: &Digest,
        size: u64,
        mut file: tokio::fs::File,
        progress: Option<&ProgressSink>,
    ) -> Result<Digest, ImageError> {
        let mut stream = self
            .client
            .pull_blob_stream(&self.reference, digest.as_str())
            .await
            .map_err(|e| self.err(e))?;
        let none = ProgressSink::none();
        let mut meter = Meter::new(progress.unwrap_or(&none), digest, size);
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let io = |e| ImageError::Io {
            context: format!("write blob {digest}"),
            source: e,
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| map_io_error(&self.registry, e))?;
            done += chunk.len() as u64;
            if done > size {
                return Err(size_mismatch(digest, size, done));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
            meter.advance(done);
        }
        if done != size {
            return Err(size_mismatch(digest, size, done));
        }
        file.sync_all().await.map_err(io)?;
        Ok(Digest::from_hasher(hasher))
    }
}

fn size_mismatch(digest: &Digest, expected: u64, actual: u64) -> ImageError {
    ImageError::SizeMismatch {
        digest: digest.clone(),
        expected,
        actual,
    }
}
