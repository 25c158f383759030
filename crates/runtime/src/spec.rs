//! The OCI runtime spec (`config.json`) of one container, built with
//! oci-spec.
//!
//! What goes in, and why:
//! - **process**: args, env, cwd, uid/gid and groups, a terminal only
//!   when asked (else stdio is pipes to the log writer, see
//!   `log_writer`; with one, `TERM=xterm`), the capabilities of its
//!   [`Confinement`] (by default Docker's set minus `CAP_NET_RAW`;
//!   bounding, effective, permitted; inheritable and ambient empty),
//!   `noNewPrivileges` unless the security context allows escalation,
//!   `RLIMIT_NOFILE` 1024 as containerd sets it, the OOM score adjustment
//!   when one is asked for.
//! - **root**: the overlay mount point (see `rootfs`).
//! - **hostname**: the pod's; the UTS namespace joined already carries it,
//!   the runtime sets the same value again.
//! - **mounts**: proc, sysfs (read-only), a tmpfs `/dev`, devpts,
//!   `/dev/shm` (the pod's shared tmpfs bound in, or a private tmpfs) and
//!   mqueue — the runtime's usual set, minus a cgroup mount.
//! - **namespaces**: network, IPC and UTS joined by path (the pod sandbox's
//!   pinned files, or the host's); PID (unless the pod has the host's) and
//!   mount namespaces new per container.
//! - **linux.resources**: the effective limits of the container's cgroup
//!   (see `resources`), and a deny-all device rule (the runtime adds its
//!   default device nodes' rules).
//! - **linux.rootfsPropagation**: `rslave` or `rshared` when a bind mount
//!   propagates so (else the runtime's `rprivate` root cuts it off).
//! - **linux.cgroupsPath**: the container's cgroup below its pod, named as
//!   the runtime resolves it (see `cgpath`).
//! - **maskedPaths / readonlyPaths**: containerd's and runc's defaults,
//!   and whatever more the security context names (never fewer).
//! - **linux.seccomp**: Docker's default profile for the capabilities
//!   above (see `seccomp`), unless the confinement says unconfined (which
//!   only the agent's `privileged` pod security level lets a caller ask).

use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use super::confinement::Confinement;
use super::error::{Result, RuntimeError};
use super::idmap::IdMap;
use super::resources::OciResources;
use super::sandbox::SandboxNamespaces;
use super::seccomp::{self, KernelVersion};

/// OCI runtime spec version written (understood by crun 1.x and runc 1.x).
pub const OCI_VERSION: &str = "1.0.2";

/// Docker's default capabilities (moby `oci/caps/defaults.go`) without
/// `CAP_NET_RAW`: raw and packet sockets let a container forge packets on
/// the pod network (ARP and address spoofing) and reach kernel code few
/// services need (CVE-2020-14386, an AF_PACKET memory corruption, needed
/// only this capability). Kubernetes' restricted Pod Security Standard
/// drops it too.
pub const DEFAULT_CAPABILITIES: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths hidden from the container (containerd's and runc's defaults).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in the container (containerd's defaults).
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Open files limit of the container process (soft = hard), as containerd.
pub const DEFAULT_NOFILE: u64 = 1024;

/// The container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Command and arguments; `args[0]` is looked up in the container's
    /// `PATH` by the runtime.
    pub args: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// Absolute working directory inside the container.
    pub cwd: PathBuf,
    /// User id the process runs as.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
    /// `/proc/PID/oom_score_adj` (-1000..=1000); `None`: inherited.
    pub oom_score_adj: Option<i32>,
    /// Run on a terminal the runtime makes (its stdin, stdout and
    /// stderr), with `TERM=xterm` unless `env` sets `TERM`.
    pub terminal: bool,
}

