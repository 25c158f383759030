//! Carrying out a parsed command: one RPC (or stream) per command, the
//! answer printed as a table or JSON.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use tonic::transport::Channel;

use super::args::{label_map, UserArg};
use super::cli::{
    CertsCommand, Cli, Command, ContainerArgs, HostCommand, ImageCommand, NetworkCommand,
    NetworkCreate, Output, PodAddContainer, PodCommand, PodContainerCommand, PodRun, PoolCommand,
    PoolSettings, SnapshotCommand, VmCommand, VmCreate,
};
use super::progress::PullProgress;
use super::{connect, json, render, CommandExit};
use stratum_api::certs;
use stratum_api::proto::host_client::HostClient;
use stratum_api::proto::image_service_client::ImageServiceClient;
use stratum_api::proto::networks_client::NetworksClient;
use stratum_api::proto::pod_service_client::PodServiceClient;
use stratum_api::proto::pull_image_progress;
use stratum_api::proto::pull_image_request::Auth;
use stratum_api::proto::resource_pools_client::ResourcePoolsClient;
use stratum_api::proto::virtual_machines_client::VirtualMachinesClient;
use stratum_api::proto::{
    Allocation, BasicAuth, CloudInit, ConsoleRequest, CreateResourcePoolRequest, CreateVmRequest,
    DeleteResourcePoolRequest, DeleteVmRequest, GetHostCapacityRequest, GetHostInfoRequest,
    GetResourcePoolRequest, GetVmRequest, KillVmRequest, ListResourcePoolsRequest, ListVmsRequest,
    PauseVmRequest, PullImageRequest, ResourcePoolSpec, ResumeVmRequest, Shares, SharesLevel,
    ShutdownVmRequest, StartVmRequest, UpdateResourcePoolRequest, VirtualMachine, VmSpec, VmState,
    WatchVmsRequest,
};
use stratum_api::proto::{
    CloneVmRequest, DeleteSnapshotRequest, GetSnapshotRequest, ListSnapshotsRequest,
    SnapshotVmRequest,
};
use stratum_api::proto::{
    ContainerSpec, CreateContainerRequest, ExecSyncRequest, GetPodRequest, ListPodsRequest,
    LogRecord, LogStream, LogsRequest, Pod, PodDns, PodResources, PodSpec, PodStatsRequest,
    RemoveContainerRequest, RemovePodRequest, ResourceAmounts, RunPodRequest, SecurityContext,
    StartContainerRequest, StopContainerRequest, StopPodRequest,
};
use stratum_api::proto::{
    CreateNetworkRequest, DeleteNetworkRequest, GetNetworkRequest, ListNetworksRequest, NetworkSpec,
};
use stratum_api::tls;

use super::UsageError;

/// Runs one nodectl command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        addr,
        certs,
        insecure,
        output,
        command,
    } = cli;
    let connect = || -> anyhow::Result<Channel> {
        let target = connect::target(&addr, insecure)?;
        connect::channel(&target, &certs)
    };
    match command {
        Command::Certs(c) => certs_command(c, &certs, output),
        Command::Host(c) => host(HostClient::new(connect()?), c, output).await,
        Command::Pool(c) => pool(ResourcePoolsClient::new(connect()?), c, output).await,
        Command::Vm(c) => vm(VirtualMachinesClient::new(connect()?), c, output).await,
        Command::Pod(c) => pod(PodServiceClient::new(connect()?), c, output).await,
        Command::Network(c) => network(NetworksClient::new(connect()?), c, output).await,
        Command::Snapshot(c) => snapshot(VirtualMachinesClient::new(connect()?), c, output).await,
        Command::Image(c) => image(c, connect, output).await,
    }
}

/// Writes to stdout; an error (such as a closed pipe) is returned, not a
/// panic as with `print!`.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Prints `msg` as its table or its JSON.
fn emit<T: serde::Serialize>(
    output: Output,
    msg: &T,
    table: fn(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Table => print(&table(msg)),
        Output::Json => print(&format!("{:#}\n", json::to_value(msg)?)),
    }
}

async fn host(
    mut client: HostClient<Channel>,
    cmd: HostCommand,
    output: Output,
) -> anyhow::Result<()> {
    match cmd {
        HostCommand::Info => {
            let info = client.get_info(GetHostInfoRequest {}).await?.into_inner();
            emit(output, &info, render::host_info)
        }
        HostCommand::Capacity => {
            let cap = client
                .get_capacity(GetHostCapacityRequest {})
                .await?
                .into_inner();
            emit(output, &cap, render::host_capacity)
        }
    }
}

