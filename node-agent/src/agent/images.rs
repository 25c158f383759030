//! Images: the node's image store ([`ImageStore`]) behind the agent.
//!
//! Pulls report the store's progress events as they come; a caller that
//! goes away (drops the receiver) cancels its pull, and the store rolls
//! back what it wrote. Registry credentials come with each pull and go
//! straight to the store: they are never logged, kept or returned.

use stratum_api::proto;
use stratum_api::proto::pull_image_progress::Event;
use stratum_api::proto::pull_image_request::Auth;
use stratum_image::{
    ImageRecord, ImageStore, ImportOptions, LayerPhase, ProgressSink, PullEvent, PullOptions,
    RegistryCredentials,
};
use tokio::sync::mpsc;

use super::artifacts::{ArtifactDirs, Kind};
use std::collections::HashSet;
use std::sync::Arc;

use super::disk::DiskFloor;
use super::errors::{AgentError, Result};
use super::image_owners::{ImageOwners, Owner};

/// Progress events buffered for a slow client.
const PULL_BUFFER: usize = 64;

/// What a pull reports: progress, then the image (or the failure).
pub type PullUpdates = mpsc::Receiver<Result<proto::PullImageProgress>>;

/// The image manager: the node's image store (which keeps its own index
/// and leases behind its own lock) and how pulls reach registries.
pub struct ImageManager {
    store: ImageStore,
    /// How registries are reached: the plain-HTTP ones, the mirrors.
    registries: PullOptions,
    /// Where imports may come from.
    artifacts: ArtifactDirs,
    /// The free space pulls and imports leave.
    disk: DiskFloor,
    /// Whom each image was pulled for.
    owners: Arc<ImageOwners>,
}

impl ImageManager {
    pub fn new(
        store: ImageStore,
        registries: PullOptions,
        artifacts: ArtifactDirs,
        disk: DiskFloor,
        owners: ImageOwners,
    ) -> Self {
        ImageManager {
            store,
            registries,
            artifacts,
            disk,
            owners: Arc::new(owners),
        }
    }

    /// The node's image store.
    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// Whom each image was pulled for.
    pub fn owners(&self) -> &ImageOwners {
        &self.owners
    }

    /// How pulls reach registries: HTTPS except for the configured
    /// insecure registries and plain-HTTP mirrors; through a registry's
    /// mirror when it has one.
    pub fn pull_options(&self) -> PullOptions {
        PullOptions {
            keep_free: self.disk.floor_bytes(),
            ..self.registries.clone()
        }
    }

    /// PullImage: see images.proto. The image is recorded as `owner`'s
    /// before the pull's last answer.
    pub fn pull_image(&self, reference: String, auth: Option<Auth>, owner: Owner) -> PullUpdates {
        if let Err(e) = self.disk.check("image pull") {
            let (tx, rx) = mpsc::channel(1);
            // A fresh channel with room for one: the send cannot fail.
            let _ = tx.try_send(Err(e));
            return rx;
        }
        let creds = credentials(auth);
        let store = self.store().clone();
        let options = self.pull_options();
        let owners = Arc::clone(&self.owners);
        // An image stored before with no owners is a host image, and stays
        // one when a user pulls it again.
        let stored_before: HashSet<String> =
            store.list().iter().map(|r| r.id.to_string()).collect();
        let (tx, rx) = mpsc::channel::<Result<proto::PullImageProgress>>(PULL_BUFFER);
        // The sink is called synchronously by the pull: an unbounded
        // channel takes the events, a forwarder feeds the bounded stream.
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let sink = ProgressSink::channel(events_tx);
        tokio::spawn(async move {
            let pull = async {
                let result = store.pull(&reference, &creds, &options, &sink).await;
                drop(sink);
                result
            };
            let forward = {
                let tx = tx.clone();
                async move {
                    while let Some(event) = events_rx.recv().await {
                        if tx.send(Ok(progress(event))).await.is_err() {
                            return;
                        }
                    }
                }
            };
            let cancelled = tx.closed();
            tokio::pin!(pull, cancelled);
            // Run the pull and the forwarder together; the forwarder ends
            // when the pull has dropped the sink and every event is sent.
            let (result, ()) = tokio::select! {
                both = async { tokio::join!(&mut pull, forward) } => both,
                () = &mut cancelled => {
                    tracing::info!(reference, "image pull cancelled by the client");
                    return;
                }
            };
            let message = match result {
                Ok(record) => {
                    tracing::info!(reference, image = %record.id, "image pulled");
                    let id = record.id.to_string();
                    let was_stored = stored_before.contains(&id);
                    let claim_store = store.clone();
                    let claimed = tokio::task::spawn_blocking(move || {
                        let claimed = owners.claim(&id, owner, was_stored);
                        // A new image nobody's claim was recorded for would
                        // read as a host image: it goes again.
                        if claimed.is_err() && !was_stored {
                            let _ = claim_store.remove(&id);
                        }
                        claimed
                    })
                    .await
                    .map_err(|e| AgentError::Internal(format!("image owner task: {e}")))
                    .and_then(|claimed| claimed);
                    claimed.map(|()| proto::PullImageProgress {
                        event: Some(Event::Image(Box::new(image(&store, &record)))),
                    })
                }
                Err(e) => {
                    tracing::warn!(reference, error = %e, "image pull failed");
                    Err(AgentError::from(e))
                }
            };
            let _ = tx.send(message).await;
        });
        rx
    }