impl ProcessConfig {
    /// `args` as root in `/` with a default `PATH`.
    pub fn new(args: Vec<String>) -> ProcessConfig {
        ProcessConfig {
            args,
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
            ],
            cwd: PathBuf::from("/"),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            oom_score_adj: None,
            terminal: false,
        }
    }

    /// Refuses what the runtime would refuse later with a vaguer message.
    pub fn validate(&self) -> Result<()> {
        if self.args.is_empty() || self.args[0].is_empty() {
            return Err(RuntimeError::invalid(
                "process args",
                format!("{:?}", self.args),
                "no command",
            ));
        }
        if let Some(bad) = self
            .env
            .iter()
            .find(|e| !e.contains('=') || e.starts_with('='))
        {
            return Err(RuntimeError::invalid(
                "environment entry",
                bad.as_str(),
                "not KEY=value",
            ));
        }
        if !self.cwd.is_absolute() {
            return Err(RuntimeError::invalid(
                "working directory",
                self.cwd.to_string_lossy(),
                "not absolute",
            ));
        }
        if let Some(adj) = self.oom_score_adj.filter(|a| !(-1000..=1000).contains(a)) {
            return Err(RuntimeError::invalid(
                "oom_score_adj",
                adj.to_string(),
                "not in -1000..=1000",
            ));
        }
        let has_nul = self.args.iter().chain(&self.env).any(|s| s.contains('\0'));
        if has_nul {
            return Err(RuntimeError::invalid(
                "process args or env",
                "",
                "contain NUL",
            ));
        }
        Ok(())
    }
}

/// Everything one container's spec is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecConfig {
    /// The process to run.
    pub process: ProcessConfig,
    /// The root file system directory (`root.path`).
    pub rootfs: PathBuf,
    /// Mount the root read-only.
    pub readonly_rootfs: bool,
    /// Hostname (the pod's).
    pub hostname: Option<String>,
    /// The pod's namespaces to join.
    pub namespaces: SandboxNamespaces,
    /// The pod's shared shm directory; `None` gives a private tmpfs.
    pub shm: Option<PathBuf>,
    /// Resource settings (the cgroup's effective limits).
    pub resources: OciResources,
    /// `linux.cgroupsPath` (see `cgpath`).
    pub cgroups_path: String,
    /// A new user namespace with this mapping (see `idmap`); `None`: the
    /// host's.
    pub idmap: Option<IdMap>,
    /// Capabilities, seccomp, `noNewPrivileges`, masked and read-only
    /// paths.
    pub confinement: Confinement,
    /// Host paths bound in, after the defaults (one on a default's
    /// destination replaces it).
    pub bind_mounts: Vec<BindMount>,
}

/// A host path bound into the container: a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Absolute host path, already resolved and authorized by the caller.
    pub source: PathBuf,
    /// Absolute path in the container.
    pub destination: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
    /// How mounts below it propagate.
    pub propagation: Propagation,
}

/// Mount propagation of a bind mount (Kubernetes' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Neither way (`rprivate`).
    #[default]
    Private,
    /// Host mounts below the source appear in the container (`rslave`).
    HostToContainer,
    /// Both ways (`rshared`).
    Bidirectional,
}

impl BindMount {
    /// Refuses what no runtime mounts sensibly.
    pub fn validate(&self) -> Result<()> {
        for (what, path) in [
            ("mount source", &self.source),
            ("mount destination", &self.destination),
        ] {
            let text = path.to_string_lossy();
            if !path.is_absolute() || text.contains('\0') {
                return Err(RuntimeError::invalid(what, text, "not an absolute path"));
            }
        }
        let escapes = self
            .destination
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
        if escapes || self.destination == Path::new("/") {
            return Err(RuntimeError::invalid(
                "mount destination",
                self.destination.to_string_lossy(),
                "must name a path below / without `..`",
            ));
        }
        Ok(())
    }

    fn to_oci(&self) -> Result<Mount> {
        let propagation = match self.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        };
        let access = if self.readonly { "ro" } else { "rw" };
        Ok(MountBuilder::default()
            .destination(self.destination.clone())
            .typ("bind")
            .source(self.source.clone())
            .options(vec!["rbind".to_string(), propagation.into(), access.into()])
            .build()?)
    }
}

