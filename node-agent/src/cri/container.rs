//! A CRI container as a container of its pod: the kubelet's
//! `ContainerConfig` turned into the agent's `ContainerSpec` (checked
//! first), and a stored container turned back into the CRI's `Container`
//! and `ContainerStatus`.
//!
//! Names: the kubelet makes a new container (attempt + 1) for each
//! restart and may keep the old one until it collects it, so the agent's
//! container name is `<name>-<attempt>`, unique in the pod as long as the
//! two are (a second container with the same name and attempt is
//! refused).
//!
//! Security contexts and mounts become the agent's own (`SecurityContext`,
//! `Mount`), so the pod security level rules both front doors the same
//! way (see `agent::pods::security`). The deprecated string seccomp path
//! (`unconfined`, `runtime/default`, `docker/default`, `localhost/…`),
//! which kubelets and critest before 1.27 send, reads as the field that
//! replaced it; an empty one is Kubernetes' unconfined, which the
//! baseline level then confines to the default profile anyway.
//!
//! `stdin`, `stdin_once` and `tty` are the agent's own (attach serves
//! them). What the agent does not do yet is refused rather than ignored:
//! devices, ambient capabilities, the Strict supplemental groups policy,
//! another container's PID namespace (`TARGET`), Localhost AppArmor
//! profiles, and mounts with id mappings,
//! recursive read-only or an image as their source. SELinux relabelling
//! is a no-op (no SELinux on these hosts).

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1 as cri;
use prost::Message;
use tonic::Status;

use super::sandbox::{
    fnv1a, hashed_label, host_namespaces, quota_millicores, refuse_target_pid, shares_millicores,
    shares_pod_pid, to_hash_map,
};
use super::unix_nanos;
use crate::records::{ContainerRuntime, CriContainer};
use stratum_api::proto;
use stratum_api::proto::ContainerState;

/// Longest agent container name (a DNS label).
const NAME_MAX: usize = 63;

/// The agent's container spec for a CRI container with `id`, and the
/// record part that keeps what the kubelet sent; `sandbox` is its
/// sandbox's config (its log directory, its namespaces).
pub fn container_spec(
    config: &cri::ContainerConfig,
    id: &str,
    sandbox: &cri::PodSandboxConfig,
) -> Result<(proto::ContainerSpec, CriContainer), Status> {
    let log_directory = sandbox.log_directory.as_str();
    let sandbox_namespaces = sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let meta = config
        .metadata
        .as_ref()
        .filter(|m| !m.name.is_empty())
        .ok_or_else(|| Status::invalid_argument("container config has no metadata name"))?;
    let image = config
        .image
        .as_ref()
        .map(|i| i.image.as_str())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("container config names no image"))?;
    refuse_unsupported(config, sandbox_namespaces)?;
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    let limits = resources.map(resource_limits);
    let spec = proto::ContainerSpec {
        name: container_name(&meta.name, meta.attempt),
        image: image.to_string(),
        command: config.command.clone(),
        args: config.args.clone(),
        env: config
            .envs
            .iter()
            .map(|kv| proto::EnvVar {
                name: kv.key.clone(),
                value: kv.value.clone(),
            })
            .collect(),
        working_dir: config.working_dir.clone(),
        limits,
        security: security_context(config)?,
        mounts: config.mounts.iter().map(mount).collect::<Result<_, _>>()?,
        requests: resources.map(resource_requests),
        oom_score_adj: resources
            .map(|r| {
                i32::try_from(r.oom_score_adj).map_err(|_| {
                    Status::invalid_argument(format!(
                        "oom_score_adj {} is out of range",
                        r.oom_score_adj
                    ))
                })
            })
            .transpose()?,
        stdin: config.stdin,
        stdin_once: config.stdin && config.stdin_once,
        tty: config.tty,
    };
    let log_path = log_path(log_directory, &config.log_path)?;
    let record = CriContainer {
        id: id.to_string(),
        config: config.encode_to_vec(),
        log_path,
        image_ref: image.to_string(),
    };
    Ok((spec, record))
}