async fn pool(
    mut client: ResourcePoolsClient<Channel>,
    cmd: PoolCommand,
    output: Output,
) -> anyhow::Result<()> {
    let pool = match cmd {
        PoolCommand::List { root, workloads } => {
            let root_id = root.unwrap_or_default();
            let list = client
                .list(ListResourcePoolsRequest {
                    root_id,
                    include_workloads: workloads,
                })
                .await?
                .into_inner();
            let table = if workloads {
                render::inventory
            } else {
                render::pool_tree
            };
            return emit(output, &list, table);
        }
        PoolCommand::Delete { id } => {
            client
                .delete(DeleteResourcePoolRequest { id: id.clone() })
                .await?;
            return deleted(output, "pool", &id);
        }
        PoolCommand::Get { id } => client.get(GetResourcePoolRequest { id }).await?,
        PoolCommand::Create {
            name,
            parent,
            settings,
        } => {
            let spec = Some(pool_spec(new_pool_spec(name), &settings));
            let request = CreateResourcePoolRequest {
                parent_id: parent.unwrap_or_default(),
                spec,
            };
            client.create(request).await?
        }
        PoolCommand::Update { id, name, settings } => {
            update_pool(&mut client, id, name, &settings).await?
        }
    };
    emit(output, &pool.into_inner(), render::pool_detail)
}

/// Read, edit, write back: Update replaces the whole spec, so flags not
/// given keep their current values. (A change made by someone else
/// between the read and the write is overwritten.)
async fn update_pool(
    client: &mut ResourcePoolsClient<Channel>,
    id: String,
    name: Option<String>,
    settings: &PoolSettings,
) -> Result<tonic::Response<stratum_api::proto::ResourcePool>, tonic::Status> {
    let current = client
        .get(GetResourcePoolRequest { id: id.clone() })
        .await?;
    let mut spec = current.into_inner().spec.unwrap_or_default();
    if let Some(name) = name {
        spec.name = name;
    }
    let spec = Some(pool_spec(spec, settings));
    client.update(UpdateResourcePoolRequest { id, spec }).await
}

fn normal_shares() -> Shares {
    Shares {
        level: SharesLevel::Normal as i32,
        custom: 0,
    }
}

/// A new pool's spec before flags: nothing reserved, no limit, normal
/// shares, expandable (vSphere's default for a new pool), no quota.
pub fn new_pool_spec(name: String) -> ResourcePoolSpec {
    let alloc = Allocation {
        shares: Some(normal_shares()),
        reservation: 0,
        limit: 0,
        expandable_reservation: true,
    };
    ResourcePoolSpec {
        name,
        cpu: Some(alloc),
        memory: Some(alloc),
        quota: None,
    }
}

/// `spec` with the settings that were given applied.
pub fn pool_spec(mut spec: ResourcePoolSpec, s: &PoolSettings) -> ResourcePoolSpec {
    let expandable = s.expandable();
    let cpu = spec.cpu.get_or_insert_default();
    apply_allocation(
        cpu,
        s.cpu_reservation,
        s.cpu_limit,
        s.cpu_shares,
        expandable,
    );
    let memory = spec.memory.get_or_insert_default();
    apply_allocation(
        memory,
        s.mem_reservation,
        s.mem_limit,
        s.mem_shares,
        expandable,
    );
    if s.max_vms.is_some()
        || s.max_vcpus.is_some()
        || s.max_memory.is_some()
        || s.max_pods.is_some()
    {
        let quota = spec.quota.get_or_insert_default();
        quota.max_vms = s.max_vms.unwrap_or(quota.max_vms);
        quota.max_vcpus = s.max_vcpus.unwrap_or(quota.max_vcpus);
        quota.max_memory_bytes = s.max_memory.unwrap_or(quota.max_memory_bytes);
        quota.max_pods = s.max_pods.unwrap_or(quota.max_pods);
    }
    spec
}

fn apply_allocation(
    alloc: &mut Allocation,
    reservation: Option<u64>,
    limit: Option<u64>,
    shares: Option<Shares>,
    expandable: Option<bool>,
) {
    alloc.reservation = reservation.unwrap_or(alloc.reservation);
    alloc.limit = limit.unwrap_or(alloc.limit);
    if let Some(shares) = shares {
        alloc.shares = Some(shares);
    }
    alloc.expandable_reservation = expandable.unwrap_or(alloc.expandable_reservation);
}

fn deleted(output: Output, kind: &str, id: &str) -> anyhow::Result<()> {
    match output {
        Output::Table => print(&format!("deleted {kind} {id}\n")),
        Output::Json => print(&format!("{:#}\n", serde_json::json!({ "deleted": id }))),
    }
}

