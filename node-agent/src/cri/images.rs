//! `runtime.v1.ImageService` over the agent's image store: the same
//! pulls, owners and removals as `stratum.v1.ImageService`. A CRI pull is
//! for the namespace of the pool its sandbox would land in (the default
//! pool's when the kubelet sends no sandbox), so the pods of that
//! namespace may run it and its removal takes that namespace's claim.

use std::sync::Arc;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};

use super::{sandbox, CriConfig};
use crate::agent::image_owners::Owner;
use crate::agent::pools::pool_id_or_root;
use crate::agent::Agent;
use crate::api::auth::Caller;
use stratum_api::proto;
use stratum_api::proto::pull_image_progress::Event;
use stratum_api::proto::pull_image_request::Auth;

pub struct CriImages {
    agent: Arc<Agent>,
    config: Arc<CriConfig>,
}

impl CriImages {
    pub fn new(agent: Arc<Agent>, config: Arc<CriConfig>) -> Self {
        Self { agent, config }
    }

    /// The image `name` names, if stored and visible to the caller.
    fn find(&self, caller: &Caller, name: &str) -> Option<proto::Image> {
        let image = self.agent.images().get_image(name).ok()?;
        self.agent
            .images()
            .owners()
            .visible_to(&image.id, &caller.namespaces)
            .then_some(image)
    }

    /// The namespace a pull is for.
    fn pull_namespace(&self, request: &cri::PullImageRequest) -> Result<String, Status> {
        let handler = request
            .image
            .as_ref()
            .map_or("", |i| i.runtime_handler.as_str());
        let annotations = request
            .sandbox_config
            .as_ref()
            .map(|c| sandbox::to_btree(&c.annotations))
            .unwrap_or_default();
        let pool = self.config.pool_for(handler, &annotations)?;
        Ok(self.agent.pools().namespace_of(&pool_id_or_root(&pool))?)
    }
}

/// The CRI's image: repo tags and digests from the references, the user
/// from the config.
pub fn to_cri_image(image: &proto::Image) -> cri::Image {
    let (repo_digests, repo_tags) = image
        .references
        .iter()
        .cloned()
        .partition(|r| r.contains('@'));
    let user = image.config.as_ref().map(|c| c.user.as_str()).unwrap_or("");
    let user = user.split(':').next().unwrap_or("");
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    cri::Image {
        id: image.id.clone(),
        repo_tags,
        repo_digests,
        size: image.size_bytes,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The kubelet's registry credentials as the agent's pull takes them.
fn auth_of(auth: Option<cri::AuthConfig>) -> Result<Option<Auth>, Status> {
    let Some(auth) = auth else { return Ok(None) };
    if !auth.registry_token.is_empty() {
        return Ok(Some(Auth::BearerToken(auth.registry_token)));
    }
    if !auth.username.is_empty() {
        return Ok(Some(Auth::Basic(proto::BasicAuth {
            username: auth.username,
            password: auth.password,
        })));
    }
    if !auth.auth.is_empty() {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of user:password"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth is not base64 of user:password"))?;
        return Ok(Some(Auth::Basic(proto::BasicAuth {
            username: username.to_string(),
            password: password.to_string(),
        })));
    }
    if !auth.identity_token.is_empty() {
        return Err(Status::unimplemented(
            "identity (refresh) tokens are not supported; give a registry token",
        ));
    }
    Ok(None)
}

#[tonic::async_trait]
impl ImageService for CriImages {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let wanted = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        let images = match wanted {
            Some(name) => self.find(&caller, &name).into_iter().collect(),
            None => {
                let owners = self.agent.images().owners();
                self.agent
                    .images()
                    .list_images()
                    .into_iter()
                    .filter(|i| owners.visible_to(&i.id, &caller.namespaces))
                    .collect::<Vec<_>>()
            }
        };
        let images = images
            .iter()
            .filter(|i| !is_vm_image(i))
            .map(to_cri_image)
            .collect();
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let name = r.image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("no image given"));
        }
        // An image that is not there is no error: the kubelet asks before
        // it pulls.
        let image = self.find(&caller, &name).filter(|i| !is_vm_image(i));
        let mut info = std::collections::HashMap::new();
        if let (true, Some(image)) = (r.verbose, &image) {
            let config = image.config.clone().unwrap_or_default();
            let json = serde_json::json!({
                "manifestDigest": image.manifest_digest,
                "entrypoint": config.entrypoint,
                "cmd": config.cmd,
                "env": config.env,
                "workingDir": config.working_dir,
                "user": config.user,
                "layers": image.layers.len(),
            });
            info.insert("info".to_string(), json.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: image.as_ref().map(to_cri_image),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let reference = r
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Status::invalid_argument("no image given"))?;
        let namespace = self.pull_namespace(&r)?;
        caller.check_change(&namespace, "pull images")?;
        let auth = auth_of(r.auth)?;
        let mut updates =
            self.agent
                .images()
                .pull_image(reference.clone(), auth, Owner::Namespace(namespace));
        while let Some(update) = updates.recv().await {
            if let Some(Event::Image(image)) = update?.event {
                return Ok(Response::new(cri::PullImageResponse {
                    image_ref: image.id,
                }));
            }
        }
        Err(Status::internal(format!(
            "the pull of {reference} ended without an image"
        )))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let caller = Caller::of(&request)?;
        let name = request
            .into_inner()
            .image
            .map(|i| i.image)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Status::invalid_argument("no image given"))?;
        // Removing what is not there is done.
        if self.find(&caller, &name).is_none() {
            return Ok(Response::new(cri::RemoveImageResponse {}));
        }
        crate::api::images::release(&self.agent, &caller, name).await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let root = self.agent.images().store().root().to_path_buf();
        let mountpoint = root.to_string_lossy().into_owned();
        let (bytes, inodes) = tokio::task::spawn_blocking(move || disk_usage(&root))
            .await
            .map_err(|e| Status::internal(format!("image fs task: {e}")))?;
        let usage = cri::FilesystemUsage {
            timestamp: super::unix_nanos(Some(&crate::agent::now())),
            fs_id: Some(cri::FilesystemIdentifier { mountpoint }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: Vec::new(),
        }))
    }
}

/// A VM image is not a container image: the CRI does not show it.
fn is_vm_image(image: &proto::Image) -> bool {
    image
        .layers
        .iter()
        .any(|l| stratum_image::media::VmPayload::of(&l.media_type).is_some())
}

/// Bytes allocated and inodes used below `root` (not following links,
/// staying on its file system).
fn disk_usage(root: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return (0, 0);
    };
    let device = top.dev();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.dev() != device {
                continue;
            }
            inodes += 1;
            bytes = bytes.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    (bytes, inodes)
}
