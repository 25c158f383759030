//! Checking a pod spec before anything is made, and turning a container
//! spec plus its image's config into the process the runtime starts.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::agent::errors::{AgentError, Result};
use stratum_api::proto;
use stratum_cgroup::CgroupLimits;
use stratum_image::ImageRecord;
use stratum_net::{PortMapping, Protocol};
use stratum_pool::convert::limits_from_proto;
use stratum_pool::{validate_name, PodSizing, MILLICORES_PER_CPU};
use stratum_runtime::{PodDns, ProcessConfig, RestartPolicy};

/// `PATH` when neither the image nor the spec sets one (containerd's).
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn invalid(message: String) -> AgentError {
    AgentError::InvalidArgument(message)
}

/// Checks what RunPod can check without touching the host: names,
/// sizing, port mappings, runtime class, each container. Returns the
/// pod's sizing (requests, limits).
pub fn check_pod(spec: &proto::PodSpec) -> Result<PodSizing> {
    match proto::RuntimeClass::try_from(spec.runtime_class) {
        Ok(proto::RuntimeClass::Unspecified | proto::RuntimeClass::Container) => {}
        Ok(proto::RuntimeClass::Microvm) => {
            return Err(AgentError::Unimplemented(
                "runtime class microvm (a pod in a lightweight VM) is not implemented yet".into(),
            ))
        }
        Err(_) => {
            return Err(invalid(format!(
                "unknown runtime class {}",
                spec.runtime_class
            )))
        }
    }
    check_label("pod name", &spec.name)?;
    if !spec.namespace.is_empty() {
        check_label("namespace", &spec.namespace)?;
    }
    if !spec.hostname.is_empty() {
        check_label("hostname", &spec.hostname)?;
    }
    restart_policy(spec.restart_policy)?;
    port_mappings(&spec.port_mappings)?;
    pod_dns(spec)?;
    let mut names = BTreeSet::new();
    for container in &spec.containers {
        check_container(container)?;
        if !names.insert(container.name.as_str()) {
            return Err(invalid(format!(
                "two containers are named {:?}",
                container.name
            )));
        }
    }
    if let Some(limits) = spec.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        check_memory_limit("the pod", limits.memory_bytes)?;
    }
    let sizing = PodSizing::try_from(spec)?;
    Ok(sizing)
}

/// Least memory limit a pod or container may have (Docker's minimum): a
/// runtime and a shell need a few MiB before the workload starts; below
/// that every container would only fail to start.
pub const MIN_MEMORY_LIMIT: u64 = 6 * 1024 * 1024;

/// A memory limit is 0 (none) or at least [`MIN_MEMORY_LIMIT`].
fn check_memory_limit(whose: &str, bytes: u64) -> Result<()> {
    if bytes != 0 && bytes < MIN_MEMORY_LIMIT {
        return Err(invalid(format!(
            "{whose}: a memory limit of {bytes} bytes is below the least a container \
             can start in ({} MiB)",
            MIN_MEMORY_LIMIT >> 20
        )));
    }
    Ok(())
}

/// Checks one container spec on its own (not its image).
pub fn check_container(spec: &proto::ContainerSpec) -> Result<()> {
    check_label("container name", &spec.name)?;
    if let Some(limits) = &spec.limits {
        check_memory_limit(&format!("container {:?}", spec.name), limits.memory_bytes)?;
    }
    if spec.image.is_empty() {
        return Err(invalid(format!("container {:?}: no image", spec.name)));
    }
    if let Some(adj) = spec.oom_score_adj.filter(|a| !OOM_SCORE_ADJ.contains(a)) {
        return Err(invalid(format!(
            "container {:?}: oom_score_adj {adj} is not in {}..={}",
            spec.name,
            OOM_SCORE_ADJ.start(),
            OOM_SCORE_ADJ.end()
        )));
    }
    if !spec.working_dir.is_empty() && !spec.working_dir.starts_with('/') {
        return Err(invalid(format!(
            "container {:?}: working dir {:?} is not absolute",
            spec.name, spec.working_dir
        )));
    }
    for var in &spec.env {
        if var.name.is_empty() || var.name.contains('=') || var.name.contains('\0') {
            return Err(invalid(format!(
                "container {:?}: bad environment variable name {:?}",
                spec.name, var.name
            )));
        }
        if var.value.contains('\0') {
            return Err(invalid(format!(
                "container {:?}: environment variable {} holds a NUL byte",
                spec.name, var.name
            )));
        }
    }
    if spec
        .command
        .iter()
        .chain(&spec.args)
        .any(|a| a.contains('\0'))
    {
        return Err(invalid(format!(
            "container {:?}: an argument holds a NUL byte",
            spec.name
        )));
    }
    Ok(())
}