/// The request the CRI's CPU shares stand for (the kubelet makes shares
/// from the CPU request): the container's CPU weight.
pub fn resource_requests(r: &cri::LinuxContainerResources) -> proto::ResourceAmounts {
    proto::ResourceAmounts {
        cpu_millicores: shares_millicores(r.cpu_shares),
        memory_bytes: 0,
    }
}

/// The limits the agent enforces from the CRI's resources: the CPU cap
/// from the CFS quota and period, the memory limit.
pub fn resource_limits(r: &cri::LinuxContainerResources) -> proto::ResourceAmounts {
    proto::ResourceAmounts {
        cpu_millicores: quota_millicores(r.cpu_quota, r.cpu_period),
        memory_bytes: u64::try_from(r.memory_limit_in_bytes).unwrap_or(0),
    }
}

/// The log file: the sandbox's log directory joined with the container's
/// relative log path; none when either is missing.
fn log_path(directory: &str, relative: &str) -> Result<String, Status> {
    if directory.is_empty() || relative.is_empty() {
        return Ok(String::new());
    }
    if !directory.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "sandbox log directory {directory:?} is not absolute"
        )));
    }
    let relative_path = Path::new(relative);
    let escapes = relative_path.components().any(|c| {
        !matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if escapes || relative.contains('\0') || directory.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "container log path {relative:?} must stay below the sandbox's log directory"
        )));
    }
    Ok(Path::new(directory)
        .join(relative_path)
        .to_string_lossy()
        .into_owned())
}

/// The agent's container name: `<name>-<attempt>`, cut and hashed to fit
/// a DNS label when it is longer.
pub fn container_name(name: &str, attempt: u32) -> String {
    let full = format!("{name}-{attempt}");
    if full.len() <= NAME_MAX && stratum_pool::validate_name(&full).is_ok() {
        return full;
    }
    let hash = fnv1a(&[name.as_bytes(), &attempt.to_le_bytes()]);
    hashed_label(name, NAME_MAX - 17, hash, "c")
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported for CRI containers yet"))
}

/// A kubelet id (an int64) as the agent's.
fn id(what: &str, value: i64) -> Result<u32, Status> {
    u32::try_from(value)
        .map_err(|_| Status::invalid_argument(format!("{what} {value} is not a valid id")))
}

/// The security context as the agent's; none when the kubelet sent none.
fn security_context(
    config: &cri::ContainerConfig,
) -> Result<Option<proto::SecurityContext>, Status> {
    let Some(s) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
    else {
        return Ok(None);
    };
    let capabilities = s.capabilities.clone().unwrap_or_default();
    let seccomp = seccomp_mode(s)?;
    Ok(Some(proto::SecurityContext {
        run_as_user: s
            .run_as_user
            .as_ref()
            .map(|u| id("run_as_user", u.value))
            .transpose()?,
        run_as_username: s.run_as_username.clone(),
        run_as_group: s
            .run_as_group
            .as_ref()
            .map(|g| id("run_as_group", g.value))
            .transpose()?,
        supplemental_groups: s
            .supplemental_groups
            .iter()
            .map(|g| id("supplemental group", *g))
            .collect::<Result<_, _>>()?,
        readonly_rootfs: s.readonly_rootfs,
        add_capabilities: capabilities.add_capabilities,
        drop_capabilities: capabilities.drop_capabilities,
        allow_privilege_escalation: !s.no_new_privs,
        seccomp: seccomp.0 as i32,
        seccomp_localhost_path: seccomp.1,
        masked_paths: s.masked_paths.clone(),
        readonly_paths: s.readonly_paths.clone(),
        privileged: s.privileged,
    }))
}

