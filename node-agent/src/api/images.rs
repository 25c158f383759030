//! `stratum.v1.ImageService`: the agent's images over gRPC.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::auth::Caller;
use crate::agent::Agent;
use stratum_api::proto;
use stratum_api::proto::image_service_server::ImageService;

pub struct ImageApi(pub Arc<Agent>);

type PullStream = Pin<Box<dyn Stream<Item = Result<proto::PullImageProgress, Status>> + Send>>;

#[tonic::async_trait]
impl ImageService for ImageApi {
    type PullStream = PullStream;

    async fn pull(
        &self,
        request: Request<proto::PullImageRequest>,
    ) -> Result<Response<PullStream>, Status> {
        Caller::of(&request)?.check_not_viewer("pull images")?;
        let r = request.into_inner();
        let updates = self.0.images().pull_image(r.reference, r.auth);
        let stream = ReceiverStream::new(updates).map(|u| u.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn import(
        &self,
        request: Request<proto::ImportImageRequest>,
    ) -> Result<Response<proto::ImportImageResponse>, Status> {
        // An import reads a host path.
        Caller::of(&request)?.check_admin("import images")?;
        let r = request.into_inner();
        let images = self.0.images().import_image(&r.path, r.reference).await?;
        Ok(Response::new(proto::ImportImageResponse { images }))
    }

    async fn list(
        &self,
        _: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        Ok(Response::new(proto::ListImagesResponse {
            images: self.0.images().list_images(),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetImageRequest>,
    ) -> Result<Response<proto::Image>, Status> {
        Ok(Response::new(
            self.0.images().get_image(&request.into_inner().name)?,
        ))
    }

    async fn remove(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        // The image cache is shared by every namespace's pods.
        Caller::of(&request)?.check_admin("remove images")?;
        let image = self
            .0
            .images()
            .remove_image(request.into_inner().name)
            .await?;
        Ok(Response::new(proto::RemoveImageResponse {
            image: Some(image),
        }))
    }
}
