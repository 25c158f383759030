//! A container's security context and mounts: what a caller may ask for
//! at the agent's pod security level, and what the runtime is then told.
//!
//! The levels are Kubernetes' Pod Security Standards, enforced here by
//! the runtime instead of by an admission controller, because the agent
//! has callers (the Supervisor's PodService, any kubelet on the CRI
//! socket) that no admission controller sees:
//! - **baseline** (the default) is what every container gets anyway plus
//!   what cannot widen it: dropping capabilities, another user or group, a
//!   read-only root, more masked paths, host paths below the mount roots
//!   (the kubelet's own directory: its volumes, `/etc/hosts`, termination
//!   logs). Adding a capability outside the default set, a bidirectional
//!   mount or a host path elsewhere is PERMISSION_DENIED. An unconfined
//!   seccomp profile or privilege escalation — which a kubelet asks for
//!   on every container unless told otherwise — gets the defaults instead
//!   (the default profile, `no_new_privs`): stricter than asked, never
//!   looser, and never a pod that cannot start.
//! - **privileged** gives a caller all of that as asked.
//!
//! Host paths are resolved (symlinks and all) before they are checked and
//! handed to the runtime as resolved, off every lock, with a time limit: a
//! path on a hung mount cannot stall the agent. Users and groups named by
//! name are looked up in the image's own files, read by descriptor
//! without following its symlinks (`stratum_image::merged`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::agent::errors::{AgentError, Result};
use stratum_api::proto;
use stratum_runtime::confinement::{self, CapabilityName};
use stratum_runtime::idmap::IDS_PER_POD;
use stratum_runtime::seccomp_file::{self, LinuxSeccomp};
use stratum_runtime::sysctls::{Namespace as SysctlNamespace, Sysctl};
use stratum_runtime::users::{parse_user_spec, Identity, UserDb, UserRef};
use stratum_runtime::{BindMount, Confinement, HostShares, Propagation};

/// The most of an image's passwd or group file read.
const USER_DB_MAX: u64 = 1 << 20;

/// How long resolving one container's host paths may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The kubelet's root directory: where its pods' volumes, `/etc/hosts`
/// files and termination logs live.
pub const DEFAULT_MOUNT_ROOT: &str = "/var/lib/kubelet";

/// The kubelet's directory of Localhost seccomp profiles.
pub const DEFAULT_SECCOMP_ROOT: &str = "/var/lib/kubelet/seccomp";

/// The agent's pod security level (`--pod-security`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodSecurity {
    /// Nothing beyond the defaults.
    #[default]
    Baseline,
    /// Anything a security context can say.
    Privileged,
}

impl FromStr for PodSecurity {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "baseline" => Ok(PodSecurity::Baseline),
            "privileged" => Ok(PodSecurity::Privileged),
            _ => Err(format!("{s:?} is not baseline or privileged")),
        }
    }
}

impl std::fmt::Display for PodSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PodSecurity::Baseline => "baseline",
            PodSecurity::Privileged => "privileged",
        })
    }
}

fn invalid(container: &str, message: String) -> AgentError {
    AgentError::InvalidArgument(format!("container {container:?}: {message}"))
}

fn denied(container: &str, level: PodSecurity, what: String) -> AgentError {
    AgentError::PermissionDenied(format!(
        "container {container:?}: {what} is not allowed at pod security level {level} \
         (the agent's --pod-security)"
    ))
}

/// The pod's sysctls, checked against `level`: each a setting of the
/// pod's own namespaces, and one of Kubernetes' safe set below the
/// privileged level.
pub fn sysctls(spec: &proto::PodSpec, level: PodSecurity) -> Result<Vec<Sysctl>> {
    let mut checked = Vec::with_capacity(spec.sysctls.len());
    for (name, value) in &spec.sysctls {
        let sysctl = Sysctl::new(name, value)
            .map_err(|e| AgentError::InvalidArgument(format!("pod {:?}: {e}", spec.name)))?;
        if level != PodSecurity::Privileged && !sysctl.is_safe() {
            return Err(AgentError::PermissionDenied(format!(
                "pod {:?}: sysctl {name} (not one of Kubernetes' safe sysctls) is not allowed \
                 at pod security level {level} (the agent's --pod-security)",
                spec.name
            )));
        }
        let host_owned = match sysctl.namespace() {
            SysctlNamespace::Net => spec.host_network,
            SysctlNamespace::Ipc => spec.host_ipc,
        };
        if host_owned {
            return Err(AgentError::InvalidArgument(format!(
                "pod {:?}: sysctl {name} would change the host's own namespace",
                spec.name
            )));
        }
        checked.push(sysctl);
    }
    Ok(checked)
}

