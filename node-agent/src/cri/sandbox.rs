//! A CRI sandbox as a pod: the kubelet's `PodSandboxConfig` turned into
//! the agent's `PodSpec` (checked first: what the agent cannot do is
//! refused before anything is made), and a stored pod turned back into
//! the CRI's `PodSandbox` and `PodSandboxStatus`.
//!
//! User namespaces: a sandbox that asks for the host's (Kubernetes'
//! default) gets it only at the privileged pod security level; below, every
//! pod has its own (see `agent::pods::security`).
//!
//! DNS settings become the pod's resolv.conf, bound into each container
//! with the pod's own /etc/hosts and /etc/hostname (a kubelet's managed
//! /etc/hosts, sent as a container mount, replaces the pod's).
//!
//! Names: a Kubernetes pod is unique by namespace, name, uid and attempt;
//! the agent's pod name is a DNS label unique in its namespace, so it is
//! the Kubernetes name (cut to fit) and a hash of all four. A second
//! sandbox with the same four is then refused as the same name.

use std::collections::BTreeMap;

use k8s_cri::v1 as cri;
use prost::Message;
use tonic::Status;

use super::unix_nanos;
use crate::agent::pods::PodEntry;
use crate::records::CriSandbox;
use stratum_api::proto;
use stratum_api::proto::PodState;
use stratum_pool::MILLICORES_PER_CPU;

/// The Kubernetes pod name's share of the agent's pod name.
const NAME_PREFIX_MAX: usize = 46;

/// The agent's pod spec for a sandbox, and the record part that keeps
/// what the kubelet sent.
pub fn pod_spec(
    config: &cri::PodSandboxConfig,
    handler: &str,
    pool: &str,
) -> Result<(proto::PodSpec, CriSandbox), Status> {
    let meta = metadata(config)?;
    refuse_unsupported(config)?;
    let security = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let (host_network, host_ipc, host_pid) =
        host_namespaces(security.and_then(|s| s.namespace_options.as_ref()));
    let spec = proto::PodSpec {
        name: pod_name(meta),
        pool_id: pool.to_string(),
        hostname: config.hostname.clone(),
        labels: config
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        port_mappings: port_mappings(&config.port_mappings)?,
        runtime_class: proto::RuntimeClass::Container as i32,
        resources: config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map(pod_resources),
        restart_policy: proto::RestartPolicy::Never as i32,
        privileged: security.is_some_and(|s| s.privileged),
        host_network,
        host_ipc,
        host_pid,
        share_process_namespace: shares_pod_pid(
            security.and_then(|s| s.namespace_options.as_ref()),
        ),
        host_users: host_users(security)?,
        sysctls: config
            .linux
            .as_ref()
            .map(|l| {
                l.sysctls
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        dns: config.dns_config.as_ref().map(|d| proto::PodDns {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        }),
        ..Default::default()
    };
    let record = CriSandbox {
        config: config.encode_to_vec(),
        runtime_handler: handler.to_string(),
    };
    Ok((spec, record))
}

/// The metadata every kubelet request carries: name, uid and namespace.
fn metadata(config: &cri::PodSandboxConfig) -> Result<&cri::PodSandboxMetadata, Status> {
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| Status::invalid_argument("sandbox config has no metadata"))?;
    for (what, value) in [
        ("name", &meta.name),
        ("uid", &meta.uid),
        ("namespace", &meta.namespace),
    ] {
        if value.is_empty() {
            return Err(Status::invalid_argument(format!(
                "sandbox metadata has no {what}"
            )));
        }
    }
    Ok(meta)
}

/// What a sandbox may ask for that the agent does not do yet.
fn refuse_unsupported(config: &cri::PodSandboxConfig) -> Result<(), Status> {
    let Some(security) = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
    else {
        return Ok(());
    };
    refuse_target_pid(security.namespace_options.as_ref(), "sandbox")
}

/// Whether the sandbox asks for the host's user namespace: Kubernetes'
/// default (`hostUsers: true`, no user namespace options, or NODE). A
/// pod user namespace with the kubelet's own id mappings is not made (the
/// agent allocates pods' ids itself).
fn host_users(security: Option<&cri::LinuxSandboxSecurityContext>) -> Result<bool, Status> {
    let Some(userns) = security
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref())
    else {
        return Ok(true);
    };
    if userns.mode == cri::NamespaceMode::Pod as i32 {
        if !userns.uids.is_empty() || !userns.gids.is_empty() {
            return Err(Status::unimplemented(
                "a pod user namespace with the kubelet's id mappings is not supported \
                 (the agent maps each pod's ids itself)",
            ));
        }
        return Ok(false);
    }
    Ok(true)
}

