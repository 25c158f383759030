//! `node-agent`: the host's gRPC door for a Supervisor. See README.md for
//! the walk-through and DESIGN.md for pools, cgroups and the VM lifecycle.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use node_agent::agent::artifacts::{ArtifactDirs, DEFAULT_ARTIFACT_SUBDIR};
use node_agent::agent::config::{AgentConfig, VmJail, DEFAULT_SYSTEM_RESERVE};
use node_agent::agent::disk::{MinFree, DEFAULT_MIN_FREE};
use node_agent::agent::networks::NetworksConfig;
use node_agent::agent::pods::security::{PodSecurity, DEFAULT_MOUNT_ROOT, DEFAULT_SECCOMP_ROOT};
use node_agent::agent::pods::{PodHostConfig, DEFAULT_POD_PIDS_LIMIT};
use node_agent::agent::reclaim::{MemoryReclaim, DEFAULT_RECLAIM_INTERVAL};
use node_agent::agent::Agent;
use node_agent::api;
use node_agent::cri;
use stratum_api::tls;
use stratum_net::{Ipv4Cidr, Protocol};
use stratum_pool::{Resources, MIB};
use stratum_runtime::LogRotation;

#[derive(Parser, Debug)]
#[command(name = "node-agent", version, about = "Stratum node agent")]
struct Cli {
    /// State, VM run directories and disks, certificates.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// Serve plaintext gRPC instead of mTLS (development only; refused on
    /// anything but a loopback address).
    #[arg(long)]
    insecure_plaintext: bool,
    /// CA, server and client certificates [default: DATA_DIR/certs]. When
    /// the directory has none, a development CA and certificates are made
    /// on first start (`nodectl certs init` makes the same).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// The vmm binary [default: `vmm` next to this binary, else on PATH].
    /// Statically linked, unless --no-vm-jail: its jail holds no libraries.
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The jailer each vmm starts through [default: `stratum-jailer` next
    /// to this binary, else on PATH].
    #[arg(long)]
    jailer: Option<PathBuf>,
    /// The uids jailed vmms run as, one per running VM, each also its gid:
    /// FIRST-LAST. They must belong to nobody else on the host.
    #[arg(long, value_name = "FIRST-LAST", default_value = "1900000000-1900065535", value_parser = parse_uid_range)]
    vm_uid_range: RangeInclusive<u32>,
    /// Run each vmm without its jail: as root, in the agent's namespaces,
    /// with every host file in reach. For debugging vmm only.
    #[arg(long)]
    no_vm_jail: bool,
    /// CPU held back for the host, in millicores.
    #[arg(long, default_value_t = DEFAULT_SYSTEM_RESERVE.cpu_millicores)]
    reserve_cpu: u64,
    /// Memory held back for the host, in MiB.
    #[arg(long, default_value_t = DEFAULT_SYSTEM_RESERVE.memory_bytes / MIB)]
    reserve_memory_mib: u64,
    /// Name of the agent's cgroup subtree.
    #[arg(long, default_value = "stratum")]
    cgroup_root: String,
    /// An image registry (HOST[:PORT], exactly as in image references) to
    /// reach over plain HTTP instead of HTTPS (repeatable; development
    /// registries only). From the environment: a comma-separated list.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        env = "STRATUM_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// A registry whose pulls go to a mirror instead, as containerd's
    /// hosts.toml: REGISTRY=URL (`registry.k8s.io=http://127.0.0.1:5000`),
    /// repeatable. An http:// mirror is reached over plain HTTP. Images
    /// keep the registry's names.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=URL", value_parser = stratum_image::parse_mirror)]
    registry_mirrors: Vec<(String, stratum_image::RegistryMirror)>,
    /// The OCI runtime pods' containers run with: `crun` (default) or
    /// `runc`, a name on PATH or a path. On a hybrid-cgroup host that crun
    /// refuses, the agent falls back to runc when it is installed.
    #[arg(long, default_value = "crun")]
    oci_runtime: PathBuf,
    /// The per-container log writer [default: `stratum-log-writer` next
    /// to this binary, else on PATH].
    #[arg(long)]
    log_writer: Option<PathBuf>,
    /// The init of pods that share one PID namespace [default:
    /// `stratum-pod-init` next to this binary, else on PATH].
    #[arg(long)]
    pod_init: Option<PathBuf>,
    /// A container's log file is rotated before it would pass this size
    /// (the kubelet's containerLogMaxSize): 10Mi, 16Ki, 1Gi, or bytes; at
    /// least 1Ki.
    #[arg(long, value_name = "SIZE", default_value = "10Mi", value_parser = parse_log_size)]
    container_log_max_size: u64,
    /// Log files kept per container, the current one included (the
    /// kubelet's containerLogMaxFiles); the oldest go first.
    #[arg(long, value_name = "N", default_value_t = LogRotation::DEFAULT_MAX_FILES, value_parser = clap::value_parser!(u32).range(2..))]
    container_log_max_files: u32,
    /// The bridge of the default network, the pods' unless they name
    /// another (at most 15 bytes); also the name of the networks' nftables
    /// tables, and the tag of every link the agent makes.
    #[arg(long, default_value = "stratum0")]
    pod_bridge: String,
    /// The default network's addresses (IPv4 CIDR); the first goes to the
    /// bridge. Other networks come from the Networks API.
    #[arg(long, default_value = "10.88.0.0/16")]
    pod_cidr: Ipv4Cidr,
    /// Let workloads (VMs and pods) of namespace FROM open connections to
    /// those of namespace TO (repeatable; one way: replies flow back, the
    /// reverse needs its own). Namespaces are isolated otherwise, on every
    /// network.
    #[arg(long = "allow-namespace", value_name = "FROM:TO", value_parser = parse_allow)]
    allow_namespaces: Vec<(String, String)>,
    /// A directory VM kernels, initrds and disk base images and image
    /// imports may come from (repeatable; any other host path is refused).
    /// Writable by root only: whatever is in it, any caller may boot or
    /// read [default: DATA_DIR/artifacts, created].
    #[arg(long = "artifact-dir", value_name = "DIR")]
    artifact_dirs: Vec<PathBuf>,
    /// The host ports pods may publish; a port a host process holds is
    /// refused too.
    #[arg(long, value_name = "FIRST-LAST", default_value = "30000-32767", value_parser = parse_port_range)]
    host_port_range: RangeInclusive<u16>,
    /// A host service workloads (VMs and pods) may reach, on their
    /// network's gateway address: PROTO:PORT, e.g. udp:53 for a DNS
    /// resolver listening there (repeatable). Every other connection a
    /// workload opens to the host is dropped, the agent's own port
    /// included.
    #[arg(long = "pod-host-service", value_name = "PROTO:PORT", value_parser = parse_host_service)]
    pod_host_services: Vec<(Protocol, u16)>,
    /// Run pods' containers without user namespaces: container root is
    /// then host root (held in by capabilities and seccomp only). By
    /// default each pod gets 65536 host ids of its own from 2000000000 up,
    /// where the kernel can idmap image layers (else this is the fallback,
    /// with a warning).
    #[arg(long)]
    no_pod_user_namespaces: bool,
    /// What pods' security contexts may ask for, as Kubernetes' Pod
    /// Security Standards: `baseline` refuses added capabilities outside
    /// the default set, bidirectional mounts and host paths outside the
    /// mount roots, and keeps the default seccomp profile and
    /// no_new_privs; `privileged` gives what is asked.
    #[arg(long, value_name = "LEVEL", default_value = "baseline")]
    pod_security: PodSecurity,
    /// A host directory pods' bind mounts may come from at the baseline
    /// pod security level (repeatable) [default: /var/lib/kubelet].
    #[arg(long = "mount-root", value_name = "DIR")]
    mount_roots: Vec<PathBuf>,
    /// Where containers' Localhost seccomp profiles may come from at the
    /// baseline pod security level (the kubelet's).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_SECCOMP_ROOT)]
    seccomp_profile_root: PathBuf,
    /// Tasks (processes and threads) one pod may have at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_POD_PIDS_LIMIT, value_parser = clap::value_parser!(u64).range(1..))]
    pod_pids_limit: u64,
    /// Free space the data directory's file system keeps: below it, VM
    /// creates, pod runs, container creates and image pulls and imports
    /// are refused (RESOURCE_EXHAUSTED). A percentage of its size (5%) or
    /// a size (2GiB, 512MiB).
    #[arg(long, value_name = "PERCENT|SIZE", default_value_t = DEFAULT_MIN_FREE)]
    min_free_disk: MinFree,
    /// Seconds between the memory reclaim's rounds, which inflate the
    /// balloons of overcommitted VMs (reservation below memory) when a pool
    /// nears its memory limit and let them down when it has room; 0: no
    /// reclaim.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_RECLAIM_INTERVAL.as_secs())]
    memory_reclaim_interval: u64,
    /// The Kubernetes CRI's Unix socket (a kubelet's
    /// --container-runtime-endpoint unix://PATH), made mode 0600.
    #[arg(long, value_name = "PATH", default_value = cri::DEFAULT_SOCKET)]
    cri_socket: PathBuf,
    /// Serve no CRI socket.
    #[arg(long)]
    no_cri: bool,
    /// The pool CRI sandboxes land in [default: the root pool]; a sandbox's
    /// `stratum.io/pool` annotation or its runtime handler's pool comes first.
    #[arg(long, value_name = "POOL", default_value = "")]
    cri_pool: String,
    /// A CRI runtime handler (a RuntimeClass's handler) and the pool its
    /// sandboxes land in: HANDLER=POOL, repeatable.
    #[arg(long = "cri-handler", value_name = "HANDLER=POOL", value_parser = parse_handler)]
    cri_handlers: Vec<(String, String)>,
    /// Where the CRI's streaming server (exec) listens: a loopback address
    /// (the kubelet runs on this host); port 0 picks a free one.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
    cri_streaming_addr: std::net::SocketAddr,
}

/// The mount roots resolved as host paths are (a root that does not
/// exist yet is kept as given: nothing is below it).
fn mount_roots(given: &[PathBuf]) -> Vec<PathBuf> {
    let defaults = [PathBuf::from(DEFAULT_MOUNT_ROOT)];
    let roots = if given.is_empty() {
        &defaults[..]
    } else {
        given
    };
    roots
        .iter()
        .map(|root| std::fs::canonicalize(root).unwrap_or_else(|_| root.clone()))
        .collect()
}

/// `HANDLER=POOL` of --cri-handler.
fn parse_handler(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((handler, pool)) if !handler.is_empty() && !pool.is_empty() => {
            Ok((handler.to_string(), pool.to_string()))
        }
        _ => Err(format!("{s:?} is not HANDLER=POOL")),
    }
}