/// A privileged pod (no user namespace of its own) and one that shares a
/// namespace with the host need the privileged level; a host-network pod
/// can have no network of the agent's, and maps a host port only to
/// itself.
pub fn check_pod(spec: &proto::PodSpec, level: PodSecurity) -> Result<()> {
    let asks = [
        (spec.privileged, "a privileged pod"),
        (spec.host_network, "the host's network namespace"),
        (spec.host_ipc, "the host's IPC namespace"),
        (spec.host_pid, "the host's PID namespace"),
    ];
    if let Some((_, what)) = asks.iter().find(|(asked, _)| *asked) {
        if level != PodSecurity::Privileged {
            return Err(AgentError::PermissionDenied(format!(
                "pod {:?}: {what} is not allowed at pod security level {level} \
                 (the agent's --pod-security)",
                spec.name
            )));
        }
    }
    if spec.share_process_namespace && spec.host_pid {
        return Err(AgentError::InvalidArgument(format!(
            "pod {:?}: a PID namespace of the pod's own cannot also be the host's",
            spec.name
        )));
    }
    if spec.host_network {
        if !spec.network.is_empty() {
            return Err(AgentError::InvalidArgument(format!(
                "pod {:?}: a pod on the host's network cannot be on network {:?}",
                spec.name, spec.network
            )));
        }
        if let Some(m) = spec
            .port_mappings
            .iter()
            .find(|m| m.host_port != m.container_port)
        {
            return Err(AgentError::InvalidArgument(format!(
                "pod {:?}: on the host's network, host port {} cannot map to container port {}",
                spec.name, m.host_port, m.container_port
            )));
        }
    }
    Ok(())
}

/// What the pod shares with the host besides (maybe) its network.
pub fn host_shares(spec: &proto::PodSpec) -> HostShares {
    HostShares {
        ipc: spec.host_ipc,
        // The host's network goes with its hostname (Kubernetes').
        uts: spec.host_network,
        pid: spec.host_pid,
    }
}

/// Whether the pod's containers share the host's user namespace: a
/// privileged pod's do; one that asks for the host's gets it at the
/// privileged level only.
pub fn host_users(spec: &proto::PodSpec, level: PodSecurity) -> bool {
    // A user namespace of the pod's own could not join the host's others.
    let host_namespaces = spec.host_network || spec.host_ipc || spec.host_pid;
    // Each container has a user namespace of its own, and only a PID
    // namespace's owner (or an ancestor of it) may mount its /proc: a PID
    // namespace shared by containers can be owned by the host's alone.
    // Such a pod runs as containerd runs every pod: no user namespace,
    // the rest of its confinement as it is.
    let shared_pid = spec.share_process_namespace;
    spec.privileged
        || host_namespaces
        || shared_pid
        || (spec.host_users && level == PodSecurity::Privileged)
}

/// Checks a container's security context and mounts against `level`, in
/// a pod that is privileged or not, without touching the host.
pub fn check(spec: &proto::ContainerSpec, level: PodSecurity, pod_privileged: bool) -> Result<()> {
    let name = spec.name.as_str();
    if let Some(security) = &spec.security {
        check_security(name, security, level)?;
        if security.privileged && !pod_privileged {
            return Err(invalid(
                name,
                "a privileged container needs a privileged pod".into(),
            ));
        }
    }
    for mount in &spec.mounts {
        check_mount(name, mount, level)?;
    }
    Ok(())
}