async fn vm(
    mut client: VirtualMachinesClient<Channel>,
    cmd: VmCommand,
    output: Output,
) -> anyhow::Result<()> {
    let vm = match cmd {
        VmCommand::Create(c) => {
            let spec = Some(vm_spec(*c)?);
            client.create(CreateVmRequest { spec }).await?
        }
        VmCommand::Get { id } => client.get(GetVmRequest { id }).await?,
        VmCommand::Start { id, settle } => {
            let started = client.start(StartVmRequest { id: id.clone() }).await?;
            let vm = settled(&mut client, started.into_inner(), settle).await?;
            emit(output, &vm, render::vm_detail)?;
            if is_starting_or_running(&vm) {
                // The agent knows the vmm runs, not that the guest booted.
                eprintln!(
                    "nodectl: vm {id} is running; its guest may still be booting \
                     (`nodectl vm watch --vm {id}` follows its state)"
                );
            }
            return match vm_failure(&vm) {
                Some(reason) => Err(anyhow::anyhow!("vm {id} failed: {reason}")),
                None => Ok(()),
            };
        }
        VmCommand::Stop { id, timeout } => {
            let request = ShutdownVmRequest {
                id,
                timeout_seconds: timeout,
            };
            client.shutdown(request).await?
        }
        VmCommand::Kill { id } => client.kill(KillVmRequest { id }).await?,
        VmCommand::Pause { id } => client.pause(PauseVmRequest { id }).await?,
        VmCommand::Resume { id } => client.resume(ResumeVmRequest { id }).await?,
        VmCommand::Delete { id } => {
            client.delete(DeleteVmRequest { id: id.clone() }).await?;
            return deleted(output, "vm", &id);
        }
        VmCommand::Snapshot { id, name } => {
            let snapshot = client.snapshot(SnapshotVmRequest { id, name }).await?;
            return emit(output, &snapshot.into_inner(), render::snapshot_detail);
        }
        VmCommand::Clone {
            snapshot,
            name,
            count,
            label,
        } => {
            let request = CloneVmRequest {
                snapshot_id: snapshot,
                name,
                count,
                labels: label_map(label.into_iter().flatten()),
            };
            let clones = client.clone_vm(request).await?.into_inner();
            return emit(output, &clones, |c| render::vm_table(&c.vms));
        }
        other => return vm_stream_or_list(client, other, output).await,
    };
    emit(output, &vm.into_inner(), render::vm_detail)
}

async fn snapshot(
    mut client: VirtualMachinesClient<Channel>,
    cmd: SnapshotCommand,
    output: Output,
) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::List { vm } => {
            let request = ListSnapshotsRequest {
                vm_id: vm.unwrap_or_default(),
            };
            let list = client.list_snapshots(request).await?.into_inner();
            emit(output, &list, |l| render::snapshot_table(&l.snapshots))
        }
        SnapshotCommand::Get { id } => {
            let snapshot = client.get_snapshot(GetSnapshotRequest { id }).await?;
            emit(output, &snapshot.into_inner(), render::snapshot_detail)
        }
        SnapshotCommand::Delete { id } => {
            let request = DeleteSnapshotRequest { id: id.clone() };
            client.delete_snapshot(request).await?;
            deleted(output, "snapshot", &id)
        }
    }
}

/// The VM after `settle` seconds of watching, or as soon as it has
/// left RUNNING/STARTING (failed or stopped).
async fn settled(
    client: &mut VirtualMachinesClient<Channel>,
    mut vm: VirtualMachine,
    settle: f64,
) -> anyhow::Result<VirtualMachine> {
    const POLL: std::time::Duration = std::time::Duration::from_millis(100);
    let settle = std::time::Duration::try_from_secs_f64(settle)
        .map_err(|_| UsageError(format!("--settle {settle}: not a number of seconds")))?;
    let deadline = tokio::time::Instant::now() + settle;
    while tokio::time::Instant::now() < deadline && is_starting_or_running(&vm) {
        tokio::time::sleep(POLL).await;
        vm = client
            .get(GetVmRequest { id: vm.id.clone() })
            .await?
            .into_inner();
    }
    Ok(vm)
}

fn is_starting_or_running(vm: &VirtualMachine) -> bool {
    let state = vm.status.as_ref().map(|s| s.state());
    matches!(state, Some(VmState::Starting | VmState::Running))
}

/// The reason of a FAILED VM.
fn vm_failure(vm: &VirtualMachine) -> Option<&str> {
    let status = vm.status.as_ref()?;
    (status.state() == VmState::Failed).then_some(status.reason.as_str())
}

async fn vm_stream_or_list(
    mut client: VirtualMachinesClient<Channel>,
    cmd: VmCommand,
    output: Output,
) -> anyhow::Result<()> {
    match cmd {
        VmCommand::List {
            pool,
            role,
            selector,
        } => {
            let request = ListVmsRequest {
                pool_id: pool.unwrap_or_default(),
                role: role.map_or(0, |r| r as i32),
                label_selector: label_map(selector.into_iter().flatten()),
            };
            let list = client.list(request).await?.into_inner();
            emit(output, &list, |l| render::vm_table(&l.vms))
        }
        VmCommand::Console { id, history } => console(client, id, history).await,
        VmCommand::Watch { vm, pool } => watch(client, vm, pool, output).await,
        _ => Err(anyhow::anyhow!("internal error: unexpected vm command")),
    }
}