/// Builds the spec.
pub fn build(config: &SpecConfig) -> Result<Spec> {
    config.process.validate()?;
    let confinement = &config.confinement;
    confinement.validate()?;
    let caps: Capabilities = confinement.capabilities.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;
    let p = &config.process;
    let user = UserBuilder::default()
        .uid(p.uid)
        .gid(p.gid)
        .additional_gids(p.additional_gids.clone())
        .build()?;
    let mut process = ProcessBuilder::default();
    if let Some(adj) = p.oom_score_adj {
        process = process.oom_score_adj(adj);
    }
    let mut env = p.env.clone();
    if p.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        // What containerd gives a container with a terminal.
        env.push("TERM=xterm".to_string());
    }
    let process = process
        .terminal(p.terminal)
        .user(user)
        .args(p.args.clone())
        .env(env)
        .cwd(p.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(confinement.no_new_privileges)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(DEFAULT_NOFILE)
            .hard(DEFAULT_NOFILE)
            .build()?])
        .build()?;
    let root = RootBuilder::default()
        .path(config.rootfs.clone())
        .readonly(config.readonly_rootfs)
        .build()?;
    let mut namespaces = namespaces(&config.namespaces)?;
    let mut linux = LinuxBuilder::default();
    if let Some(map) = config.idmap {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()?,
        );
        let mapping = LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(map.host)
            .size(map.size)
            .build()?;
        linux = linux
            .uid_mappings(vec![mapping])
            .gid_mappings(vec![mapping]);
    }
    let mut linux = linux
        .namespaces(namespaces)
        .resources(resources(&config.resources)?)
        .cgroups_path(PathBuf::from(&config.cgroups_path))
        .masked_paths(confinement.all_masked_paths())
        .readonly_paths(confinement.all_readonly_paths());
    if let Some(propagation) = rootfs_propagation(&config.bind_mounts) {
        linux = linux.rootfs_propagation(propagation);
    }
    if confinement.seccomp {
        linux = linux.seccomp(match &confinement.seccomp_profile {
            Some(profile) => profile.clone(),
            None => seccomp::default_profile(&confinement.capabilities, KernelVersion::host())?,
        });
    }
    let linux = linux.build()?;
    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .process(process)
        .root(root)
        .mounts(with_binds(
            mounts(
                config.shm.as_deref(),
                config.idmap.is_some(),
                config.confinement.privileged,
            )?,
            &config.bind_mounts,
        )?)
        .linux(linux)
        .build()?;
    // In a user namespace the container may not set the hostname of the
    // pod's UTS namespace (the host's user namespace owns it); the sandbox
    // set it already.
    spec.set_hostname(match config.idmap {
        None => config.hostname.clone(),
        Some(_) => None,
    });
    spec.set_annotations(None);
    Ok(spec)
}

/// The root's propagation a bind mount's needs, as containerd sets it:
/// the runtimes make the container's root `rprivate` by default, which
/// would cut a `rslave` or `rshared` bind mount off from the host.
fn rootfs_propagation(binds: &[BindMount]) -> Option<&'static str> {
    let most = binds
        .iter()
        .map(|b| b.propagation)
        .max_by_key(|p| match p {
            Propagation::Private => 0,
            Propagation::HostToContainer => 1,
            Propagation::Bidirectional => 2,
        })?;
    match most {
        Propagation::Private => None,
        Propagation::HostToContainer => Some("rslave"),
        Propagation::Bidirectional => Some("rshared"),
    }
}

/// The default mounts with the bind mounts after them; a default whose
/// destination a bind mount takes is left out.
fn with_binds(defaults: Vec<Mount>, binds: &[BindMount]) -> Result<Vec<Mount>> {
    let mut all: Vec<Mount> = defaults
        .into_iter()
        .filter(|m| !binds.iter().any(|b| &b.destination == m.destination()))
        .collect();
    for bind in binds {
        bind.validate()?;
        all.push(bind.to_oci()?);
    }
    Ok(all)
}