fn check_security(name: &str, s: &proto::SecurityContext, level: PodSecurity) -> Result<()> {
    if s.run_as_user.is_some() && !s.run_as_username.is_empty() {
        return Err(invalid(
            name,
            "run_as_user and run_as_username are both set".into(),
        ));
    }
    if s.run_as_group.is_some() && s.run_as_user.is_none() && s.run_as_username.is_empty() {
        return Err(invalid(
            name,
            "run_as_group needs run_as_user or run_as_username".into(),
        ));
    }
    let localhost = s.seccomp == proto::SeccompMode::SeccompLocalhost as i32;
    let has_path = !s.seccomp_localhost_path.is_empty();
    if localhost != has_path {
        return Err(invalid(
            name,
            "seccomp_localhost_path goes with SECCOMP_LOCALHOST, and only with it".into(),
        ));
    }
    if localhost && !s.seccomp_localhost_path.starts_with('/') {
        return Err(invalid(
            name,
            format!(
                "seccomp profile {:?} is not an absolute path",
                s.seccomp_localhost_path
            ),
        ));
    }
    let added = capability_names(name, &s.add_capabilities)?;
    capability_names(name, &s.drop_capabilities)?;
    for path in s.masked_paths.iter().chain(&s.readonly_paths) {
        if !path.starts_with('/') || path.contains('\0') {
            return Err(invalid(
                name,
                format!("masked or read-only path {path:?} is not absolute"),
            ));
        }
    }
    if level == PodSecurity::Privileged {
        return Ok(());
    }
    if s.privileged {
        return Err(denied(name, level, "a privileged container".into()));
    }
    for (text, cap) in s.add_capabilities.iter().zip(&added) {
        let widening = match cap {
            CapabilityName::All => true,
            CapabilityName::One(c) => !confinement::is_default(*c),
        };
        if widening {
            return Err(denied(name, level, format!("adding capability {text}")));
        }
    }
    Ok(())
}

fn capability_names(container: &str, names: &[String]) -> Result<Vec<CapabilityName>> {
    names
        .iter()
        .map(|n| {
            n.parse()
                .map_err(|_| invalid(container, format!("{n:?} is not a Linux capability")))
        })
        .collect()
}

fn check_mount(name: &str, m: &proto::Mount, level: PodSecurity) -> Result<()> {
    let propagation = proto::MountPropagation::try_from(m.propagation)
        .map_err(|_| invalid(name, format!("unknown mount propagation {}", m.propagation)))?;
    if propagation == proto::MountPropagation::Bidirectional && level != PodSecurity::Privileged {
        return Err(denied(
            name,
            level,
            format!("bidirectional propagation of {:?}", m.container_path),
        ));
    }
    let bind = bind_mount(m, PathBuf::from(&m.host_path))?;
    bind.validate()
        .map_err(|e| invalid(name, format!("mount {:?}: {e}", m.container_path)))
}

fn bind_mount(m: &proto::Mount, source: PathBuf) -> Result<BindMount> {
    let propagation = match proto::MountPropagation::try_from(m.propagation) {
        Ok(proto::MountPropagation::Private) => Propagation::Private,
        Ok(proto::MountPropagation::HostToContainer) => Propagation::HostToContainer,
        Ok(proto::MountPropagation::Bidirectional) => Propagation::Bidirectional,
        Err(_) => {
            return Err(AgentError::InvalidArgument(format!(
                "unknown mount propagation {}",
                m.propagation
            )))
        }
    };
    Ok(BindMount {
        source,
        destination: PathBuf::from(&m.container_path),
        readonly: m.readonly,
        propagation,
    })
}

/// The runtime's confinement for a (checked) container spec at `level`.
pub fn confinement(spec: &proto::ContainerSpec, level: PodSecurity) -> Confinement {
    let Some(s) = &spec.security else {
        return Confinement::default();
    };
    let privileged = level == PodSecurity::Privileged;
    if privileged && s.privileged {
        return Confinement::privileged();
    }
    let parse = |names: &[String]| -> Vec<CapabilityName> {
        names.iter().filter_map(|n| n.parse().ok()).collect()
    };
    Confinement {
        capabilities: confinement::capabilities(
            &parse(&s.add_capabilities),
            &parse(&s.drop_capabilities),
        ),
        seccomp: !(privileged && s.seccomp == proto::SeccompMode::SeccompUnconfined as i32),
        // Read separately (`seccomp_profile`): a file on the host.
        seccomp_profile: None,
        no_new_privileges: !(privileged && s.allow_privilege_escalation),
        masked_paths: s.masked_paths.clone(),
        readonly_paths: s.readonly_paths.clone(),
        privileged: false,
    }
}