/// Copies the serial console to stdout until the agent ends the stream or
/// the operator presses Ctrl-C.
async fn console(
    mut client: VirtualMachinesClient<Channel>,
    id: String,
    include_history: bool,
) -> anyhow::Result<()> {
    let request = ConsoleRequest {
        id,
        include_history,
    };
    let mut stream = client.console(request).await?.into_inner();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            chunk = stream.message() => match chunk? {
                Some(chunk) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&chunk.data)?;
                    out.flush()?;
                }
                None => return Ok(()),
            },
            _ = &mut interrupted => return Ok(()),
        }
    }
}

/// One line per lifecycle event (a JSON object per line with `-o json`)
/// until the agent ends the stream or the operator presses Ctrl-C.
async fn watch(
    mut client: VirtualMachinesClient<Channel>,
    vm: Option<String>,
    pool: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let request = WatchVmsRequest {
        vm_id: vm.unwrap_or_default(),
        pool_id: pool.unwrap_or_default(),
    };
    let mut stream = client.watch(request).await?.into_inner();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            event = stream.message() => match event? {
                Some(event) => print(&match output {
                    Output::Table => format!("{}\n", render::event_line(&event)),
                    Output::Json => format!("{}\n", json::to_value(&event)?),
                })?,
                None => return Ok(()),
            },
            _ = &mut interrupted => return Ok(()),
        }
    }
}

/// The API's VmSpec from `vm create`'s flags.
pub fn vm_spec(c: VmCreate) -> anyhow::Result<VmSpec> {
    let mut disks = c.disk;
    for disk in &mut disks {
        disk.base_image = absolute(Path::new(&disk.base_image))?;
    }
    Ok(VmSpec {
        name: c.name,
        pool_id: c.pool.unwrap_or_default(),
        role: c.role as i32,
        vcpus: c.vcpus.unwrap_or(0),
        memory_mib: c.memory.unwrap_or(0),
        kernel: c
            .kernel
            .as_deref()
            .map(absolute)
            .transpose()?
            .unwrap_or_default(),
        initrd: c
            .initrd
            .as_deref()
            .map(absolute)
            .transpose()?
            .unwrap_or_default(),
        cmdline: c.cmdline.unwrap_or_default(),
        disks,
        nics: c.nic,
        labels: label_map(c.label),
        cpu_reservation_millicores: c.cpu_reservation,
        cpu_limit_millicores: c.cpu_limit,
        cpu_shares: c.cpu_shares,
        memory_reservation_mib: c.mem_reservation,
        cloud_init: cloud_init(c.user_data.as_deref(), c.meta_data, c.metadata_service)?,
        image: c.image.unwrap_or_default(),
        root_disk_mib: c.root_disk.unwrap_or(0),
    })
}

/// The spec's cloud-init data from `--user-data`, `--meta-data` and
/// `--metadata-service`: none when none is given.
fn cloud_init(
    user_data: Option<&Path>,
    meta_data: Vec<(String, String)>,
    metadata_service: bool,
) -> anyhow::Result<Option<CloudInit>> {
    if user_data.is_none() && meta_data.is_empty() && !metadata_service {
        return Ok(None);
    }
    let user_data = match user_data {
        None => Vec::new(),
        Some(path) if path == Path::new("-") => {
            let mut data = Vec::new();
            std::io::stdin()
                .read_to_end(&mut data)
                .context("reading user-data from stdin")?;
            data
        }
        Some(path) => {
            std::fs::read(path).with_context(|| format!("reading user-data {}", path.display()))?
        }
    };
    Ok(Some(CloudInit {
        user_data,
        meta_data: meta_data.into_iter().collect(),
        metadata_service,
    }))
}

/// `path` made absolute against the current directory (the agent runs
/// elsewhere), as UTF-8 since the API carries strings.
fn absolute(path: &Path) -> anyhow::Result<String> {
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    abs.into_os_string()
        .into_string()
        .map_err(|p| anyhow::anyhow!("{}: path is not UTF-8", PathBuf::from(p).display()))
}