/// Writes `spec` as `<bundle>/config.json` (via a temporary file renamed
/// into place, so a crash never leaves half a spec).
pub fn write_config(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let path = bundle.join("config.json");
    let tmp = bundle.join("config.json.tmp");
    let json = serde_json::to_vec_pretty(spec)
        .map_err(|e| RuntimeError::io(&path, "serialize spec")(std::io::Error::other(e)))?;
    fs::write(&tmp, json).map_err(RuntimeError::io(&tmp, "write"))?;
    fs::rename(&tmp, &path).map_err(RuntimeError::io(&path, "rename into place"))?;
    Ok(path)
}

fn namespaces(shared: &SandboxNamespaces) -> Result<Vec<LinuxNamespace>> {
    let joined = |typ, path: &Path| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .path(path.to_path_buf())
            .build()
    };
    let new = |typ| LinuxNamespaceBuilder::default().typ(typ).build();
    let pid = match &shared.pid {
        Some(path) => joined(LinuxNamespaceType::Pid, path)?,
        None => new(LinuxNamespaceType::Pid)?,
    };
    Ok(vec![
        pid,
        new(LinuxNamespaceType::Mount)?,
        joined(LinuxNamespaceType::Network, &shared.net)?,
        joined(LinuxNamespaceType::Ipc, &shared.ipc)?,
        joined(LinuxNamespaceType::Uts, &shared.uts)?,
    ])
}