/// A container added to a running pod must fit under the pod's limits.
pub fn check_container_fits(
    spec: &proto::ContainerSpec,
    pod_limits: &proto::ResourceAmounts,
) -> Result<()> {
    let own = spec.limits.unwrap_or_default();
    for (what, mine, pods) in [
        ("CPU", own.cpu_millicores, pod_limits.cpu_millicores),
        ("memory", own.memory_bytes, pod_limits.memory_bytes),
    ] {
        if pods != 0 && mine > pods {
            return Err(invalid(format!(
                "container {:?}: {what} limit {mine} is above the pod's {pods}",
                spec.name
            )));
        }
    }
    Ok(())
}

/// DNS label: 1-63 of `[a-z0-9-]`, not starting or ending with `-`.
fn check_label(what: &str, value: &str) -> Result<()> {
    validate_name(value).map_err(|e| invalid(format!("{what}: {e}")))
}

/// The restart policy, NEVER when unspecified.
pub fn restart_policy(value: i32) -> Result<RestartPolicy> {
    match proto::RestartPolicy::try_from(value) {
        Ok(proto::RestartPolicy::Unspecified | proto::RestartPolicy::Never) => {
            Ok(RestartPolicy::Never)
        }
        Ok(proto::RestartPolicy::OnFailure) => Ok(RestartPolicy::OnFailure),
        Ok(proto::RestartPolicy::Always) => Ok(RestartPolicy::Always),
        Err(_) => Err(invalid(format!("unknown restart policy {value}"))),
    }
}

/// The pod's DNS settings, checked; none when the spec has none.
pub fn pod_dns(spec: &proto::PodSpec) -> Result<Option<PodDns>> {
    spec.dns
        .as_ref()
        .map(|d| PodDns::new(&d.servers, &d.searches, &d.options))
        .transpose()
        .map_err(|e| invalid(format!("pod dns: {e}")))
}

/// The API's port mappings as the pod network takes them.
pub fn port_mappings(mappings: &[proto::PortMapping]) -> Result<Vec<PortMapping>> {
    mappings.iter().map(port_mapping).collect()
}

fn port_mapping(m: &proto::PortMapping) -> Result<PortMapping> {
    let port = |what: &str, p: u32| {
        u16::try_from(p)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| invalid(format!("{what} {p} is not in 1..=65535")))
    };
    let protocol = match proto::PortProtocol::try_from(m.protocol) {
        Ok(proto::PortProtocol::Unspecified | proto::PortProtocol::Tcp) => Protocol::Tcp,
        Ok(proto::PortProtocol::Udp) => Protocol::Udp,
        Err(_) => return Err(invalid(format!("unknown port protocol {}", m.protocol))),
    };
    let host_ip = if m.host_ip.is_empty() {
        None
    } else {
        let ip: Ipv4Addr = m
            .host_ip
            .parse()
            .map_err(|_| invalid(format!("host ip {:?} is not an IPv4 address", m.host_ip)))?;
        // `0.0.0.0` is "every address" to the kubelet and containerd.
        (!ip.is_unspecified()).then_some(ip)
    };
    Ok(PortMapping {
        protocol,
        host_port: port("host port", m.host_port)?,
        container_port: port("container port", m.container_port)?,
        host_ip,
    })
}

/// The process a container runs: the spec's command and args over the
/// image's entrypoint and cmd (Kubernetes' rules), the image's env with
/// the spec's on top, the working dir. It runs as root until its
/// identity is resolved against the image's files (`security::identity`).
pub fn process(spec: &proto::ContainerSpec, image: &ImageRecord) -> Result<ProcessConfig> {
    let config = image.config.config().as_ref();
    let image_entrypoint = config
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    let image_cmd = config.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let mut args = if spec.command.is_empty() {
        image_entrypoint
    } else {
        spec.command.clone()
    };
    if !spec.args.is_empty() {
        args.extend(spec.args.iter().cloned());
    } else if spec.command.is_empty() {
        args.extend(image_cmd);
    }
    if args.is_empty() {
        return Err(invalid(format!(
            "container {:?}: neither the spec nor image {} gives a command",
            spec.name, image.id
        )));
    }
    let mut env: Vec<String> = config.and_then(|c| c.env().clone()).unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    for var in &spec.env {
        let prefix = format!("{}=", var.name);
        env.retain(|e| !e.starts_with(&prefix));
        env.push(format!("{}={}", var.name, var.value));
    }
    let cwd = if !spec.working_dir.is_empty() {
        spec.working_dir.clone()
    } else {
        config
            .and_then(|c| c.working_dir().clone())
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".to_string())
    };
    Ok(ProcessConfig {
        args,
        env,
        cwd: PathBuf::from(cwd),
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
        oom_score_adj: spec.oom_score_adj,
        terminal: spec.tty,
    })
}