async fn pod(
    mut client: PodServiceClient<Channel>,
    cmd: PodCommand,
    output: Output,
) -> anyhow::Result<()> {
    let pod = match cmd {
        PodCommand::Run(r) => {
            let spec = Some(pod_spec(*r));
            client.run_pod(RunPodRequest { spec }).await?
        }
        PodCommand::AddContainer(a) => return add_container(client, *a, output).await,
        PodCommand::Get { id } => client.get_pod(GetPodRequest { id }).await?,
        PodCommand::Stop { id, grace } => {
            let request = StopPodRequest {
                id,
                grace_period_seconds: grace,
            };
            client.stop_pod(request).await?
        }
        PodCommand::Rm { id } => {
            client
                .remove_pod(RemovePodRequest { id: id.clone() })
                .await?;
            return deleted(output, "pod", &id);
        }
        PodCommand::Container(c) => container_command(&mut client, c).await?,
        other => return pod_stream_or_list(client, other, output).await,
    };
    emit(output, &pod.into_inner(), render::pod_detail)
}

async fn pod_stream_or_list(
    mut client: PodServiceClient<Channel>,
    cmd: PodCommand,
    output: Output,
) -> anyhow::Result<()> {
    match cmd {
        PodCommand::List { pool, selector } => {
            let request = ListPodsRequest {
                pool_id: pool.unwrap_or_default(),
                label_selector: label_map(selector.into_iter().flatten()),
            };
            let list = client.list_pods(request).await?.into_inner();
            emit(output, &list, |l| render::pod_table(&l.pods))
        }
        PodCommand::Stats { id } => {
            let stats = client
                .stats(PodStatsRequest { pod_id: id })
                .await?
                .into_inner();
            emit(output, &stats, render::pod_stats)
        }
        PodCommand::Logs {
            id,
            container,
            follow,
            tail,
        } => {
            let container_name = container_or_only(&mut client, &id, container).await?;
            let request = LogsRequest {
                pod_id: id,
                container_name,
                follow,
                tail_lines: tail,
            };
            logs(client, request, output).await
        }
        PodCommand::Exec {
            id,
            container,
            timeout,
            command,
        } => {
            let container_name = container_or_only(&mut client, &id, container).await?;
            let request = ExecSyncRequest {
                pod_id: id,
                container_name,
                command,
                timeout_seconds: timeout,
            };
            exec(client, request, output).await
        }
        _ => Err(anyhow::anyhow!("internal error: unexpected pod command")),
    }
}

async fn container_command(
    client: &mut PodServiceClient<Channel>,
    cmd: PodContainerCommand,
) -> Result<tonic::Response<Pod>, tonic::Status> {
    match cmd {
        PodContainerCommand::Start { pod, name } => {
            let request = StartContainerRequest {
                pod_id: pod,
                container_name: name,
            };
            client.start_container(request).await
        }
        PodContainerCommand::Stop { pod, name, grace } => {
            let request = StopContainerRequest {
                pod_id: pod,
                container_name: name,
                grace_period_seconds: grace,
            };
            client.stop_container(request).await
        }
        PodContainerCommand::Rm { pod, name } => {
            let request = RemoveContainerRequest {
                pod_id: pod,
                container_name: name,
            };
            client.remove_container(request).await
        }
    }
}

/// CreateContainer, then StartContainer; the pod as the start answers it.
async fn add_container(
    mut client: PodServiceClient<Channel>,
    a: PodAddContainer,
    output: Output,
) -> anyhow::Result<()> {
    let pod_id = a.pod.clone();
    let name = a.name.clone();
    let request = CreateContainerRequest {
        pod_id: pod_id.clone(),
        container: Some(added_container_spec(a)),
    };
    client.create_container(request).await?;
    let request = StartContainerRequest {
        pod_id: pod_id.clone(),
        container_name: name.clone(),
    };
    let pod = match client.start_container(request).await {
        Ok(pod) => pod.into_inner(),
        Err(status) => {
            eprintln!(
                "nodectl: container {name} was added to {pod_id} (CREATED) but did not start; \
                 `nodectl pod container start {pod_id} {name}` retries"
            );
            return Err(status.into());
        }
    };
    emit(output, &pod, render::pod_detail)
}

/// The container to read or exec in: the one named, else the pod's only
/// container (a usage error when it has none or several).
async fn container_or_only(
    client: &mut PodServiceClient<Channel>,
    pod_id: &str,
    container: Option<String>,
) -> anyhow::Result<String> {
    if let Some(name) = container {
        return Ok(name);
    }
    let pod = client
        .get_pod(GetPodRequest {
            id: pod_id.to_string(),
        })
        .await?
        .into_inner();
    Ok(only_container(&pod)?)
}

/// The name of the pod's only container, else a usage error that names
/// them and asks for `-c`.
pub fn only_container(pod: &Pod) -> Result<String, UsageError> {
    let mut names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| c.name.as_str())
        .collect();
    if names.is_empty() {
        names = pod
            .status
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| c.name.as_str())
            .collect();
    }
    match names.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(UsageError(format!("pod {} has no containers", pod.id))),
        many => Err(UsageError(format!(
            "pod {} has {} containers ({}): pass -c NAME",
            pod.id,
            many.len(),
            many.join(", ")
        ))),
    }
}