/// `FIRST-LAST` of --host-port-range.
fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let parsed = s
        .split_once('-')
        .and_then(|(first, last)| Some((first.parse::<u16>().ok()?, last.parse::<u16>().ok()?)));
    match parsed {
        Some((first, last)) if first >= 1 && first <= last => Ok(first..=last),
        _ => Err(format!(
            "{s:?} is not FIRST-LAST with 1 <= FIRST <= LAST <= 65535"
        )),
    }
}

/// `FIRST-LAST` of --vm-uid-range: not root, not the overflow id.
fn parse_uid_range(s: &str) -> Result<RangeInclusive<u32>, String> {
    let parsed = s
        .split_once('-')
        .and_then(|(first, last)| Some((first.parse::<u32>().ok()?, last.parse::<u32>().ok()?)));
    match parsed {
        Some((first, last)) if first >= 1 && first <= last && last < u32::MAX => Ok(first..=last),
        _ => Err(format!(
            "{s:?} is not FIRST-LAST with 1 <= FIRST <= LAST < 4294967295"
        )),
    }
}

/// `SIZE` of --container-log-max-size.
fn parse_log_size(s: &str) -> Result<u64, String> {
    let size = stratum_runtime::log_writer::parse_size(s)?;
    if size < LogRotation::MIN_MAX_SIZE {
        return Err(format!("{s:?} is below 1Ki"));
    }
    Ok(size)
}