/// The image's `USER` (empty: root).
pub fn image_user(image: &ImageRecord) -> String {
    image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.user().clone())
        .unwrap_or_default()
}

/// The OOM score adjustments a container may have: the kubelet's range
/// for pods (-997 for Guaranteed ones); below it is the host's own.
pub const OOM_SCORE_ADJ: std::ops::RangeInclusive<i32> = -997..=1000;

/// The container's leaf cgroup limits (none beyond the pod's when 0) and
/// CPU weight among its pod's containers: from its CPU request as the
/// kubelet makes shares (1024 per core, at least 2), the default weight
/// when it states no requests.
pub fn container_limits(spec: &proto::ContainerSpec) -> CgroupLimits {
    let limits = limits_from_proto(spec.limits.as_ref());
    let defaults = CgroupLimits::default();
    let cpu_shares_weight = spec.requests.map_or(defaults.cpu_shares_weight, |r| {
        (r.cpu_millicores.saturating_mul(1024) / MILLICORES_PER_CPU).max(2)
    });
    CgroupLimits {
        cpu_shares_weight,
        cpu_limit_millicores: limits.cpu_millicores,
        memory_limit_bytes: limits.memory_bytes,
        ..defaults
    }
}

/// The pod cgroup's limits and weight: its limits as RunPod fixed them,
/// and CPU shares from its CPU request as the kubelet sets them
/// (1024 per core requested, at least 2 for a pod that requests none).
pub fn pod_limits(status: &proto::PodStatus, pids_max: Option<u64>) -> CgroupLimits {
    let limits = limits_from_proto(status.limits.as_ref());
    let cpu_request = status.reservation.map_or(0, |r| r.cpu_millicores);
    CgroupLimits {
        cpu_shares_weight: (cpu_request.saturating_mul(1024) / MILLICORES_PER_CPU).max(2),
        cpu_limit_millicores: limits.cpu_millicores,
        memory_limit_bytes: limits.memory_bytes,
        pids_max,
        ..CgroupLimits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str) -> proto::ContainerSpec {
        proto::ContainerSpec {
            name: name.into(),
            image: "busybox".into(),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<proto::ContainerSpec>) -> proto::PodSpec {
        proto::PodSpec {
            name: "web".into(),
            containers,
            ..Default::default()
        }
    }

    #[test]
    fn pod_specs_are_checked() {
        check_pod(&pod(vec![container("a"), container("b")])).unwrap();
        let dup = pod(vec![container("a"), container("a")]);
        assert!(check_pod(&dup)
            .unwrap_err()
            .to_string()
            .contains("two containers"));
        let mut bad = pod(vec![container("A")]);
        assert!(check_pod(&bad).is_err());
        bad = pod(vec![]);
        bad.name = "-x".into();
        assert!(check_pod(&bad).is_err());
        let mut micro = pod(vec![]);
        micro.runtime_class = proto::RuntimeClass::Microvm as i32;
        assert_eq!(
            check_pod(&micro).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
        let mut ports = pod(vec![]);
        ports.port_mappings = vec![proto::PortMapping {
            host_port: 70000,
            container_port: 80,
            ..Default::default()
        }];
        assert!(check_pod(&ports).is_err());
        ports.port_mappings[0].host_port = 8080;
        ports.port_mappings[0].host_ip = "not-an-ip".into();
        assert!(check_pod(&ports).is_err());
        ports.port_mappings[0].host_ip = "0.0.0.0".into();
        let any = port_mappings(&ports.port_mappings).unwrap();
        assert_eq!(any[0].host_ip, None, "0.0.0.0 is every address");
        let mut env = container("a");
        env.env = vec![proto::EnvVar {
            name: "A=B".into(),
            value: String::new(),
        }];
        assert!(check_pod(&pod(vec![env])).is_err());
        let mut relative = container("a");
        relative.working_dir = "tmp".into();
        assert!(check_pod(&pod(vec![relative])).is_err());
    }

    #[test]
    fn pod_shares_follow_cpu_requests() {
        let status = proto::PodStatus {
            reservation: Some(proto::ResourceAmounts {
                cpu_millicores: 500,
                memory_bytes: 0,
            }),
            ..Default::default()
        };
        assert_eq!(pod_limits(&status, None).cpu_shares_weight, 512);
        assert_eq!(
            pod_limits(&proto::PodStatus::default(), None).cpu_shares_weight,
            2
        );
    }
}