/// The API's PodSpec from `pod run`'s flags: one container, named after
/// the pod unless --container-name says otherwise.
pub fn pod_spec(r: PodRun) -> PodSpec {
    let container_name = r.container_name.unwrap_or_else(|| r.name.clone());
    let amounts = |cpu: Option<u64>, memory: Option<u64>| {
        (cpu.is_some() || memory.is_some()).then(|| ResourceAmounts {
            cpu_millicores: cpu.unwrap_or(0),
            memory_bytes: memory.unwrap_or(0),
        })
    };
    let requests = amounts(r.cpu_request, r.memory_request);
    let limits = amounts(r.cpu_limit, r.memory_limit);
    let resources =
        (requests.is_some() || limits.is_some()).then_some(PodResources { requests, limits });
    let mut container = container_spec(container_name, r.container, None);
    if r.privileged {
        container
            .security
            .get_or_insert_with(Default::default)
            .privileged = true;
    }
    let asks_dns =
        !(r.dns_servers.is_empty() && r.dns_searches.is_empty() && r.dns_options.is_empty());
    let dns = asks_dns.then_some(PodDns {
        servers: r.dns_servers,
        searches: r.dns_searches,
        options: r.dns_options,
    });
    PodSpec {
        name: r.name,
        pool_id: r.pool.unwrap_or_default(),
        network: r.network.unwrap_or_default(),
        namespace: r.namespace.unwrap_or_default(),
        hostname: r.hostname.unwrap_or_default(),
        labels: label_map(r.label),
        port_mappings: r.ports,
        runtime_class: 0,
        resources,
        restart_policy: r.restart.map_or(0, |p| p as i32),
        containers: vec![container],
        dns,
        sysctls: r.sysctls.into_iter().collect(),
        privileged: r.privileged,
        host_users: r.host_users,
        host_network: r.host_network,
        host_ipc: r.host_ipc,
        host_pid: r.host_pid,
        share_process_namespace: r.share_process_namespace,
    }
}

/// The API's ContainerSpec from `pod add-container`'s flags.
pub fn added_container_spec(a: PodAddContainer) -> ContainerSpec {
    let limits = (a.cpu_limit.is_some() || a.memory_limit.is_some()).then(|| ResourceAmounts {
        cpu_millicores: a.cpu_limit.unwrap_or(0),
        memory_bytes: a.memory_limit.unwrap_or(0),
    });
    container_spec(a.name, a.container, limits)
}

/// `--command CMD -- ARGS`: CMD replaces the image's ENTRYPOINT, ARGS its
/// CMD.
fn container_spec(
    name: String,
    c: ContainerArgs,
    limits: Option<ResourceAmounts>,
) -> ContainerSpec {
    ContainerSpec {
        name,
        image: c.image,
        command: c.command.into_iter().collect(),
        args: c.args,
        env: c.env,
        working_dir: c.workdir.unwrap_or_default(),
        limits,
        security: security_context(&c.user, c.group_add, c.read_only, c.cap_add, c.cap_drop),
        mounts: c.volumes,
        ..Default::default()
    }
}

/// The security context the flags ask for; none when they ask nothing.
fn security_context(
    user: &Option<UserArg>,
    group_add: Vec<u32>,
    read_only: bool,
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
) -> Option<SecurityContext> {
    let asked = user.is_some()
        || !group_add.is_empty()
        || read_only
        || !cap_add.is_empty()
        || !cap_drop.is_empty();
    let (run_as_user, run_as_username, run_as_group) = user.clone().unwrap_or_default();
    asked.then(|| SecurityContext {
        run_as_user,
        run_as_username,
        run_as_group,
        supplemental_groups: group_add,
        readonly_rootfs: read_only,
        add_capabilities: cap_add,
        drop_capabilities: cap_drop,
        ..Default::default()
    })
}

/// Where `pod logs` writes a record and what: its message, and the newline
/// the log format dropped unless the record is part of a longer line.
pub fn log_output(record: &LogRecord) -> (LogStream, Vec<u8>) {
    let stream = match LogStream::try_from(record.stream) {
        Ok(LogStream::Stderr) => LogStream::Stderr,
        _ => LogStream::Stdout,
    };
    let mut bytes = record.message.clone();
    if !record.partial {
        bytes.push(b'\n');
    }
    (stream, bytes)
}

/// Writes `bytes` to stdout or stderr and flushes.
fn write_to(stream: LogStream, bytes: &[u8]) -> std::io::Result<()> {
    if stream == LogStream::Stderr {
        let mut err = std::io::stderr().lock();
        err.write_all(bytes)?;
        err.flush()
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()
    }
}