    /// ImportImage: see images.proto.
    pub async fn import_image(&self, path: &str, reference: String) -> Result<Vec<proto::Image>> {
        self.disk.check("image import")?;
        let artifacts = self.artifacts.clone();
        let what_path = path.to_string();
        let file = tokio::task::spawn_blocking(move || {
            artifacts.check("import path", &what_path, Kind::FileOrDirectory)
        })
        .await
        .map_err(|e| AgentError::Internal(format!("import path check: {e}")))??;
        let options = ImportOptions {
            reference: Some(reference).filter(|s| !s.is_empty()),
        };
        let store = self.store();
        let records = store.import(&file, &options).await?;
        tracing::info!(path, images = records.len(), "images imported");
        Ok(records.iter().map(|rec| image(store, rec)).collect())
    }

    /// ListImages: see images.proto.
    pub fn list_images(&self) -> Vec<proto::Image> {
        let store = self.store();
        let mut records = store.list();
        records.sort_by(list_order);
        records.iter().map(|r| image(store, r)).collect()
    }

    /// GetImage: see images.proto.
    pub fn get_image(&self, name: &str) -> Result<proto::Image> {
        let store = self.store();
        Ok(image(store, &store.get(name)?))
    }

    /// RemoveImage: see images.proto. The index is written (fsync) on
    /// removal: off the async threads. Unreferenced blobs and layers are
    /// collected afterwards.
    pub async fn remove_image(&self, name: String) -> Result<proto::Image> {
        let store = self.store().clone();
        let record = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.remove(&name))
                .await
                .map_err(|e| AgentError::Internal(format!("image remove task: {e}")))??
        };
        tracing::info!(image = %record.display_name(), "image removed");
        let owners = Arc::clone(&self.owners);
        let id = record.id.to_string();
        tokio::task::spawn_blocking(move || owners.forget(&id))
            .await
            .map_err(|e| AgentError::Internal(format!("image owner task: {e}")))??;
        match store.gc().await {
            Ok(report) => tracing::info!(
                blobs = report.blobs_removed,
                bytes = report.blob_bytes_freed,
                layers = report.layers_removed,
                "image gc"
            ),
            // The image is gone; what GC could not free now it frees later.
            Err(e) => tracing::warn!(error = %e, "image gc after remove failed"),
        }
        let mut removed = image(&store, &record);
        removed.users = 0;
        Ok(removed)
    }
}

/// The request's credentials (moved, not copied, so no stray copy lives on).
fn credentials(auth: Option<Auth>) -> RegistryCredentials {
    match auth {
        None => RegistryCredentials::Anonymous,
        Some(Auth::Basic(b)) => RegistryCredentials::Basic {
            username: b.username,
            password: b.password,
        },
        Some(Auth::BearerToken(token)) => RegistryCredentials::Bearer { token },
    }
}

fn phase(p: LayerPhase) -> proto::LayerPhase {
    match p {
        LayerPhase::Downloading => proto::LayerPhase::Downloading,
        LayerPhase::Unpacking => proto::LayerPhase::Unpacking,
        LayerPhase::Done => proto::LayerPhase::Done,
        LayerPhase::AlreadyPresent => proto::LayerPhase::AlreadyPresent,
    }
}

/// A progress event as the API's message.
fn progress(event: PullEvent) -> proto::PullImageProgress {
    let event = match event {
        PullEvent::Resolved {
            reference,
            manifest_digest,
            layers,
            total_bytes,
        } => Event::Resolved(proto::PullResolved {
            reference,
            manifest_digest: manifest_digest.to_string(),
            layers: u32::try_from(layers).unwrap_or(u32::MAX),
            total_bytes,
        }),
        PullEvent::Layer(l) => Event::Layer(proto::LayerProgress {
            digest: l.digest.to_string(),
            total_bytes: l.total_bytes,
            done_bytes: l.done_bytes,
            phase: phase(l.phase) as i32,
        }),
    };
    proto::PullImageProgress { event: Some(event) }
}

/// A stored image as the API's message, with its current lease count.
fn image(store: &ImageStore, r: &ImageRecord) -> proto::Image {
    let users = store.lease_count(r.manifest_digest.as_str()).unwrap_or(0);
    let config = r.config.config().as_ref().map(|c| proto::ImageConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
        exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
        labels: c
            .labels()
            .as_ref()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    });
    proto::Image {
        id: r.id.to_string(),
        manifest_digest: r.manifest_digest.to_string(),
        references: r.references.clone(),
        size_bytes: r.size_bytes,
        layers: r
            .layers
            .iter()
            .map(|l| proto::ImageLayer {
                digest: l.digest.to_string(),
                media_type: l.media_type.clone(),
                size_bytes: l.size,
                diff_id: l.diff_id.to_string(),
            })
            .collect(),
        config: Some(config.unwrap_or_default()),
        stored_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(r.stored_at_unix).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        users: u32::try_from(users).unwrap_or(u32::MAX),
    }
}

/// List order: by first reference, unnamed images last by id.
fn list_order(a: &ImageRecord, b: &ImageRecord) -> std::cmp::Ordering {
    match (a.references.first(), b.references.first()) {
        (Some(x), Some(y)) => x.cmp(y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.id.as_str().cmp(b.id.as_str()),
    }
}