/// The seccomp profile asked for, and a Localhost profile's path: the
/// field, else the deprecated path string.
#[allow(deprecated)]
fn seccomp_mode(
    s: &cri::LinuxContainerSecurityContext,
) -> Result<(proto::SeccompMode, String), Status> {
    use cri::security_profile::ProfileType;
    if let Some(profile) = &s.seccomp {
        return match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => {
                Ok((proto::SeccompMode::SeccompRuntimeDefault, String::new()))
            }
            Ok(ProfileType::Unconfined) => {
                Ok((proto::SeccompMode::SeccompUnconfined, String::new()))
            }
            Ok(ProfileType::Localhost) => Ok((
                proto::SeccompMode::SeccompLocalhost,
                profile.localhost_ref.clone(),
            )),
            Err(_) => Err(Status::invalid_argument(format!(
                "unknown seccomp profile type {}",
                profile.profile_type
            ))),
        };
    }
    match s.seccomp_profile_path.as_str() {
        "" | "unconfined" => Ok((proto::SeccompMode::SeccompUnconfined, String::new())),
        "runtime/default" | "docker/default" => {
            Ok((proto::SeccompMode::SeccompRuntimeDefault, String::new()))
        }
        path => match path.strip_prefix("localhost/") {
            Some(file) => Ok((proto::SeccompMode::SeccompLocalhost, file.to_string())),
            None => Err(Status::invalid_argument(format!(
                "seccomp profile {path:?} is none of unconfined, runtime/default, \
                 docker/default or localhost/<path>"
            ))),
        },
    }
}

/// A kubelet mount as the agent's.
fn mount(m: &cri::Mount) -> Result<proto::Mount, Status> {
    if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
        return Err(unimplemented("a mount with id mappings"));
    }
    if m.recursive_read_only {
        return Err(unimplemented("a recursive read-only mount"));
    }
    if m.image.is_some() {
        return Err(unimplemented("an image volume"));
    }
    let propagation = match cri::MountPropagation::try_from(m.propagation) {
        Ok(cri::MountPropagation::PropagationPrivate) => proto::MountPropagation::Private,
        Ok(cri::MountPropagation::PropagationHostToContainer) => {
            proto::MountPropagation::HostToContainer
        }
        Ok(cri::MountPropagation::PropagationBidirectional) => {
            proto::MountPropagation::Bidirectional
        }
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown mount propagation {}",
                m.propagation
            )))
        }
    };
    Ok(proto::Mount {
        host_path: m.host_path.clone(),
        container_path: m.container_path.clone(),
        readonly: m.readonly,
        propagation: propagation as i32,
    })
}

/// What a container may ask for that the agent does not do yet.
fn refuse_unsupported(
    config: &cri::ContainerConfig,
    sandbox_namespaces: Option<&cri::NamespaceOption>,
) -> Result<(), Status> {
    if !config.devices.is_empty() || !config.cdi_devices.is_empty() {
        return Err(unimplemented("a device"));
    }
    let Some(security) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
    else {
        return Ok(());
    };
    if security
        .capabilities
        .as_ref()
        .is_some_and(|c| !c.add_ambient_capabilities.is_empty())
    {
        return Err(unimplemented("an ambient capability"));
    }
    if security.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32 {
        return Err(unimplemented("the Strict supplemental groups policy"));
    }
    refuse_target_pid(security.namespace_options.as_ref(), "container")?;
    // A container is in its pod's PID namespace exactly when the pod has
    // one (the kubelet sends the pod's mode for both).
    let own_pid = security
        .namespace_options
        .as_ref()
        .is_some_and(|ns| ns.pid == cri::NamespaceMode::Container as i32);
    let pod_pid = shares_pod_pid(security.namespace_options.as_ref());
    match (pod_pid, own_pid, shares_pod_pid(sandbox_namespaces)) {
        (true, _, false) => {
            return Err(Status::invalid_argument(
                "the container asks for its pod's PID namespace (POD), which its sandbox does not share",
            ))
        }
        (_, true, true) => {
            return Err(Status::invalid_argument(
                "the container asks for a PID namespace of its own (CONTAINER), but its sandbox shares one",
            ))
        }
        _ => {}
    }
    let asked = host_namespaces(security.namespace_options.as_ref());
    let has = host_namespaces(sandbox_namespaces);
    for (what, asked, has) in [
        ("network", asked.0, has.0),
        ("IPC", asked.1, has.1),
        ("PID", asked.2, has.2),
    ] {
        if asked && !has {
            return Err(Status::invalid_argument(format!(
                "the container asks for the host's {what} namespace, which its sandbox does not have"
            )));
        }
    }
    let localhost = cri::security_profile::ProfileType::Localhost as i32;
    if security
        .apparmor
        .as_ref()
        .is_some_and(|p| p.profile_type == localhost)
        || legacy_localhost_apparmor(security)
    {
        return Err(unimplemented("a Localhost AppArmor profile"));
    }
    Ok(())
}