/// Copies a container's log: each record's message to stdout or stderr
/// as it was written (one JSON object per line with `-o json`), until the
/// agent ends the stream or the operator presses Ctrl-C.
async fn logs(
    mut client: PodServiceClient<Channel>,
    request: LogsRequest,
    output: Output,
) -> anyhow::Result<()> {
    let mut stream = client.logs(request).await?.into_inner();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            record = stream.message() => match record? {
                Some(record) => match output {
                    Output::Table => {
                        let (to, bytes) = log_output(&record);
                        write_to(to, &bytes)?;
                    }
                    Output::Json => print(&format!("{}\n", json::log_record(&record)?))?,
                },
                None => return Ok(()),
            },
            _ = &mut interrupted => return Ok(()),
        }
    }
}

/// Runs the command, prints what it wrote (stdout to stdout, stderr to
/// stderr; `-o json`: one object), and passes a non-zero exit code on as
/// [`CommandExit`].
async fn exec(
    mut client: PodServiceClient<Channel>,
    request: ExecSyncRequest,
    output: Output,
) -> anyhow::Result<()> {
    let resp = client.exec_sync(request).await?.into_inner();
    match output {
        Output::Table => {
            write_to(LogStream::Stdout, &resp.stdout)?;
            write_to(LogStream::Stderr, &resp.stderr)?;
        }
        Output::Json => print(&format!("{:#}\n", json::exec_result(&resp)?))?,
    }
    if resp.exit_code != 0 {
        return Err(CommandExit(resp.exit_code).into());
    }
    Ok(())
}

async fn network(
    mut client: NetworksClient<Channel>,
    cmd: NetworkCommand,
    output: Output,
) -> anyhow::Result<()> {
    let network = match cmd {
        NetworkCommand::Create(c) => {
            let spec = Some(network_spec(c));
            client.create(CreateNetworkRequest { spec }).await?
        }
        NetworkCommand::Get { name } => client.get(GetNetworkRequest { name }).await?,
        NetworkCommand::List => {
            let list = client.list(ListNetworksRequest {}).await?.into_inner();
            return emit(output, &list, |l| render::network_table(&l.networks));
        }
        NetworkCommand::Delete { name } => {
            client
                .delete(DeleteNetworkRequest { name: name.clone() })
                .await?;
            return deleted(output, "network", &name);
        }
    };
    emit(output, &network.into_inner(), render::network_detail)
}

/// The API's NetworkSpec from `network create`'s flags.
pub fn network_spec(c: NetworkCreate) -> NetworkSpec {
    NetworkSpec {
        name: c.name,
        cidr: c.cidr,
        bridge: c.bridge.unwrap_or_default(),
        nat: c.nat,
        namespaces: c.namespaces,
        nameservers: c.nameservers,
    }
}

fn certs_command(cmd: CertsCommand, default_dir: &Path, output: Output) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { dir, names } => certs_init(
            &dir.unwrap_or_else(|| default_dir.to_path_buf()),
            &names,
            output,
        ),
        CertsCommand::Issue {
            name,
            role,
            namespaces,
            days,
            ca_dir,
            out,
        } => {
            let ca_dir = ca_dir.unwrap_or_else(|| default_dir.to_path_buf());
            let spec = certs::ClientSpec {
                name,
                role: role.parse()?,
                namespaces,
                days,
            };
            let issued = certs::issue_client(&ca_dir, &spec)?;
            certs::write_client_dir(&ca_dir, &out, &issued)?;
            let c = &issued.claims;
            let not_after = issued
                .not_after
                .format(&time::format_description::well_known::Rfc3339)?;
            match output {
                Output::Table => print(&format!(
                    "issued {} ({}{}) serial {}, valid until {not_after}, in {}\n",
                    c.name,
                    c.role,
                    if c.namespaces.is_empty() {
                        String::new()
                    } else {
                        format!(" of {}", c.namespaces.join(", "))
                    },
                    c.serial,
                    out.display()
                )),
                Output::Json => print(&format!(
                    "{:#}\n",
                    serde_json::json!({
                        "name": c.name, "role": c.role.as_str(), "namespaces": c.namespaces,
                        "serial": c.serial, "notAfter": not_after, "dir": out.display().to_string(),
                    })
                )),
            }
        }
        CertsCommand::Revoke {
            files,
            mut serials,
            ca_dir,
        } => {
            let ca_dir = ca_dir.unwrap_or_else(|| default_dir.to_path_buf());
            if files.is_empty() && serials.is_empty() {
                anyhow::bail!("name a certificate file or --serial to revoke");
            }
            for file in &files {
                serials.push(certs::serial_of_file(file)?);
            }
            let list = certs::revoke(&ca_dir, &serials)?;
            match output {
                Output::Table => print(&format!(
                    "revoked {}; {} has {} revoked serial(s)\n",
                    serials.join(", "),
                    ca_dir.join(certs::CRL_FILE).display(),
                    list.serials.len()
                )),
                Output::Json => print(&format!(
                    "{:#}\n",
                    serde_json::json!({ "revoked": list.serials, "number": list.number })
                )),
            }
        }
    }
}