/// The agent's pod name for a Kubernetes pod: a DNS label.
pub fn pod_name(meta: &cri::PodSandboxMetadata) -> String {
    let hash = fnv1a(&[
        meta.namespace.as_bytes(),
        meta.name.as_bytes(),
        meta.uid.as_bytes(),
        &meta.attempt.to_le_bytes(),
    ]);
    hashed_label(&meta.name, NAME_PREFIX_MAX, hash, "k8s")
}

/// A DNS label `<prefix>-<hash>`: the prefix is `name` lowercased, other
/// characters as `-`, cut to `max` (`fallback` when nothing is left).
pub fn hashed_label(name: &str, max: usize, hash: u64, fallback: &str) -> String {
    let prefix: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(max)
        .collect();
    let prefix = prefix.trim_matches('-');
    let prefix = if prefix.is_empty() { fallback } else { prefix };
    format!("{prefix}-{hash:016x}")
}

/// UNIMPLEMENTED for another container's PID namespace (TARGET, what
/// ephemeral debug containers ask for) in `options` (of `whose`).
pub fn refuse_target_pid(
    options: Option<&cri::NamespaceOption>,
    whose: &str,
) -> Result<(), Status> {
    if options.is_some_and(|ns| ns.pid == cri::NamespaceMode::Target as i32) {
        return Err(Status::unimplemented(format!(
            "another container's PID namespace (TARGET) for a {whose} is not supported yet"
        )));
    }
    Ok(())
}

/// Whether `options` ask for one PID namespace for the whole pod (POD,
/// `shareProcessNamespace`). With no namespace options at all the proto's
/// zero would read as POD: only options the kubelet sent count.
pub fn shares_pod_pid(options: Option<&cri::NamespaceOption>) -> bool {
    options.is_some_and(|ns| ns.pid == cri::NamespaceMode::Pod as i32)
}

/// Which namespaces the sandbox shares with the host (NODE).
pub fn host_namespaces(options: Option<&cri::NamespaceOption>) -> (bool, bool, bool) {
    let node = cri::NamespaceMode::Node as i32;
    options.map_or((false, false, false), |ns| {
        (ns.network == node, ns.ipc == node, ns.pid == node)
    })
}

/// FNV-1a over the parts, each followed by a 0 byte (no two different
/// part lists hash the same bytes).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn port_mappings(mappings: &[cri::PortMapping]) -> Result<Vec<proto::PortMapping>, Status> {
    mappings
        .iter()
        // A port without a host port is only declared, never mapped.
        .filter(|m| m.host_port != 0)
        .map(|m| {
            let protocol = match cri::Protocol::try_from(m.protocol) {
                Ok(cri::Protocol::Tcp) => proto::PortProtocol::Tcp,
                Ok(cri::Protocol::Udp) => proto::PortProtocol::Udp,
                Ok(cri::Protocol::Sctp) => {
                    return Err(Status::unimplemented(
                        "SCTP port mappings are not supported",
                    ))
                }
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "unknown port protocol {}",
                        m.protocol
                    )))
                }
            };
            let port = |what: &str, p: i32| {
                u32::try_from(p)
                    .map_err(|_| Status::invalid_argument(format!("{what} {p} is negative")))
            };
            Ok(proto::PortMapping {
                host_port: port("host port", m.host_port)?,
                container_port: port("container port", m.container_port)?,
                protocol: protocol as i32,
                host_ip: m.host_ip.clone(),
            })
        })
        .collect()
}

/// CPU millicores from a CFS quota and period (0: no limit).
pub fn quota_millicores(quota: i64, period: i64) -> u64 {
    match (u64::try_from(quota), u64::try_from(period)) {
        (Ok(q), Ok(p)) if q > 0 && p > 0 => q.saturating_mul(MILLICORES_PER_CPU).div_ceil(p),
        _ => 0,
    }
}

/// CPU millicores from CPU shares, as the kubelet makes shares from a
/// request (1024 per core; its minimum, 2, is no request).
pub fn shares_millicores(shares: i64) -> u64 {
    match u64::try_from(shares) {
        Ok(s) if s > 2 => s.saturating_mul(MILLICORES_PER_CPU) / 1024,
        _ => 0,
    }
}

/// The pod-level resources the kubelet sends as a hint: the pod's request
/// (its CPU shares, which the pool reserves) and its limits.
fn pod_resources(r: &cri::LinuxContainerResources) -> proto::PodResources {
    proto::PodResources {
        requests: Some(proto::ResourceAmounts {
            cpu_millicores: shares_millicores(r.cpu_shares),
            memory_bytes: 0,
        }),
        limits: Some(proto::ResourceAmounts {
            cpu_millicores: quota_millicores(r.cpu_quota, r.cpu_period),
            memory_bytes: u64::try_from(r.memory_limit_in_bytes).unwrap_or(0),
        }),
    }
}