/// `PROTO:PORT` of --pod-host-service.
fn parse_host_service(s: &str) -> Result<(Protocol, u16), String> {
    let parsed = s.split_once(':').and_then(|(proto, port)| {
        let proto = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return None,
        };
        Some((proto, port.parse::<u16>().ok().filter(|p| *p > 0)?))
    });
    parsed.ok_or_else(|| format!("{s:?} is not tcp:PORT or udp:PORT"))
}

/// `FROM:TO` of --allow-namespace.
fn parse_allow(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((from, to)) if !from.is_empty() && !to.is_empty() => {
            Ok((from.to_string(), to.to_string()))
        }
        _ => Err(format!("{s:?} is not FROM:TO")),
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or the journal gets
        // plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-agent: error: {e:#}");
            if e.downcast_ref::<StoreFailed>().is_some() {
                ExitCode::from(EX_TEMPFAIL)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = config(&cli)?;
    if cli.insecure_plaintext {
        tls::check_plaintext_allowed(cli.listen, true)?;
    } else {
        ensure_certs(&config)?;
    }
    let agent = Agent::start(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Container inits are re-parented to the agent, which collects
        // their exit status (see runtime::reaper).
        stratum_runtime::become_subreaper()?;
        stratum_runtime::spawn_orphan_reaper()?;
        agent.resume().await;
        agent.spawn_memory_reclaim();
        let store = Arc::clone(&agent);
        let cri = cri_door(&cli, &agent).await?;
        tokio::select! {
            served = api::server::serve(agent, cli.listen, cli.insecure_plaintext, shutdown_signal()) => {
                served?;
                Ok(())
            }
            served = cri => {
                served?;
                anyhow::bail!("the CRI server stopped")
            }
            failure = async {
                let failure = store.store_failed().await;
                // The calls the failure refused get their answers first.
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                failure
            } => Err(anyhow::Error::new(StoreFailed(failure))),
        }
    })?;
    tracing::info!("node-agent stopped; VMs keep running and are re-adopted at the next start");
    Ok(())
}