fn certs_init(dir: &Path, names: &[String], output: Output) -> anyhow::Result<()> {
    let pki = tls::generate_dev_pki(dir, names)?;
    match output {
        Output::Table if pki.created => print(&format!(
            "created a development CA, server and client certificate in {}\n",
            dir.display()
        )),
        Output::Table if pki.renewed => print(&format!(
            "kept the certificate set in {} and renewed the development admin certificate\n",
            dir.display()
        )),
        Output::Table => print(&format!(
            "kept the complete certificate set in {}\n",
            dir.display()
        )),
        Output::Json => print(&format!(
            "{:#}\n",
            serde_json::json!({ "dir": dir.display().to_string(), "created": pki.created, "renewed": pki.renewed })
        )),
    }
}

async fn image(
    cmd: ImageCommand,
    connect: impl FnOnce() -> anyhow::Result<Channel>,
    output: Output,
) -> anyhow::Result<()> {
    use stratum_api::proto::{
        GetImageRequest, ImportImageRequest, ListImagesRequest, RemoveImageRequest,
    };
    // Credentials are read before connecting: a usage problem is reported
    // without touching the agent.
    if let ImageCommand::Pull {
        reference,
        username,
        password_stdin,
        token,
        namespace,
    } = cmd
    {
        let auth = pull_auth(username, password_stdin, token)?;
        let client = ImageServiceClient::new(connect()?);
        let request = PullImageRequest {
            reference,
            auth,
            namespace: namespace.unwrap_or_default(),
        };
        return pull(client, request, output).await;
    }
    let mut client = ImageServiceClient::new(connect()?);
    match cmd {
        ImageCommand::Pull { .. } => unreachable!("handled above"),
        ImageCommand::Import { path, reference } => {
            let request = ImportImageRequest {
                path: absolute(&path)?,
                reference: reference.unwrap_or_default(),
            };
            let resp = client.import(request).await?.into_inner();
            emit(output, &resp, |r| render::image_table(&r.images))
        }
        ImageCommand::List => {
            let list = client.list(ListImagesRequest {}).await?.into_inner();
            emit(output, &list, |l| render::image_table(&l.images))
        }
        ImageCommand::Get { name } => {
            let image = client.get(GetImageRequest { name }).await?.into_inner();
            emit(output, &image, render::image_detail)
        }
        ImageCommand::Rm { name } => {
            let resp = client
                .remove(RemoveImageRequest { name: name.clone() })
                .await?
                .into_inner();
            match output {
                Output::Table => {
                    let id = resp.image.map(|i| i.id).unwrap_or_default();
                    print(&format!("removed image {name} ({id})\n"))
                }
                Output::Json => print(&format!(
                    "{:#}\n",
                    serde_json::json!({
                        "removed": json::to_value(&resp.image)?,
                    })
                )),
            }
        }
    }
}

/// The pull's credentials from the flags; the password is read from stdin
/// (one line; the trailing newline is not part of it).
fn pull_auth(
    username: Option<String>,
    password_stdin: bool,
    token: Option<String>,
) -> anyhow::Result<Option<Auth>> {
    use std::io::Read;
    if let Some(token) = token {
        return Ok(Some(Auth::BearerToken(token)));
    }
    let Some(username) = username else {
        return Ok(None);
    };
    if !password_stdin {
        return Err(UsageError("--username needs --password-stdin".into()).into());
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from stdin")?;
    let password = password.trim_end_matches(['\n', '\r']).to_string();
    Ok(Some(Auth::Basic(BasicAuth { username, password })))
}

/// Streams a pull's progress, then prints the image: text (a progress
/// bar at a terminal) or, with `-o json`, one JSON object per event.
async fn pull(
    mut client: ImageServiceClient<Channel>,
    request: PullImageRequest,
    output: Output,
) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let mut stream = client.pull(request).await?.into_inner();
    let mut bar = PullProgress::new(std::io::stdout().is_terminal());
    let mut pulled = None;
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(status) => {
                print(&bar.finish())?;
                return Err(status.into());
            }
        };
        match output {
            Output::Json => print(&format!("{}\n", json::to_value(&event)?))?,
            Output::Table => print(&bar.event(&event))?,
        }
        if let Some(pull_image_progress::Event::Image(image)) = event.event {
            pulled = Some(image);
        }
    }
    let image = pulled.ok_or_else(|| anyhow::anyhow!("the pull ended without an image"))?;
    if output == Output::Table {
        let name = image.references.first().cloned().unwrap_or_default();
        print(&format!("pulled {name} {}\n", image.id))?;
    }
    Ok(())
}