/// The config the kubelet sent, as stored (empty if the record cannot be
/// read, which the agent never writes).
pub fn stored_config(cri: &CriSandbox) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig::decode(cri.config.as_slice()).unwrap_or_default()
}

fn status_of(entry: &PodEntry) -> proto::PodStatus {
    entry.record.status.clone().unwrap_or_default()
}

fn state_of(entry: &PodEntry) -> cri::PodSandboxState {
    if entry.state() == PodState::Running {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

/// The sandbox in a list.
pub fn to_sandbox(entry: &PodEntry, cri_record: &CriSandbox) -> cri::PodSandbox {
    let config = stored_config(cri_record);
    cri::PodSandbox {
        id: entry.record.id.clone(),
        metadata: config.metadata,
        state: state_of(entry) as i32,
        created_at: unix_nanos(status_of(entry).created_at.as_ref()),
        labels: to_hash_map(config.labels),
        annotations: to_hash_map(config.annotations),
        runtime_handler: cri_record.runtime_handler.clone(),
    }
}

/// The sandbox's status.
pub fn to_status(entry: &PodEntry, cri_record: &CriSandbox) -> cri::PodSandboxStatus {
    let config = stored_config(cri_record);
    let status = status_of(entry);
    let network = (!status.ip.is_empty()).then(|| cri::PodSandboxNetworkStatus {
        ip: status.ip.clone(),
        additional_ips: Vec::new(),
    });
    let namespace_options = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    cri::PodSandboxStatus {
        id: entry.record.id.clone(),
        metadata: config.metadata,
        state: state_of(entry) as i32,
        created_at: unix_nanos(status.created_at.as_ref()),
        network,
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: namespace_options,
            }),
        }),
        labels: to_hash_map(config.labels),
        annotations: to_hash_map(config.annotations),
        runtime_handler: cri_record.runtime_handler.clone(),
    }
}

/// Whether the sandbox passes a list filter.
pub fn matches(sandbox: &cri::PodSandbox, filter: &cri::PodSandboxFilter) -> bool {
    if let Some(state) = &filter.state {
        if state.state != sandbox.state {
            return false;
        }
    }
    filter
        .label_selector
        .iter()
        .all(|(k, v)| sandbox.labels.get(k) == Some(v))
}

pub fn to_hash_map<K, V>(map: impl IntoIterator<Item = (K, V)>) -> std::collections::HashMap<K, V>
where
    K: std::hash::Hash + Eq,
{
    map.into_iter().collect()
}

/// Labels as the agent's specs keep them.
pub fn to_btree(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, attempt: u32) -> cri::PodSandboxMetadata {
        cri::PodSandboxMetadata {
            name: name.into(),
            uid: "uid-1".into(),
            namespace: "default".into(),
            attempt,
        }
    }

    #[test]
    fn pod_names_are_labels_unique_per_attempt() {
        let a = pod_name(&meta("web-0", 0));
        let b = pod_name(&meta("web-0", 1));
        assert_ne!(a, b);
        assert!(a.starts_with("web-0-"));
        let long = pod_name(&meta(&"X.y".repeat(40), 0));
        assert!(long.len() <= 63, "{long}");
        stratum_pool::validate_name(&long).unwrap();
        stratum_pool::validate_name(&pod_name(&meta("---", 0))).unwrap();
        stratum_pool::validate_name(&a).unwrap();
    }

    #[test]
    fn cpu_figures_follow_the_kubelet() {
        assert_eq!(quota_millicores(50_000, 100_000), 500);
        assert_eq!(quota_millicores(0, 100_000), 0);
        assert_eq!(quota_millicores(-1, 100_000), 0);
        assert_eq!(shares_millicores(512), 500);
        assert_eq!(shares_millicores(2), 0);
        assert_eq!(shares_millicores(-5), 0);
    }

    #[test]
    fn a_sandbox_without_metadata_is_refused() {
        let config = cri::PodSandboxConfig::default();
        assert_eq!(
            pod_spec(&config, "", "").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut config = cri::PodSandboxConfig {
            metadata: Some(meta("a", 0)),
            ..Default::default()
        };
        config.metadata.as_mut().unwrap().uid.clear();
        assert!(pod_spec(&config, "", "")
            .unwrap_err()
            .message()
            .contains("uid"));
    }
}