/// The container's Localhost seccomp profile, read and parsed: `None`
/// when it has none, or when it is privileged (no filter at all). The
/// path is resolved and must lie below `root` unless `level` is
/// privileged; the file is read on a blocking thread with a time limit,
/// non-blocking and only if regular. Call it holding no lock.
pub async fn seccomp_profile(
    spec: &proto::ContainerSpec,
    level: PodSecurity,
    root: &Path,
) -> Result<Option<LinuxSeccomp>> {
    let Some(s) = spec
        .security
        .as_ref()
        .filter(|s| s.seccomp == proto::SeccompMode::SeccompLocalhost as i32 && !s.privileged)
    else {
        return Ok(None);
    };
    let (path, name, root) = (
        PathBuf::from(&s.seccomp_localhost_path),
        spec.name.clone(),
        root.to_path_buf(),
    );
    let read = tokio::task::spawn_blocking(move || read_profile(&name, &path, level, &root));
    match tokio::time::timeout(RESOLVE_TIMEOUT, read).await {
        Ok(Ok(result)) => result.map(Some),
        Ok(Err(e)) => Err(AgentError::Internal(format!(
            "reading a seccomp profile: {e}"
        ))),
        Err(_) => Err(AgentError::Unavailable(format!(
            "container {:?}: its seccomp profile was not read within {}s",
            spec.name,
            RESOLVE_TIMEOUT.as_secs()
        ))),
    }
}

