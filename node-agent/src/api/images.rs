//! `stratum.v1.ImageService`: the agent's images over gRPC.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::auth::Caller;
use crate::agent::errors::AgentError;
use crate::agent::image_owners::Owner;
use crate::agent::Agent;
use stratum_api::certs::Role;
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
        let caller = Caller::of(&request)?;
        caller.check_not_viewer("pull images")?;
        let r = request.into_inner();
        let owner = pull_owner(&caller, r.namespace)?;
        let updates = self.0.images().pull_image(r.reference, r.auth, owner);
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
        request: Request<proto::ListImagesRequest>,
    ) -> Result<Response<proto::ListImagesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut images = self.0.images().list_images();
        if !caller.sees_everything() {
            let owners = self.0.images().owners();
            images.retain(|i| owners.visible_to(&i.id, &caller.namespaces));
        }
        Ok(Response::new(proto::ListImagesResponse { images }))
    }

    async fn get(
        &self,
        request: Request<proto::GetImageRequest>,
    ) -> Result<Response<proto::Image>, Status> {
        let caller = Caller::of(&request)?;
        let image = self.0.images().get_image(&request.into_inner().name)?;
        check_visible(&self.0, &caller, &image)?;
        Ok(Response::new(image))
    }

    async fn remove(
        &self,
        request: Request<proto::RemoveImageRequest>,
    ) -> Result<Response<proto::RemoveImageResponse>, Status> {
        let caller = Caller::of(&request)?;
        let name = request.into_inner().name;
        let image = if caller.role == Role::Admin {
            self.0.images().remove_image(name).await?
        } else {
            release(&self.0, &caller, name).await?
        };
        Ok(Response::new(proto::RemoveImageResponse {
            image: Some(image),
        }))
    }
}

/// Whom a pull is for: the namespace it names, which a user must hold (a
/// user of one namespace may leave it out); for an admin naming none, the
/// host.
fn pull_owner(caller: &Caller, namespace: String) -> Result<Owner, Status> {
    if !namespace.is_empty() {
        caller.check_change(&namespace, "pull images")?;
        return Ok(Owner::Namespace(namespace));
    }
    if caller.role == Role::Admin {
        return Ok(Owner::Host);
    }
    let mut own = caller.namespaces.iter();
    match (own.next(), own.next()) {
        (Some(only), None) => Ok(Owner::Namespace(only.clone())),
        _ => Err(Status::invalid_argument(
            "name the namespace the image is for (you hold several)",
        )),
    }
}

/// PERMISSION_DENIED unless the caller sees `image`.
fn check_visible(agent: &Agent, caller: &Caller, image: &proto::Image) -> Result<(), Status> {
    if caller.sees_everything()
        || agent
            .images()
            .owners()
            .visible_to(&image.id, &caller.namespaces)
    {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{} may not read image {}: no namespace of theirs pulled it",
        caller.name, image.id
    )))
}

/// A user's removal: its namespaces' claims go; the image with the last
/// claim (refused while a pod uses it, with the claims kept).
pub async fn release(
    agent: &Arc<Agent>,
    caller: &Caller,
    name: String,
) -> Result<proto::Image, Status> {
    let image = agent.images().get_image(&name)?;
    let owners = agent.images().owners();
    if !owners.claimed_by(&image.id, &caller.namespaces) {
        return Err(Status::permission_denied(format!(
            "{} may not remove image {}: no namespace of theirs pulled it",
            caller.name, image.id
        )));
    }
    if owners.last_claims(&image.id, &caller.namespaces) {
        return Ok(agent.images().remove_image(name).await?);
    }
    let (agent, namespaces, id) = (
        Arc::clone(agent),
        caller.namespaces.clone(),
        image.id.clone(),
    );
    tokio::task::spawn_blocking(move || agent.images().owners().release(&id, &namespaces))
        .await
        .map_err(|e| AgentError::Internal(format!("image owner task: {e}")))??;
    Ok(image)
}