/// The CRI server, bound now (a socket that cannot be had fails the
/// start), serving once polled; pending forever with --no-cri.
async fn cri_door(
    cli: &Cli,
    agent: &Arc<Agent>,
) -> anyhow::Result<
    std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<(), cri::server::CriServeError>> + Send>,
    >,
> {
    if cli.no_cri {
        return Ok(Box::pin(std::future::pending()));
    }
    let (streaming, streaming_listener) =
        cri::streaming::StreamingServer::bind(cli.cri_streaming_addr).await?;
    tokio::spawn(Arc::clone(&streaming).serve(streaming_listener, Arc::clone(agent)));
    let config = cri::CriConfig {
        socket: cli.cri_socket.clone(),
        default_pool: cli.cri_pool.clone(),
        handler_pools: cli.cri_handlers.iter().cloned().collect(),
        streaming: Some(streaming),
    };
    let listener = cri::server::bind(&config.socket).await?;
    Ok(Box::pin(cri::server::serve(
        Arc::clone(agent),
        config,
        listener,
        shutdown_signal(),
    )))
}

/// The state store failed a commit: the agent exits with [`EX_TEMPFAIL`]
/// for its service manager to restart it from its durable state.
#[derive(Debug, thiserror::Error)]
#[error("the state store failed a commit ({0}); exiting so that a restart reloads the durable state (VMs and pods keep running and are re-adopted)")]
struct StoreFailed(String);

/// sysexits' "temporary failure, retry": what the agent exits with after
/// a failed commit.
const EX_TEMPFAIL: u8 = 75;

fn config(cli: &Cli) -> anyhow::Result<AgentConfig> {
    let vmm_binary = match &cli.vmm {
        Some(path) => path.clone(),
        None => sibling_or_path("vmm"),
    };
    let vm_jail = vm_jail(cli, &vmm_binary)?;
    if cli
        .pod_host_services
        .contains(&(Protocol::Tcp, cli.listen.port()))
    {
        anyhow::bail!(
            "--pod-host-service tcp:{} is the agent's own port: workloads never reach it",
            cli.listen.port()
        );
    }
    let data_dir = std::path::absolute(&cli.data_dir)?;
    let artifacts = artifact_dirs(&cli.artifact_dirs, &data_dir)?;
    Ok(AgentConfig {
        cert_dir: cli
            .cert_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("certs")),
        data_dir,
        listen: cli.listen,
        insecure: cli.insecure_plaintext,
        vmm_binary,
        vm_jail,
        artifacts,
        system_reserve: Resources::new(cli.reserve_cpu, cli.reserve_memory_mib.saturating_mul(MIB)),
        cgroup_root: cli.cgroup_root.clone(),
        insecure_registries: cli.insecure_registries.clone(),
        registry_mirrors: cli.registry_mirrors.iter().cloned().collect(),
        min_free_disk: cli.min_free_disk,
        memory_reclaim: MemoryReclaim {
            interval: (cli.memory_reclaim_interval > 0)
                .then(|| Duration::from_secs(cli.memory_reclaim_interval)),
            ..MemoryReclaim::default()
        },
        networks: NetworksConfig {
            bridge: cli.pod_bridge.clone(),
            cidr: cli.pod_cidr,
            allow: cli.allow_namespaces.clone(),
            host_ports: cli.host_port_range.clone(),
            host_services: cli.pod_host_services.clone(),
        },
        pods: PodHostConfig {
            oci_runtime: cli.oci_runtime.clone(),
            pids_limit: cli.pod_pids_limit,
            user_namespaces: !cli.no_pod_user_namespaces,
            security: cli.pod_security,
            mount_roots: mount_roots(&cli.mount_roots),
            seccomp_root: std::fs::canonicalize(&cli.seccomp_profile_root)
                .unwrap_or_else(|_| cli.seccomp_profile_root.clone()),
            log_rotation: LogRotation::new(
                cli.container_log_max_size,
                cli.container_log_max_files,
            )?,
            log_writer: cli.log_writer.clone().unwrap_or_else(|| {
                stratum_runtime::log_writer::default_program(
                    std::env::current_exe().ok().as_deref(),
                )
            }),
            pod_init: cli.pod_init.clone().unwrap_or_else(|| {
                stratum_runtime::sibling_program(
                    std::env::current_exe().ok().as_deref(),
                    "stratum-pod-init",
                )
            }),
        },
    })
}

