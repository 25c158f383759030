//! nodectl's command line (clap derive). Values are parsed into the API's
//! types here, so a malformed size, role, `--disk` or `--port` is a usage
//! error (exit 2) before any connection is made.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use super::args::{
    parse_disk, parse_env, parse_ip, parse_ipv4_cidr, parse_label, parse_nic, parse_port,
    parse_restart, parse_role, parse_selector, parse_shares, parse_sysctl, parse_user,
    parse_volume, UserArg,
};
use super::size::{parse_memory_mib, parse_millicores, parse_size};
use stratum_api::proto::{
    DiskSpec, EnvVar, Mount, NicSpec, PortMapping, RestartPolicy, Shares, VmRole,
};

/// Where the agent listens by default (its `--listen` default).
pub const DEFAULT_ADDR: &str = "https://127.0.0.1:7443";
/// The agent's default certificate directory (`data/certs` under its
/// working directory, i.e. the repository when started by `make run`).
pub const DEFAULT_CERTS: &str = "data/certs";

/// Operator CLI for the Stratum node agent.
///
/// Talks to the agent over mTLS with the client certificate in --certs
/// (made by `nodectl certs init` or by the agent on first start).
#[derive(Debug, Parser)]
#[command(name = "nodectl", version, propagate_version = true)]
pub struct Cli {
    /// The agent's gRPC address (https://HOST:PORT; http:// or --insecure for plaintext).
    #[arg(long, global = true, env = "NODECTL_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Directory with ca.pem, client.pem and client.key. The default is
    /// the agent's default, relative to the current directory.
    #[arg(long, global = true, env = "NODECTL_CERTS", default_value = DEFAULT_CERTS)]
    pub certs: PathBuf,
    /// Plaintext h2c instead of mTLS; only to a loopback address, and the
    /// agent must run with --insecure-plaintext.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The messages as JSON (one object per line for streams).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The host: hardware, KVM, cgroups, capacity.
    #[command(subcommand)]
    Host(HostCommand),
    /// Resource pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Pods: containers run on the host, in the same pools as the VMs.
    #[command(subcommand)]
    Pod(PodCommand),
    /// Networks: host bridges with an IPv4 CIDR that VMs' NICs and pods
    /// attach to.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// VM snapshots (`vm snapshot` takes one, `vm clone` restores it).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// OCI images in the agent's store.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// CPUs, memory, KVM, cgroup version, versions.
    Info,
    /// Total, system reserve, reserved and unreserved CPU and memory.
    Capacity,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// The pool tree with reservations, limits, shares and usage; with
    /// --workloads, the inventory: every VM and pod beneath its pool.
    #[command(visible_alias = "ls")]
    List {
        /// Only this pool's subtree.
        #[arg(long)]
        root: Option<String>,
        /// The one inventory: each pool's VMs and pods indented beneath it,
        /// side by side (kind, id, state, reservation, limits), with the
        /// live CPU time and memory of every pool and running workload
        /// read from their cgroups.
        #[arg(long, short = 'w')]
        workloads: bool,
    },
    /// One pool in full.
    Get { id: String },
    /// Create a pool (defaults: no reservation, no limit, normal shares,
    /// expandable reservation as in vSphere, no quota).
    Create {
        name: String,
        /// Parent pool id [default: the root pool].
        #[arg(long)]
        parent: Option<String>,
        #[command(flatten)]
        settings: PoolSettings,
    },
    /// Change a pool: only the given settings change (the current spec is
    /// read, edited and written back).
    Update {
        id: String,
        /// New name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        settings: PoolSettings,
    },
    /// Delete an empty pool.
    Delete { id: String },
}