/// Kubelets before 1.30 name AppArmor profiles in the deprecated string
/// field (`localhost/<name>`).
#[allow(deprecated)]
fn legacy_localhost_apparmor(security: &cri::LinuxContainerSecurityContext) -> bool {
    security.apparmor_profile.starts_with("localhost/")
}

/// The config the kubelet sent, as stored.
pub fn stored_config(cri: &CriContainer) -> cri::ContainerConfig {
    cri::ContainerConfig::decode(cri.config.as_slice()).unwrap_or_default()
}

/// A container of a CRI sandbox, as the CRI front door reads it.
pub struct View<'a> {
    pub pod_id: &'a str,
    pub status: &'a proto::ContainerStatus,
    pub runtime: &'a ContainerRuntime,
    pub cri: &'a CriContainer,
}

fn state(status: &proto::ContainerStatus) -> cri::ContainerState {
    match ContainerState::try_from(status.state) {
        Ok(ContainerState::Created) => cri::ContainerState::ContainerCreated,
        Ok(ContainerState::Running) => cri::ContainerState::ContainerRunning,
        Ok(ContainerState::Exited | ContainerState::OomKilled | ContainerState::Failed) => {
            cri::ContainerState::ContainerExited
        }
        Ok(ContainerState::Unspecified) | Err(_) => cri::ContainerState::ContainerUnknown,
    }
}

/// The CRI event of a container whose state went from `before` to
/// `after` (`None`: not in its pod), if the CRI has one for it.
pub fn event_type(
    before: Option<ContainerState>,
    after: Option<ContainerState>,
) -> Option<cri::ContainerEventType> {
    let ended = |s: ContainerState| {
        matches!(
            s,
            ContainerState::Exited | ContainerState::OomKilled | ContainerState::Failed
        )
    };
    let Some(after) = after else {
        return before.map(|_| cri::ContainerEventType::ContainerDeletedEvent);
    };
    match (before, after) {
        (Some(ContainerState::Created), ContainerState::Created) => None,
        (_, ContainerState::Created) => Some(cri::ContainerEventType::ContainerCreatedEvent),
        (_, ContainerState::Running) => Some(cri::ContainerEventType::ContainerStartedEvent),
        (b, a) if ended(a) && !b.is_some_and(ended) => {
            Some(cri::ContainerEventType::ContainerStoppedEvent)
        }
        _ => None,
    }
}

fn image_spec(config: &cri::ContainerConfig) -> Option<cri::ImageSpec> {
    config.image.clone()
}

/// The container in a list.
pub fn to_container(view: &View<'_>) -> cri::Container {
    let config = stored_config(view.cri);
    cri::Container {
        id: view.cri.id.clone(),
        pod_sandbox_id: view.pod_id.to_string(),
        metadata: config.metadata.clone(),
        image: image_spec(&config),
        image_ref: view.status.image_id.clone(),
        state: state(view.status) as i32,
        created_at: unix_nanos(view.status.created_at.as_ref()),
        labels: to_hash_map(config.labels),
        annotations: to_hash_map(config.annotations),
        image_id: view.status.image_id.clone(),
    }
}

