//! `stratum.v1.ImageService`: the agent's [`ImageStore`] over gRPC.
//!
//! Pulls stream the store's progress events as they come; a client that
//! goes away cancels its pull (the store rolls back what it wrote).
//! Registry credentials come with each pull request and go straight to the
//! store: they are never logged, kept or returned.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use crate::agent::Agent;
use stratum_api::proto;
use stratum_api::proto::image_service_server::ImageService;
use stratum_api::proto::pull_image_progress::Event;
use stratum_api::proto::pull_image_request::Auth;
use stratum_image::{
    ImageError, ImageRecord, ImageStore, ImportOptions, LayerPhase, ProgressSink, PullEvent,
    RegistryCredentials,
};

pub struct ImageApi(pub Arc<Agent>);

type PullStream = Pin<Box<dyn Stream<Item = Result<proto::PullImageProgress, Status>> + Send>>;

/// The gRPC status for an image store failure.
pub fn status(e: &ImageError) -> Status {
    let code = match e {
        ImageError::UnknownImage(_)
        | ImageError::RegistryNotFound { .. }
        | ImageError::NoMatchingPlatform { .. } => Code::NotFound,
        ImageError::InvalidReference { .. }
        | ImageError::InvalidDigest(_)
        | ImageError::UnsupportedMediaType { .. }
        | ImageError::InvalidImage { .. }
        | ImageError::RefusedEntry { .. }
        | ImageError::BadArchive { .. }
        | ImageError::Import { .. } => Code::InvalidArgument,
        ImageError::DigestMismatch { .. } | ImageError::SizeMismatch { .. } => Code::DataLoss,
        ImageError::RegistryAuth { .. } => Code::PermissionDenied,
        ImageError::RegistryTls { .. } | ImageError::Registry { .. } => Code::Unavailable,
        ImageError::InUse { .. } => Code::FailedPrecondition,
        ImageError::CorruptIndex { .. } | ImageError::Io { .. } => Code::Internal,
    };
    Status::new(code, e.to_string())
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
pub fn progress(event: PullEvent) -> proto::PullImageProgress {
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
pub fn image(store: &ImageStore, r: &ImageRecord) -> proto::Image {
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

#[tonic::async_trait]
impl ImageService for ImageApi {
    type PullStream = PullStream;

    async fn pull(
        &self,
        request: Request<proto::PullImageRequest>,
    ) -> Result<Response<PullStream>, Status> {
        let r = request.into_inner();
        let reference = r.reference;
        let creds = credentials(r.auth);
        let store = self.0.images().clone();
        let options = self.0.pull_options();
        let (tx, rx) = mpsc::channel::<Result<proto::PullImageProgress, Status>>(64);
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
                    Ok(proto::PullImageProgress {
                        event: Some(Event::Image(Box::new(image(&store, &record)))),
                    })
                }
                Err(e) => {
                    tracing::warn!(reference, error = %e, "image pull failed");
                    Err(status(&e))
                }
            };
            let _ = tx.send(message).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn import(
        &self,
        request: Request<proto::ImportImageRequest>,
    ) -> Result<Response<proto::ImportImageResponse>, Status> {
        let r = request.into_inner();
        let path = Path::new(&r.path);
        if !path.is_absolute() {
            return Err(Status::invalid_argument(format!(
                "import path {:?} is not absolute",
                r.path
            )));
        }
        if std::fs::symlink_metadata(path).is_err() {
            return Err(Status::not_found(format!("{}: no such file", r.path)));
        }
        let options = ImportOptions {
            reference: Some(r.reference).filter(|s| !s.is_empty()),
        };
        let store = self.0.images();
        let records = store.import(path, &options).await.map_err(|e| status(&e))?;
        tracing::info!(path = r.path, images = records.len(), "images imported");
        Ok(Response::new(proto::ImportImageResponse {
            images: records.iter().map(|rec| image(store, rec)).collect(),
        }))
    }

    async fn list(
        &self,
        _: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        let store = self.0.images();
        let mut records = store.list();
        records.sort_by(list_order);
        Ok(Response::new(proto::ListImagesResponse {
            images: records.iter().map(|r| image(store, r)).collect(),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetImageRequest>,
    ) -> Result<Response<proto::Image>, Status> {
        let store = self.0.images();
        let record = store
            .get(&request.into_inner().name)
            .map_err(|e| status(&e))?;
        Ok(Response::new(image(store, &record)))
    }

    async fn remove(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let name = request.into_inner().name;
        let store = self.0.images().clone();
        // The index is written (fsync) on removal: off the async threads.
        let record = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.remove(&name))
                .await
                .map_err(|e| Status::internal(format!("image remove task: {e}")))?
                .map_err(|e| status(&e))?
        };
        tracing::info!(image = %record.display_name(), "image removed");
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
        Ok(Response::new(proto::RemoveImageResponse {
            image: Some(removed),
        }))
    }
}