/// Allocation and quota flags shared by `pool create` and `pool update`.
#[derive(Debug, Clone, Default, Args)]
pub struct PoolSettings {
    /// Guaranteed CPU in millicores (500 or 500m).
    #[arg(long, value_name = "MILLICORES", value_parser = parse_millicores)]
    pub cpu_reservation: Option<u64>,
    /// CPU ceiling in millicores; 0 = unlimited.
    #[arg(long, value_name = "MILLICORES", value_parser = parse_millicores)]
    pub cpu_limit: Option<u64>,
    /// low | normal | high | a number (2..=262144).
    #[arg(long, value_name = "SHARES", value_parser = parse_shares)]
    pub cpu_shares: Option<Shares>,
    /// Guaranteed memory (512Mi, 2Gi, bytes).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub mem_reservation: Option<u64>,
    /// Memory ceiling; 0 = unlimited.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub mem_limit: Option<u64>,
    /// low | normal | high | a number.
    #[arg(long, value_name = "SHARES", value_parser = parse_shares)]
    pub mem_shares: Option<Shares>,
    /// Children may borrow reservation from ancestors (CPU and memory).
    #[arg(long, overrides_with = "no_expandable")]
    pub expandable: bool,
    /// Children's reservations must fit this pool's own.
    #[arg(long, overrides_with = "expandable")]
    pub no_expandable: bool,
    /// Most VMs in this pool and below; 0 = no cap.
    #[arg(long, value_name = "N")]
    pub max_vms: Option<u32>,
    /// Most vCPUs of the VMs in this pool and below; 0 = no cap.
    #[arg(long, value_name = "N")]
    pub max_vcpus: Option<u32>,
    /// Most pods in this pool and below; 0 = no cap.
    #[arg(long, value_name = "N")]
    pub max_pods: Option<u32>,
    /// Most memory ceilings in this pool and below (VMs' guest memory plus
    /// pods' memory limits); 0 = no cap.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,
}