/// The configured artifact directories, or the default one (made if
/// missing).
fn artifact_dirs(configured: &[PathBuf], data_dir: &Path) -> anyhow::Result<ArtifactDirs> {
    if !configured.is_empty() {
        return Ok(ArtifactDirs::new(configured)?);
    }
    let default = data_dir.join(DEFAULT_ARTIFACT_SUBDIR);
    std::fs::create_dir_all(&default).with_context(|| format!("creating {}", default.display()))?;
    Ok(ArtifactDirs::new(&[default])?)
}

/// `name` next to this binary (as `cargo build` and packages lay them
/// out), else whatever `name` is on PATH.
fn sibling_or_path(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.exists())
        .or_else(|| on_path(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The first `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The VM jail, checked now rather than at the first VM start: the jailer
/// is there and vmm is statically linked.
fn vm_jail(cli: &Cli, vmm_binary: &Path) -> anyhow::Result<Option<VmJail>> {
    if cli.no_vm_jail {
        tracing::warn!("--no-vm-jail: every vmm runs as root with the host in reach");
        return Ok(None);
    }
    let jailer = match &cli.jailer {
        Some(path) => path.clone(),
        None => sibling_or_path("stratum-jailer"),
    };
    anyhow::ensure!(
        jailer.is_file(),
        "the jailer {} is missing (--jailer; or --no-vm-jail to debug vmm without one)",
        jailer.display()
    );
    let is_static = stratum_jail::elf::is_static(vmm_binary)
        .with_context(|| format!("reading the vmm binary {}", vmm_binary.display()))?;
    anyhow::ensure!(
        is_static,
        "the vmm binary {} is dynamically linked, but its jail holds no libraries: use a static build (make static) or --no-vm-jail to debug",
        vmm_binary.display()
    );
    let ids = cli.vm_uid_range.clone();
    let pods = node_agent::agent::pods::pod_uid_range();
    anyhow::ensure!(
        ids.end() < pods.start() || ids.start() > pods.end(),
        "--vm-uid-range {}-{} overlaps the pods' user namespace ids {}-{}",
        ids.start(),
        ids.end(),
        pods.start(),
        pods.end()
    );
    Ok(Some(VmJail { jailer, ids }))
}

/// A development PKI on first start, when the cert dir holds nothing; on
/// later starts, a new development admin certificate when it is near its
/// end (a deployment's own certificates, or a set without the CA key,
/// are left alone).
fn ensure_certs(config: &AgentConfig) -> anyhow::Result<()> {
    let dir = &config.cert_dir;
    let empty = std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none());
    if empty {
        tracing::warn!(
            dir = %dir.display(),
            "no certificates: creating a development CA, server and client certificate"
        );
        tls::generate_dev_pki(dir, &[])?;
    } else if dir.join(tls::CA_KEY).exists()
        && dir.join(tls::CLIENT_CERT).exists()
        && tls::renew_dev_client(dir)?
    {
        tracing::warn!(dir = %dir.display(), "renewed the development admin certificate");
    }
    Ok(())
}

/// glibc gives each thread that allocates its own arena; the blocking
/// pool's threads would each keep one (measured: RSS 50 MiB instead of 20
/// under 16 concurrent clients). Two arenas are plenty for an agent.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