fn read_profile(name: &str, path: &Path, level: PodSecurity, root: &Path) -> Result<LinuxSeccomp> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: std::io::Error| {
        AgentError::FailedPrecondition(format!(
            "container {name:?}: seccomp profile {}: {e}",
            path.display()
        ))
    };
    let resolved = std::fs::canonicalize(path).map_err(failed)?;
    if level != PodSecurity::Privileged && !resolved.starts_with(root) {
        return Err(denied(
            name,
            level,
            format!(
                "seccomp profile {} (outside {})",
                resolved.display(),
                root.display()
            ),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&resolved)
        .map_err(failed)?;
    let meta = file.metadata().map_err(failed)?;
    if !meta.is_file() || meta.len() > seccomp_file::MAX_PROFILE_BYTES {
        return Err(invalid(
            name,
            format!(
                "seccomp profile {} is not a regular file of at most 1 MiB",
                resolved.display()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(seccomp_file::MAX_PROFILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    seccomp_file::parse(&bytes).map_err(|e| invalid(name, format!("{}: {e}", resolved.display())))
}

/// Whether the root file system is mounted read-only.
pub fn readonly_rootfs(spec: &proto::ContainerSpec) -> bool {
    spec.security.as_ref().is_some_and(|s| s.readonly_rootfs)
}

/// The container's bind mounts with their host paths resolved, each
/// below one of `roots` unless `level` is privileged. Runs the lookups on
/// a blocking thread, bounded by a timeout; call it holding no lock.
pub async fn resolve_mounts(
    spec: &proto::ContainerSpec,
    level: PodSecurity,
    roots: &[PathBuf],
) -> Result<Vec<BindMount>> {
    if spec.mounts.is_empty() {
        return Ok(Vec::new());
    }
    let (mounts, name, roots) = (spec.mounts.clone(), spec.name.clone(), roots.to_vec());
    let lookup =
        tokio::task::spawn_blocking(move || resolve_blocking(&name, &mounts, level, &roots));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(AgentError::Internal(format!("resolving mounts: {e}"))),
        Err(_) => Err(AgentError::Unavailable(format!(
            "container {:?}: its host paths did not resolve within {}s",
            spec.name,
            RESOLVE_TIMEOUT.as_secs()
        ))),
    }
}

fn resolve_blocking(
    name: &str,
    mounts: &[proto::Mount],
    level: PodSecurity,
    roots: &[PathBuf],
) -> Result<Vec<BindMount>> {
    mounts
        .iter()
        .map(|m| {
            let source = std::fs::canonicalize(&m.host_path).map_err(|e| {
                AgentError::FailedPrecondition(format!(
                    "container {name:?}: host path {:?}: {e}",
                    m.host_path
                ))
            })?;
            if level != PodSecurity::Privileged && !below_a_root(&source, roots) {
                return Err(denied(
                    name,
                    level,
                    format!("host path {:?} (outside the mount roots {roots:?})", source),
                ));
            }
            bind_mount(m, source)
        })
        .collect()
}

fn below_a_root(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| path.starts_with(root))
}

/// Who the container's process runs as: the security context's user and
/// group, else the image's `USER`, resolved against the image's
/// `/etc/passwd` and `/etc/group` in `lowerdirs`; with a user namespace
/// every id must be one the pod maps. Blocking: reads the image's files.
pub fn identity(
    spec: &proto::ContainerSpec,
    image_user: &str,
    lowerdirs: &[PathBuf],
    user_namespace: bool,
) -> Result<Identity> {
    let security = spec.security.clone().unwrap_or_default();
    let (user, group) = match (&security.run_as_user, security.run_as_username.as_str()) {
        (Some(uid), _) => (UserRef::Id(*uid), security.run_as_group.map(UserRef::Id)),
        (None, name) if !name.is_empty() => (
            UserRef::Name(name.to_string()),
            security.run_as_group.map(UserRef::Id),
        ),
        _ if image_user.is_empty() => (UserRef::Id(0), None),
        _ => parse_user_spec(image_user),
    };
    let db = user_db(lowerdirs)
        .map_err(|e| AgentError::Internal(format!("reading the image's users: {e}")))?;
    let identity = db
        .resolve(&user, group.as_ref(), &security.supplemental_groups)
        .map_err(|e| invalid(&spec.name, e.to_string()))?;
    if user_namespace {
        let outside = std::iter::once(identity.uid)
            .chain(std::iter::once(identity.gid))
            .chain(identity.additional_gids.iter().copied())
            .find(|id| *id >= IDS_PER_POD);
        if let Some(id) = outside {
            return Err(invalid(
                &spec.name,
                format!(
                    "id {id} is outside the pod's user namespace (0-{})",
                    IDS_PER_POD - 1
                ),
            ));
        }
    }
    Ok(identity)
}

fn user_db(lowerdirs: &[PathBuf]) -> std::io::Result<UserDb> {
    let passwd = stratum_image::merged::read_file(lowerdirs, "etc/passwd", USER_DB_MAX)?;
    let group = stratum_image::merged::read_file(lowerdirs, "etc/group", USER_DB_MAX)?;
    Ok(UserDb::parse(
        passwd.as_deref().unwrap_or_default(),
        group.as_deref().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(security: proto::SecurityContext) -> proto::ContainerSpec {
        proto::ContainerSpec {
            name: "c".into(),
            image: "busybox".into(),
            security: Some(security),
            ..Default::default()
        }
    }

    fn code(r: Result<()>) -> tonic::Code {
        tonic::Status::from(r.unwrap_err()).code()
    }

    #[test]
    fn baseline_lets_capabilities_go_but_not_come() {
        let drop_all = container(proto::SecurityContext {
            drop_capabilities: vec!["ALL".into()],
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            ..Default::default()
        });
        check(&drop_all, PodSecurity::Baseline, false).unwrap();
        let c = confinement(&drop_all, PodSecurity::Baseline);
        assert_eq!(c.capabilities.len(), 1);
        for add in ["NET_ADMIN", "CAP_SYS_ADMIN", "ALL", "NET_RAW"] {
            let spec = container(proto::SecurityContext {
                add_capabilities: vec![add.into()],
                ..Default::default()
            });
            assert_eq!(
                code(check(&spec, PodSecurity::Baseline, false)),
                tonic::Code::PermissionDenied,
                "{add}"
            );
            check(&spec, PodSecurity::Privileged, false).unwrap();
        }
        let unconfined = container(proto::SecurityContext {
            seccomp: proto::SeccompMode::SeccompUnconfined as i32,
            allow_privilege_escalation: true,
            ..Default::default()
        });
        check(&unconfined, PodSecurity::Baseline, false).unwrap();
        let stricter = confinement(&unconfined, PodSecurity::Baseline);
        assert!(stricter.seccomp && stricter.no_new_privileges);
        let asked = confinement(&unconfined, PodSecurity::Privileged);
        assert!(!asked.seccomp && !asked.no_new_privileges);
    }

    #[test]
    fn privileged_containers_need_the_level_and_a_privileged_pod() {
        let spec = container(proto::SecurityContext {
            privileged: true,
            ..Default::default()
        });
        assert_eq!(
            code(check(&spec, PodSecurity::Baseline, true)),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(check(&spec, PodSecurity::Privileged, false)),
            tonic::Code::InvalidArgument
        );
        check(&spec, PodSecurity::Privileged, true).unwrap();
        let c = confinement(&spec, PodSecurity::Privileged);
        assert!(c.privileged && !c.seccomp);
        assert_eq!(c.capabilities, confinement::current_capabilities());
        let pod = proto::PodSpec {
            name: "p".into(),
            privileged: true,
            ..Default::default()
        };
        assert_eq!(
            tonic::Status::from(check_pod(&pod, PodSecurity::Baseline).unwrap_err()).code(),
            tonic::Code::PermissionDenied
        );
        check_pod(&pod, PodSecurity::Privileged).unwrap();
    }

    #[test]
    fn malformed_contexts_are_invalid_at_any_level() {
        let cases = [
            proto::SecurityContext {
                run_as_group: Some(5),
                ..Default::default()
            },
            proto::SecurityContext {
                run_as_user: Some(5),
                run_as_username: "www-data".into(),
                ..Default::default()
            },
            proto::SecurityContext {
                drop_capabilities: vec!["NOT_A_CAP".into()],
                ..Default::default()
            },
            proto::SecurityContext {
                masked_paths: vec!["proc/kcore".into()],
                ..Default::default()
            },
        ];
        for security in cases {
            let spec = container(security.clone());
            assert_eq!(
                code(check(&spec, PodSecurity::Privileged, false)),
                tonic::Code::InvalidArgument,
                "{security:?}"
            );
        }
    }

    #[test]
    fn mounts_are_checked_before_the_host_is_touched() {
        let mut spec = container(Default::default());
        spec.mounts = vec![proto::Mount {
            host_path: "/var/lib/kubelet/x".into(),
            container_path: "/../etc".into(),
            ..Default::default()
        }];
        assert_eq!(
            code(check(&spec, PodSecurity::Privileged, false)),
            tonic::Code::InvalidArgument
        );
        spec.mounts[0].container_path = "/data".into();
        spec.mounts[0].propagation = proto::MountPropagation::Bidirectional as i32;
        assert_eq!(
            code(check(&spec, PodSecurity::Baseline, false)),
            tonic::Code::PermissionDenied
        );
        check(&spec, PodSecurity::Privileged, false).unwrap();
    }

    #[tokio::test]
    async fn host_paths_resolve_below_the_roots_only() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("kubelet");
        std::fs::create_dir_all(root.join("pods/v")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("pods/escape")).unwrap();
        let roots = vec![std::fs::canonicalize(&root).unwrap()];
        let mut spec = container(Default::default());
        spec.mounts = vec![proto::Mount {
            host_path: root.join("pods/v").to_string_lossy().into_owned(),
            container_path: "/data".into(),
            ..Default::default()
        }];
        let binds = resolve_mounts(&spec, PodSecurity::Baseline, &roots)
            .await
            .unwrap();
        assert_eq!(binds[0].source, roots[0].join("pods/v"));
        spec.mounts[0].host_path = root.join("pods/escape").to_string_lossy().into_owned();
        let escaped = resolve_mounts(&spec, PodSecurity::Baseline, &roots).await;
        assert_eq!(
            tonic::Status::from(escaped.unwrap_err()).code(),
            tonic::Code::PermissionDenied
        );
        let privileged = resolve_mounts(&spec, PodSecurity::Privileged, &roots)
            .await
            .unwrap();
        assert_eq!(privileged[0].source, PathBuf::from("/etc"));
    }
}