impl PoolSettings {
    /// The expandable flag given, if any (the last of the pair wins).
    pub fn expandable(&self) -> Option<bool> {
        match (self.expandable, self.no_expandable) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Define a VM (it does not start).
    Create(Box<VmCreate>),
    /// VMs in name order, optionally filtered.
    #[command(visible_alias = "ls")]
    List {
        /// Only VMs directly in this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Only VMs of this role.
        #[arg(long, value_parser = parse_role)]
        role: Option<VmRole>,
        /// k=v,... : every label must match (repeatable).
        #[arg(long, value_parser = parse_selector)]
        selector: Vec<Vec<(String, String)>>,
    },
    /// One VM in full.
    Get { id: String },
    /// Admit and start a VM, then watch it for a moment: a guest that
    /// fails early (a kernel KVM cannot run) is reported as FAILED, with
    /// why, and exit status 1.
    Start {
        id: String,
        /// How long to watch after the start, in seconds (0: report the
        /// state the start returned).
        #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
        settle: f64,
    },
    /// Ask the guest to power off; stop it hard after the timeout.
    Stop {
        id: String,
        /// Grace period in seconds [default: the agent's, 30 s].
        #[arg(long, value_name = "SECONDS", default_value_t = 0)]
        timeout: u32,
    },
    /// Stop the VM's vmm process at once.
    Kill { id: String },
    /// Pause the vCPUs.
    Pause { id: String },
    /// Resume a paused VM.
    Resume { id: String },
    /// Remove a stopped VM and its disks.
    Delete { id: String },
    /// Stream the serial console to stdout until interrupted.
    Console {
        id: String,
        /// Start with the output the agent kept.
        #[arg(long)]
        history: bool,
    },
    /// Print lifecycle events as they happen, one per line.
    Watch {
        /// Only this VM.
        #[arg(long)]
        vm: Option<String>,
        /// Only VMs directly in this pool.
        #[arg(long)]
        pool: Option<String>,
    },
    /// Snapshot a running or paused VM (memory, devices, its disks); a
    /// running VM is paused meanwhile.
    Snapshot {
        id: String,
        /// The snapshot's name.
        name: String,
    },
    /// Instant Clone: new running VMs restored from a snapshot, each with
    /// its own name, disks, MACs and addresses.
    Clone {
        /// The snapshot's id.
        snapshot: String,
        /// The clone's name; with --count N, NAME-1 to NAME-N.
        name: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// k=v,... added to the snapshot's labels (repeatable).
        #[arg(long, value_parser = parse_selector)]
        label: Vec<Vec<(String, String)>>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshots in name order.
    #[command(visible_alias = "ls")]
    List {
        /// Only this VM's.
        #[arg(long)]
        vm: Option<String>,
    },
    /// One snapshot in full.
    Get { id: String },
    /// Remove a snapshot no running clone maps.
    Delete { id: String },
}

/// `vm create`'s spec. Relative paths are made absolute against nodectl's
/// working directory, since the agent resolves paths in its own.
#[derive(Debug, Clone, Args)]
pub struct VmCreate {
    pub name: String,
    /// Resource pool id [default: the root pool].
    #[arg(long)]
    pub pool: Option<String>,
    /// control-plane | etcd | worker.
    #[arg(long, value_parser = parse_role)]
    pub role: VmRole,
    /// vCPUs [default: the role's: 2].
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Guest RAM: MiB, or a size that is a whole number of MiB (2Gi)
    /// [default: the role's: etcd 2Gi, control-plane and worker 4Gi].
    #[arg(long, value_name = "MIB", value_parser = parse_memory_mib)]
    pub memory: Option<u64>,
    /// A VM image in the agent's store (`nodectl image list`): its kernel,
    /// initramfs and command line boot the VM, a copy of its disk is the
    /// VM's first disk.
    #[arg(long, value_name = "REF", required_unless_present = "kernel")]
    pub image: Option<String>,
    /// The root disk's size when made from --image: MiB or a whole-MiB size
    /// [default: the role's: etcd 10Gi, control-plane 20Gi, worker 40Gi].
    #[arg(long, value_name = "MIB", value_parser = parse_memory_mib, requires = "image")]
    pub root_disk: Option<u64>,
    /// For development, instead of --image: a guest kernel (vmlinux or
    /// bzImage), a path on the agent's host in one of its artifact
    /// directories (as are the initrd and disk bases).
    #[arg(long, conflicts_with = "image")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (with --kernel).
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: the image's, else the vmm's].
    #[arg(long)]
    pub cmdline: Option<String>,
    /// base=PATH[,ro][,serial=S][,size=MIB][,bw=SIZE][,iops=N] (repeatable;
    /// cloned copy-on-write, grown to size= when given; bw= bytes and iops=
    /// operations per second at most).
    #[arg(long, value_name = "SPEC", value_parser = parse_disk)]
    pub disk: Vec<DiskSpec>,
    /// network=NAME|tap=NAME[,mac=MAC][,ip=CIDR]...[,gw=IP][,dns=IP]...[,rx-bw=SIZE][,tx-bw=SIZE]
    /// (repeatable; mac= [default: generated]; rx-bw= and tx-bw= are bytes
    /// per second received and sent at most). network=: on a network
    /// (`nodectl network list`), which gives the guest its address, gateway
    /// and name servers in the cloud-init network-config; ip= is at most
    /// one IPv4 address of the network, bare or with its prefix [default:
    /// the next free one], and gw= and dns= are refused. tap=: a host TAP
    /// made beforehand (development); ip=, gw= and dns= are static
    /// addressing given to the guest by cloud-init, with --user-data.
    #[arg(long, value_name = "SPEC", value_parser = parse_nic)]
    pub nic: Vec<NicSpec>,
    /// k=v (repeatable).
    #[arg(long, value_name = "K=V", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
    /// CPU reservation in millicores [default: the role's].
    #[arg(long, value_name = "MILLICORES", value_parser = parse_millicores)]
    pub cpu_reservation: Option<u64>,
    /// CPU limit in millicores [default: vcpus x 1000].
    #[arg(long, value_name = "MILLICORES", value_parser = parse_millicores)]
    pub cpu_limit: Option<u64>,
    /// low | normal | high | a number [default: the role's: high for etcd
    /// and control-plane, normal for worker].
    #[arg(long, value_name = "SHARES", value_parser = parse_shares)]
    pub cpu_shares: Option<Shares>,
    /// Memory reservation, MiB or a whole-MiB size [default: all of
    /// --memory]; less overcommits the VM.
    #[arg(long, value_name = "MIB", value_parser = parse_memory_mib)]
    pub mem_reservation: Option<u64>,
    /// cloud-init user-data for the guest (read from FILE, `-` for stdin;
    /// at most 64 KiB), given to it on a NoCloud seed disk.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// k=v added to the seed's meta-data (repeatable; instance-id and
    /// local-hostname are the VM's id and name).
    #[arg(long, value_name = "K=V", value_parser = parse_label)]
    pub meta_data: Vec<(String, String)>,
    /// Also serve the cloud-init data from the VM's metadata service
    /// (169.254.169.254 on its first NIC, MMDS version 2).
    #[arg(long)]
    pub metadata_service: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry, showing progress.
    Pull {
        /// `[registry/]repository[:tag][@digest]`.
        reference: String,
        /// Registry user name (the password is read from stdin).
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the registry password (or access token) from stdin.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// A bearer token for the registry.
        #[arg(long, conflicts_with_all = ["username", "password_stdin"])]
        token: Option<String>,
        /// The namespace the image is for: its callers see it, its pods
        /// run it [default: yours if you have one; an admin's: the host].
        #[arg(long, value_name = "POOL")]
        namespace: Option<String>,
    },
    /// Import an OCI layout or `docker save` archive (a path on the
    /// agent's host, in one of its artifact directories; relative paths
    /// are made absolute here).
    Import {
        path: PathBuf,
        /// Name the imported image this (single-image sources only).
        #[arg(long)]
        reference: Option<String>,
    },
    /// Stored images.
    #[command(visible_alias = "ls")]
    List,
    /// One image in full (by reference, manifest digest or id).
    Get { name: String },
    /// Remove an image and all its names.
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Run a pod of one container and answer it once its container is
    /// started (add more with `pod add-container`).
    Run(Box<PodRun>),
    /// Add a container to a running pod and start it.
    AddContainer(Box<PodAddContainer>),
    /// Pods by namespace and name, optionally filtered.
    #[command(visible_alias = "ls")]
    List {
        /// Only pods directly in this pool.
        #[arg(long)]
        pool: Option<String>,
        /// k=v,... : every label must match (repeatable).
        #[arg(long, value_parser = parse_selector)]
        selector: Vec<Vec<(String, String)>>,
    },
    /// One pod in full, with each container's state, exit code, restarts
    /// and pid.
    Get { id: String },
    /// Stop every container (SIGTERM, then SIGKILL after the grace period)
    /// and release the pod's reservation and address; it cannot start
    /// again.
    Stop {
        id: String,
        /// Seconds between SIGTERM and SIGKILL; 0 = SIGKILL at once
        /// [default: the agent's, 30 s].
        #[arg(long, value_name = "SECONDS")]
        grace: Option<u32>,
    },
    /// Remove a stopped pod: its containers, logs and record.
    #[command(visible_aliases = ["remove", "delete"])]
    Rm { id: String },
    /// A container's log: the output of all its runs, each record's
    /// message written raw to stdout or stderr as the container wrote it
    /// (`-o json`: one object per record).
    Logs {
        id: String,
        /// The container [default: the pod's only container].
        #[arg(short = 'c', long = "container", value_name = "NAME")]
        container: Option<String>,
        /// Keep printing new records until the container ends or Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Start with the last N records (0: only new ones, with -f).
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
    },
    /// Run a command in a running container (not through a shell, stdin
    /// empty) and print its output; nodectl exits with the command's exit
    /// status.
    Exec {
        id: String,
        /// The container [default: the pod's only container].
        #[arg(short = 'c', long = "container", value_name = "NAME")]
        container: Option<String>,
        /// Seconds before the command is killed (DEADLINE_EXCEEDED)
        /// [default: the agent's, 60 s].
        #[arg(
            long,
            value_name = "SECONDS",
            default_value_t = 0,
            hide_default_value = true
        )]
        timeout: u32,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Live CPU time and memory of a running pod and of each container.
    Stats { id: String },
    /// Start, stop or remove one container of a pod.
    #[command(subcommand)]
    Container(PodContainerCommand),
}