/// The container's status.
pub fn to_status(view: &View<'_>) -> cri::ContainerStatus {
    let config = stored_config(view.cri);
    let status = view.status;
    let state = state(status);
    let failed = status.state == ContainerState::Failed as i32;
    let (reason, message) = match ContainerState::try_from(status.state) {
        // The runtime could not create or start it (containerd's words).
        Ok(ContainerState::Failed) => ("StartError".to_string(), status.reason.clone()),
        Ok(ContainerState::Exited | ContainerState::OomKilled) => {
            (status.reason.clone(), String::new())
        }
        _ => (String::new(), String::new()),
    };
    let exit_code = match status.exit_code {
        Some(code) => code,
        // A container that never ran exits as containerd reports it.
        None if failed => 128,
        None => 0,
    };
    let resources = config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .map(|linux| cri::ContainerResources {
            linux: Some(linux),
            windows: None,
        });
    cri::ContainerStatus {
        id: view.cri.id.clone(),
        metadata: config.metadata.clone(),
        state: state as i32,
        created_at: unix_nanos(status.created_at.as_ref()),
        started_at: unix_nanos(status.started_at.as_ref()),
        finished_at: unix_nanos(status.finished_at.as_ref()),
        exit_code,
        image: image_spec(&config),
        image_ref: status.image_id.clone(),
        reason,
        message,
        labels: to_hash_map(config.labels),
        annotations: to_hash_map(config.annotations),
        mounts: config.mounts.clone(),
        log_path: view.cri.log_path.clone(),
        resources,
        image_id: status.image_id.clone(),
        user: None,
    }
}

/// Whether the container passes a list filter (its sandbox already
/// checked).
pub fn matches(container: &cri::Container, filter: &cri::ContainerFilter) -> bool {
    if let Some(state) = &filter.state {
        if state.state != container.state {
            return false;
        }
    }
    filter
        .label_selector
        .iter()
        .all(|(k, v)| container.labels.get(k) == Some(v))
}

/// Container attributes for stats.
pub fn attributes(view: &View<'_>) -> cri::ContainerAttributes {
    let config = stored_config(view.cri);
    cri::ContainerAttributes {
        id: view.cri.id.clone(),
        metadata: config.metadata,
        labels: to_hash_map(config.labels),
        annotations: to_hash_map(config.annotations),
    }
}

/// An empty map of the CRI's kind.
pub fn no_info() -> HashMap<String, String> {
    HashMap::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_are_the_cris_four_events() {
        use cri::ContainerEventType::*;
        use ContainerState::*;
        let cases = [
            (None, Some(Unspecified), None),
            (
                Some(Unspecified),
                Some(Created),
                Some(ContainerCreatedEvent),
            ),
            (None, Some(Created), Some(ContainerCreatedEvent)),
            (Some(Created), Some(Running), Some(ContainerStartedEvent)),
            (Some(Running), Some(Exited), Some(ContainerStoppedEvent)),
            (Some(Running), Some(OomKilled), Some(ContainerStoppedEvent)),
            (Some(Created), Some(Failed), Some(ContainerStoppedEvent)),
            (Some(Exited), Some(OomKilled), None),
            (Some(Exited), None, Some(ContainerDeletedEvent)),
            (None, None, None),
        ];
        for (before, after, want) in cases {
            assert_eq!(event_type(before, after), want, "{before:?} -> {after:?}");
        }
    }

    #[test]
    fn names_carry_the_attempt_and_stay_labels() {
        assert_eq!(container_name("web", 0), "web-0");
        assert_eq!(container_name("web", 3), "web-3");
        let long = container_name(&"a".repeat(63), 1);
        assert!(long.len() <= 63);
        stratum_pool::validate_name(&long).unwrap();
        assert_ne!(long, container_name(&"a".repeat(63), 2));
        stratum_pool::validate_name(&container_name("Web_App", 0)).unwrap();
    }

    #[test]
    fn log_paths_stay_below_the_log_directory() {
        assert_eq!(
            log_path("/var/log/pods/x", "c/0.log").unwrap(),
            "/var/log/pods/x/c/0.log"
        );
        assert_eq!(log_path("", "c/0.log").unwrap(), "");
        assert!(log_path("/var/log/pods/x", "../../etc/passwd").is_err());
        assert!(log_path("/var/log/pods/x", "/etc/passwd").is_err());
        assert!(log_path("relative", "c.log").is_err());
    }
}