fn resources(r: &OciResources) -> Result<oci_spec::runtime::LinuxResources> {
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?;
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(shares) = r.cpu_shares {
        cpu = cpu.shares(shares);
    }
    if let Some(quota) = r.cpu_quota_us {
        cpu = cpu.quota(quota);
    }
    if let Some(period) = r.cpu_period_us {
        cpu = cpu.period(period);
    }
    let mut memory = LinuxMemoryBuilder::default();
    if let Some(limit) = r.memory_limit_bytes {
        memory = memory.limit(limit);
    }
    let mut builder = LinuxResourcesBuilder::default()
        .devices(vec![deny_all])
        .cpu(cpu.build()?)
        .memory(memory.build()?);
    if let Some(limit) = r.pids_limit {
        builder = builder.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    if !r.unified.is_empty() {
        builder = builder.unified(r.unified.clone());
    }
    Ok(builder.build()?)
}

fn mount(destination: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount> {
    Ok(MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source.to_path_buf())
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The container's mounts. In a user namespace, what only the owner of
/// the pod's IPC and network namespaces (the host's user namespace) may
/// mount is left out or bound instead: no `/dev/mqueue` (POSIX message
/// queues still work through `mq_open`, which needs no mount), and `/sys`
/// a read-only bind of the host's (as runc and crun do for rootless
/// containers; a new sysfs would need to own the network namespace).
fn mounts(shm: Option<&Path>, in_userns: bool, privileged: bool) -> Result<Vec<Mount>> {
    let sys_access = if privileged { "rw" } else { "ro" };
    let shm_mount = match shm {
        Some(dir) => mount(
            "/dev/shm",
            "bind",
            dir,
            &["rbind", "nosuid", "noexec", "nodev", "rw"],
        )?,
        None => mount(
            "/dev/shm",
            "tmpfs",
            Path::new("shm"),
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
    };
    let mut all = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        shm_mount,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", sys_access],
        )?,
    ];
    if in_userns {
        all.retain(|m| {
            m.destination() != Path::new("/dev/mqueue") && m.destination() != Path::new("/sys")
        });
        all.push(mount(
            "/sys",
            "bind",
            Path::new("/sys"),
            &["rbind", "nosuid", "noexec", "nodev", "ro"],
        )?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SpecConfig {
        SpecConfig {
            process: ProcessConfig::new(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]),
            rootfs: PathBuf::from("/var/lib/stratum/ctr/rootfs"),
            readonly_rootfs: false,
            hostname: Some("pod-7".into()),
            namespaces: SandboxNamespaces {
                net: PathBuf::from("/run/netns/pod-7"),
                ipc: PathBuf::from("/p/ns/ipc"),
                uts: PathBuf::from("/p/ns/uts"),
                pid: None,
            },
            shm: Some(PathBuf::from("/p/shm")),
            resources: OciResources {
                cpu_shares: Some(512),
                cpu_quota_us: Some(50_000),
                cpu_period_us: Some(100_000),
                memory_limit_bytes: Some(32 << 20),
                pids_limit: None,
                unified: Default::default(),
            },
            cgroups_path: "/stratum/pool-1/pod-7/ctr-1".into(),
            idmap: None,
            confinement: Confinement::default(),
            bind_mounts: Vec::new(),
        }
    }

    #[test]
    fn runtime_spec_json_has_the_essentials() {
        let spec = build(&config()).expect("spec");
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["ociVersion"], OCI_VERSION);
        assert_eq!(json["process"]["terminal"], false);
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["process"]["args"][2], "echo hi");
        assert_eq!(json["root"]["path"], "/var/lib/stratum/ctr/rootfs");
        assert_eq!(json["hostname"], "pod-7");
        let linux = &json["linux"];
        assert_eq!(linux["cgroupsPath"], "/stratum/pool-1/pod-7/ctr-1");
        assert_eq!(linux["resources"]["cpu"]["shares"], 512);
        assert_eq!(linux["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(linux["resources"]["cpu"]["period"], 100_000);
        assert_eq!(linux["resources"]["memory"]["limit"], 32 << 20);
        assert_eq!(linux["resources"]["devices"][0]["allow"], false);
        let ns = linux["namespaces"].as_array().expect("namespaces");
        let find = |t: &str| ns.iter().find(|n| n["type"] == t).cloned();
        assert_eq!(find("pid").expect("pid").get("path"), None);
        assert_eq!(find("mount").expect("mount").get("path"), None);
        assert_eq!(find("network").expect("net")["path"], "/run/netns/pod-7");
        assert_eq!(find("ipc").expect("ipc")["path"], "/p/ns/ipc");
        assert_eq!(find("uts").expect("uts")["path"], "/p/ns/uts");
        assert!(find("cgroup").is_none());
        let caps = json["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("caps");
        assert_eq!(caps.len(), 13);
        assert!(caps.iter().any(|c| c == "CAP_NET_BIND_SERVICE"));
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert!(!caps.iter().any(|c| c == "CAP_NET_RAW"));
        let mounts = json["mounts"].as_array().expect("mounts");
        let dests: Vec<&str> = mounts
            .iter()
            .filter_map(|m| m["destination"].as_str())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys"
            ]
        );
        assert_eq!(mounts[3]["source"], "/p/shm");
        assert!(mounts[5]["options"]
            .as_array()
            .expect("opts")
            .iter()
            .any(|o| o == "ro"));
        assert!(linux["maskedPaths"]
            .as_array()
            .expect("masked")
            .iter()
            .any(|p| p == "/proc/kcore"));
        assert!(linux["readonlyPaths"]
            .as_array()
            .expect("ro")
            .iter()
            .any(|p| p == "/proc/sys"));
    }

    #[test]
    fn runtime_spec_carries_the_seccomp_profile() {
        let json = serde_json::to_value(build(&config()).expect("spec")).expect("json");
        let profile = &json["linux"]["seccomp"];
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(profile["defaultErrnoRet"], libc::EPERM);
        assert_eq!(profile["architectures"][0], "SCMP_ARCH_X86_64");
        let rules = profile["syscalls"].as_array().expect("syscalls");
        let allowed = |name: &str| {
            rules.iter().any(|r| {
                r["action"] == "SCMP_ACT_ALLOW"
                    && r.get("args").is_none()
                    && r["names"]
                        .as_array()
                        .expect("names")
                        .iter()
                        .any(|n| n == name)
            })
        };
        let named = |name: &str| {
            rules.iter().any(|r| {
                r["names"]
                    .as_array()
                    .expect("names")
                    .iter()
                    .any(|n| n == name)
            })
        };
        for name in ["read", "write", "execve", "openat", "futex", "chroot"] {
            assert!(allowed(name), "{name} allowed");
        }
        // Not named at all: the default action (EPERM) answers.
        for name in [
            "unshare",
            "mount",
            "umount2",
            "setns",
            "pivot_root",
            "bpf",
            "keyctl",
        ] {
            assert!(!named(name), "{name} refused");
        }
        let clone: Vec<_> = rules
            .iter()
            .filter(|r| {
                r["names"]
                    .as_array()
                    .expect("names")
                    .iter()
                    .any(|n| n == "clone")
            })
            .collect();
        assert_eq!(clone.len(), 1, "one conditional clone rule: {clone:?}");
        assert_eq!(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone[0]["args"][0]["value"], seccomp::NAMESPACE_FLAGS);
        assert_eq!(clone[0]["args"][0]["valueTwo"], 0);
    }

    #[test]
    fn runtime_spec_unlimited_resources_are_omitted() {
        let mut c = config();
        c.resources = OciResources::default();
        c.shm = None;
        let json = serde_json::to_value(build(&c).expect("spec")).expect("json");
        let res = &json["linux"]["resources"];
        assert_eq!(res["memory"].get("limit"), None);
        assert_eq!(res["cpu"].get("quota"), None);
        assert_eq!(json["mounts"][3]["type"], "tmpfs");
    }

    #[test]
    fn a_propagating_bind_mount_sets_the_roots_propagation() {
        let bind = |propagation| BindMount {
            source: PathBuf::from("/var/lib/kubelet/pods/x"),
            destination: PathBuf::from("/data"),
            readonly: false,
            propagation,
        };
        let json = |binds: Vec<BindMount>| {
            let spec = build(&SpecConfig {
                bind_mounts: binds,
                ..config()
            })
            .unwrap();
            serde_json::to_value(spec).unwrap()["linux"]["rootfsPropagation"].clone()
        };
        assert_eq!(
            json(vec![bind(Propagation::Private)]),
            serde_json::Value::Null
        );
        assert_eq!(json(vec![bind(Propagation::HostToContainer)]), "rslave");
        assert_eq!(
            json(vec![
                bind(Propagation::HostToContainer),
                bind(Propagation::Bidirectional)
            ]),
            "rshared"
        );
    }

    #[test]
    fn runtime_spec_in_a_user_namespace_maps_ids_and_drops_what_it_cannot_own() {
        let config = SpecConfig {
            idmap: Some(IdMap::pod(2_000_000_000).unwrap()),
            ..config()
        };
        let json = serde_json::to_value(build(&config).unwrap()).unwrap();
        let linux = &json["linux"];
        let ns: Vec<_> = linux["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["type"].as_str().unwrap(), n.get("path").is_some()))
            .collect();
        assert!(
            ns.contains(&("user", false)),
            "a new user namespace: {ns:?}"
        );
        for ids in ["uidMappings", "gidMappings"] {
            assert_eq!(
                linux[ids],
                serde_json::json!([{"containerID": 0, "hostID": 2_000_000_000u32, "size": 65536}])
            );
        }
        let mounts: Vec<_> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert!(!mounts.contains(&"/dev/mqueue"), "{mounts:?}");
        let sys = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert_eq!(sys["type"], "bind", "{sys}");
        assert!(json.get("hostname").is_none(), "the sandbox set it");
    }

    #[test]
    fn runtime_spec_refuses_bad_process() {
        let mut c = config();
        c.process.args.clear();
        assert!(build(&c).is_err());
        let mut c = config();
        c.process.env.push("NOEQUALS".into());
        assert!(build(&c).is_err());
        let mut c = config();
        c.process.cwd = PathBuf::from("relative");
        assert!(build(&c).is_err());
    }
}