/// What a container runs, shared by `pod run` and `pod add-container`.
#[derive(Debug, Clone, Args)]
pub struct ContainerArgs {
    /// Image in the agent's store: a reference, manifest digest or image
    /// id (`nodectl image pull` or `import` it first).
    #[arg(long)]
    pub image: String,
    /// The program to run, replacing the image's ENTRYPOINT (the image's
    /// CMD is then dropped: give its arguments after `--`).
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// NAME=VALUE added to the image's environment (repeatable, in order).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<EnvVar>,
    /// Absolute working directory [default: the image's WORKDIR, else /].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as USER[:GID]: a uid or a name from the image's /etc/passwd,
    /// and a group id [default: the image's USER].
    #[arg(long, value_name = "USER[:GID]", value_parser = parse_user)]
    pub user: Option<UserArg>,
    /// A supplementary group id (repeatable).
    #[arg(long = "group-add", value_name = "GID")]
    pub group_add: Vec<u32>,
    /// Mount the root file system read-only.
    #[arg(long)]
    pub read_only: bool,
    /// A capability to add (NET_ADMIN, ALL; repeatable): beyond the default
    /// set only where the agent's pod security level is privileged.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// A capability to drop (NET_BIND_SERVICE, ALL; repeatable).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Bind a host path: HOST:CONTAINER[:ro] (repeatable); below the
    /// agent's mount roots unless its pod security level is privileged.
    #[arg(long = "volume", short = 'v', value_name = "HOST:CONTAINER[:ro]", value_parser = parse_volume)]
    pub volumes: Vec<Mount>,
    /// Arguments after `--`, replacing the image's CMD.
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// `pod run`: the pod's spec with one container.
#[derive(Debug, Clone, Args)]
pub struct PodRun {
    /// The pod's name, unique in its namespace (a DNS label).
    pub name: String,
    #[command(flatten)]
    pub container: ContainerArgs,
    /// The container's name [default: the pod's name].
    #[arg(long, value_name = "NAME")]
    pub container_name: Option<String>,
    /// A DNS server for the pod's /etc/resolv.conf (repeatable, at most 3)
    /// [default: each image's own resolv.conf].
    #[arg(long = "dns", value_name = "IP")]
    pub dns_servers: Vec<String>,
    /// A DNS search domain (repeatable).
    #[arg(long = "dns-search", value_name = "DOMAIN")]
    pub dns_searches: Vec<String>,
    /// A resolver option such as ndots:2 (repeatable).
    #[arg(long = "dns-option", value_name = "OPTION")]
    pub dns_options: Vec<String>,
    /// A privileged pod whose container is privileged: host root, every
    /// capability, no seccomp filter (the agent's pod security level must
    /// be privileged).
    #[arg(long)]
    pub privileged: bool,
    /// Share the host's user namespace instead of one of the pod's own
    /// (honoured where the agent's pod security level is privileged).
    #[arg(long)]
    pub host_users: bool,
    /// Use the host's network (and hostname) instead of an address of the
    /// pod's own (privileged level; --port only as N:N).
    #[arg(long)]
    pub host_network: bool,
    /// Use the host's IPC namespace and /dev/shm (privileged level).
    #[arg(long)]
    pub host_ipc: bool,
    /// Use the host's PID namespace (privileged level).
    #[arg(long)]
    pub host_pid: bool,
    /// One PID namespace for all the pod's containers, with the pod's init
    /// as PID 1 (Kubernetes' shareProcessNamespace; the pod then has no
    /// user namespace of its own).
    #[arg(long)]
    pub share_process_namespace: bool,
    /// A sysctl of the pod's network or IPC namespace, NAME=VALUE
    /// (repeatable).
    #[arg(long = "sysctl", value_name = "NAME=VALUE", value_parser = parse_sysctl)]
    pub sysctls: Vec<(String, String)>,
    /// Resource pool id [default: the root pool].
    #[arg(long)]
    pub pool: Option<String>,
    /// Network isolation namespace: always the id of the pod's top-level
    /// pool; naming another is refused.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Host name inside the pod [default: the pod's name].
    #[arg(long)]
    pub hostname: Option<String>,
    /// The network the pod is on (`nodectl network list`); it must admit
    /// the pod's namespace [default: default, the pods' network].
    #[arg(long, value_name = "NAME")]
    pub network: Option<String>,
    /// CPU the pod reserves in its pool, millicores (250 or 250m)
    /// [default: none].
    #[arg(long, value_name = "MILLICORES", value_parser = parse_millicores)]
    pub cpu_request: Option<u64>,
    /// Memory the pod reserves in its pool (64Mi, 1Gi) [default: none].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_request: Option<u64>,
    /// CPU ceiling of the pod's cgroup, millicores [default: none].
    #[arg(long, value_name = "MILLICORES", value_parser = parse_millicores)]
    pub cpu_limit: Option<u64>,
    /// Memory ceiling of the pod's cgroup [default: none; required under
    /// a memory quota].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,
    /// [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp], a host port
    /// forwarded to the pod (repeatable; e.g. 8080:80).
    #[arg(long = "port", value_name = "MAPPING", value_parser = parse_port)]
    pub ports: Vec<PortMapping>,
    /// never | on-failure | always [default: never].
    #[arg(long, value_name = "POLICY", value_parser = parse_restart)]
    pub restart: Option<RestartPolicy>,
    /// k=v (repeatable).
    #[arg(long, value_name = "K=V", value_parser = parse_label)]
    pub label: Vec<(String, String)>,
}

/// `pod add-container`: one more container in a running pod.
#[derive(Debug, Clone, Args)]
pub struct PodAddContainer {
    /// The pod's id.
    pub pod: String,
    /// The container's name, unique in the pod (a DNS label).
    pub name: String,
    #[command(flatten)]
    pub container: ContainerArgs,
    /// CPU ceiling of the container's cgroup, millicores, at most the
    /// pod's [default: the pod's].
    #[arg(long, value_name = "MILLICORES", value_parser = parse_millicores)]
    pub cpu_limit: Option<u64>,
    /// Memory ceiling of the container's cgroup, at most the pod's
    /// [default: the pod's].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory_limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum PodContainerCommand {
    /// Start a created container, or an ended one afresh.
    Start {
        /// The pod's id.
        pod: String,
        /// The container's name.
        name: String,
    },
    /// Stop a running container (SIGTERM, then SIGKILL after the grace
    /// period); the restart policy does not restart it.
    Stop {
        /// The pod's id.
        pod: String,
        /// The container's name.
        name: String,
        /// Seconds between SIGTERM and SIGKILL; 0 = SIGKILL at once
        /// [default: the agent's, 30 s].
        #[arg(long, value_name = "SECONDS")]
        grace: Option<u32>,
    },
    /// Remove a container that is not running, and its log.
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        /// The pod's id.
        pod: String,
        /// The container's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Make a network: a host bridge holding the CIDR's first address (the
    /// gateway), the rules that keep its namespaces apart, and with --nat
    /// masquerading to the host's uplink.
    Create(NetworkCreate),
    /// Networks in name order (those you may use or read).
    #[command(visible_alias = "ls")]
    List,
    /// One network in full, with every VM NIC and pod on it.
    Get { name: String },
    /// Remove a network nothing is attached to (a VM, running or not, or a
    /// pod on it is FAILED_PRECONDITION).
    #[command(visible_alias = "rm")]
    Delete { name: String },
}

/// `network create`'s spec.
#[derive(Debug, Clone, Args)]
pub struct NetworkCreate {
    /// The network's name, unique on the host (a DNS label).
    pub name: String,
    /// IPv4 CIDR, /8 to /30 (10.20.0.0/24); its first address is the
    /// gateway, on the host's bridge.
    #[arg(long, value_name = "CIDR", value_parser = parse_ipv4_cidr)]
    pub cidr: String,
    /// The host bridge, at most 15 characters [default: st- and the name].
    #[arg(long, value_name = "NAME")]
    pub bridge: Option<String>,
    /// Masquerade traffic leaving for the host's uplink behind the host's
    /// own address.
    #[arg(long)]
    pub nat: bool,
    /// A namespace (top-level pool id) whose VMs and pods may attach
    /// (repeatable) [default: every namespace, which only an admin may
    /// make].
    #[arg(long = "namespace", value_name = "POOL")]
    pub namespaces: Vec<String>,
    /// A name server the network's VMs are given (repeatable) [default:
    /// none].
    #[arg(long = "nameserver", value_name = "IP", value_parser = parse_ip)]
    pub nameservers: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a development CA, server and client certificate (kept if a
    /// complete set exists).
    Init {
        /// Where to write them [default: --certs].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Extra DNS name or IP for the server certificate (repeatable);
        /// localhost, 127.0.0.1 and ::1 are always included.
        #[arg(long = "name", value_name = "HOST")]
        names: Vec<String>,
    },
    /// Issue a client certificate, signed by the agent's CA, for one
    /// caller: its name, role and namespaces.
    Issue {
        /// The caller's name (the certificate's common name).
        name: String,
        /// admin (everything), user (its namespaces), viewer (reads only:
        /// its namespaces, or everything without --namespace).
        #[arg(long)]
        role: String,
        /// A namespace (top-level pool id) the caller is confined to
        /// (repeatable; a user needs one).
        #[arg(long = "namespace", value_name = "POOL")]
        namespaces: Vec<String>,
        /// Lifetime in days (1-365).
        #[arg(long, default_value_t = stratum_api::certs::DEFAULT_DAYS)]
        days: u32,
        /// The directory with the CA's certificate and key [default: --certs].
        #[arg(long)]
        ca_dir: Option<PathBuf>,
        /// A new directory for the caller: ca.pem, client.pem, client.key
        /// (what its nodectl takes as --certs).
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke client certificates: the agent refuses them from the next
    /// call on.
    Revoke {
        /// Client certificate files (PEM) to revoke.
        files: Vec<PathBuf>,
        /// Serial numbers to revoke (hex, as `certs issue` prints them).
        #[arg(long = "serial", value_name = "HEX")]
        serials: Vec<String>,
        /// The directory with the CA's certificate and key [default: --certs].
        #[arg(long)]
        ca_dir: Option<PathBuf>,
    },
}
