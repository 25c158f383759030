//! The pod sandbox: the namespaces all containers of a pod share (network,
//! IPC, UTS) and the pod's shared `/dev/shm`.
//!
//! Design choice: **pinned namespace files, no pause process.** The
//! sandbox's IPC and UTS namespaces (and, when pod networking does not
//! supply one, the network namespace) are created by a short-lived thread
//! of the agent (`unshare(2)`; these namespace types may be unshared per
//! thread), which sets the pod's hostname, brings up `lo` in a new network
//! namespace, and bind-mounts `/proc/thread-self/ns/{net,ipc,uts}` onto
//! files in the pod's directory — what `ip netns add` does for network
//! namespaces, and what pod networking (`podnet`) hands over anyway: a
//! netns path. Every container's spec then joins the three by path, while
//! getting its own PID and mount namespaces.
//!
//! Why not a pause container (Kubernetes' way): it is a process per pod
//! that must be started before the first container (a rootfs, a runtime
//! create+start: latency the pod start benchmark pays), accounted in some
//! cgroup, watched, and re-adopted after an agent restart; if it dies, the
//! pod's namespaces go with it. A bind mount keeps the namespace alive on
//! its own, survives an agent `kill -9` (the mounts are in the host's mount
//! namespace), costs nothing while the pod runs, and is removed by
//! unmounting. What pinned files cannot give — a shared PID namespace
//! (`shareProcessNamespace`) — takes a process after all: a pod that
//! asks for one ([`PidSharing::Pod`]) gets an init of its own
//! ([`crate::pod_init`], started by [`PodSandbox::start_init`]), whose
//! namespace is pinned at `ns/pid` like the others and joined by path.
//!
//! `/dev/shm`: a tmpfs per pod (`<pod>/shm`), bind-mounted into every
//! container, so POSIX shared memory is shared like System V IPC is
//! through the IPC namespace. Its pages are charged to the memory cgroup of
//! the container that first touches them.
//!
//! A pod may share the host's IPC, UTS or PID namespace instead
//! ([`HostShares`], the privileged pods of Kubernetes' `hostIPC`,
//! `hostNetwork` and `hostPID`): containers then join the agent's, nothing of
//! it is pinned or removed, and with the host's IPC namespace goes the
//! host's `/dev/shm`.
//!
//! Layout: `<pod dir>/ns/{net,ipc,uts,pid}`, `<pod dir>/shm/`.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::thread;

use super::error::{Result, RuntimeError};
use super::mountinfo;
use super::pod_init;
use super::rootfs::unmount;

/// How long a killed pod init may take to go.
const INIT_KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Size of a pod's `/dev/shm` tmpfs (Docker's and containerd's default).
pub const SHM_SIZE: &str = "65536k";

/// Where the pod's network namespace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNetwork {
    /// A namespace file prepared by pod networking (e.g. `/run/netns/…`);
    /// the sandbox joins it and never removes it.
    Existing(PathBuf),
    /// A new namespace with only `lo` (up), pinned in the pod's directory
    /// and removed with the sandbox.
    New,
}

/// The shared namespaces of one pod, as paths containers join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNamespaces {
    /// Network namespace file.
    pub net: PathBuf,
    /// IPC namespace file.
    pub ipc: PathBuf,
    /// UTS namespace file (holds the pod's hostname).
    pub uts: PathBuf,
    /// The PID namespace containers join; `None`: a new one each.
    pub pid: Option<PathBuf>,
}

/// Namespaces a pod shares with the host instead of having its own
/// (Kubernetes' `hostIPC`, `hostPID`, and the host's UTS namespace that
/// goes with `hostNetwork`); the network's is [`PodNetwork`]'s to say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostShares {
    /// The host's IPC namespace and its `/dev/shm`.
    pub ipc: bool,
    /// The host's UTS namespace (its hostname; the pod's is not set).
    pub uts: bool,
    /// The host's PID namespace.
    pub pid: bool,
}

/// The host's namespace of `kind` (`net`, `ipc`, `uts`, `pid`): the
/// agent's own, as `/proc/self/ns/<kind>`. Whoever opens it — the agent,
/// or the runtime it starts, which inherits its namespaces — gets the
/// same one. (Not PID 1's: the agent may not be allowed to look at PID 1,
/// and the node it serves is the one it runs in.)
pub fn host_namespace(kind: &str) -> PathBuf {
    PathBuf::from("/proc/self/ns").join(kind)
}

/// Whose PID namespace a pod's containers are in (the host's is
/// [`HostShares::pid`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PidSharing {
    /// Each container its own (the CRI's CONTAINER).
    #[default]
    PerContainer,
    /// One for the whole pod, held by the pod's init (POD).
    Pod,
}

/// A pod's pinned namespaces and shared `/dev/shm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSandbox {
    dir: PathBuf,
    hostname: String,
    namespaces: SandboxNamespaces,
    owns_net: bool,
    host: HostShares,
    pid: PidSharing,
}

impl PodSandbox {
    /// Creates the pod's namespaces and shm under `dir` (created if
    /// missing). On failure whatever was set up is undone.
    pub fn create(
        dir: &Path,
        hostname: &str,
        network: PodNetwork,
        host: HostShares,
        pid: PidSharing,
    ) -> Result<PodSandbox> {
        validate_hostname(hostname)?;
        let sandbox = PodSandbox::at(dir, hostname, &network, host, pid);
        if let PodNetwork::Existing(path) = &network {
            if !path.exists() {
                return Err(RuntimeError::invalid(
                    "network namespace",
                    path.to_string_lossy(),
                    "does not exist",
                ));
            }
        }
        let ns_dir = dir.join("ns");
        fs::create_dir_all(&ns_dir).map_err(RuntimeError::io(&ns_dir, "create directory"))?;
        let shm = sandbox.shm_dir();
        if !host.ipc {
            fs::create_dir_all(&shm).map_err(RuntimeError::io(&shm, "create directory"))?;
        }
        let result =
            sandbox
                .pin_namespaces()
                .and_then(|()| if host.ipc { Ok(()) } else { mount_shm(&shm) });
        if let Err(e) = result {
            // Best effort: the original error is the one to report.
            let _ = sandbox.remove();
            return Err(e);
        }
        Ok(sandbox)
    }

    /// The sandbox an earlier agent created in `dir`, checked to be still
    /// mounted (after an agent restart).
    pub fn open(
        dir: &Path,
        hostname: &str,
        network: PodNetwork,
        host: HostShares,
        pid: PidSharing,
    ) -> Result<PodSandbox> {
        let sandbox = PodSandbox::at(dir, hostname, &network, host, pid);
        let mounts = mountinfo::read_self()?;
        let mounted = |p: &Path| mounts.iter().any(|m| m.mount_point == p);
        if let Some(missing) = sandbox.owned_mounts().into_iter().find(|p| !mounted(p)) {
            return Err(RuntimeError::invalid(
                "pod sandbox",
                missing.to_string_lossy(),
                "not mounted (sandbox gone)",
            ));
        }
        if let Some(pinned) = sandbox.pinned_pid() {
            if pod_init::find_init(&pinned).is_none() {
                return Err(RuntimeError::invalid(
                    "pod sandbox",
                    pinned.to_string_lossy(),
                    "its init is gone (the shared PID namespace takes no new process)",
                ));
            }
        }
        Ok(sandbox)
    }

    /// Starts the pod's init (`program`, `stratum-pod-init`, with
    /// `prepare` applied to its command) and pins its PID namespace where
    /// containers join it; for [`PidSharing::Pod`] only, once.
    pub fn start_init(
        &self,
        program: &Path,
        prepare: impl FnOnce(&mut std::process::Command) -> Result<()>,
    ) -> Result<u32> {
        let pinned = self.pinned_pid().ok_or_else(|| {
            RuntimeError::invalid(
                "pod sandbox",
                self.dir.to_string_lossy(),
                "shares no PID namespace",
            )
        })?;
        let pid = pod_init::spawn(program, prepare)?;
        let pinned_ok = File::create(&pinned)
            .map_err(RuntimeError::io(&pinned, "create namespace file"))
            .and_then(|_| bind(&PathBuf::from(format!("/proc/{pid}/ns/pid")), &pinned));
        if let Err(e) = pinned_ok {
            let _ = pod_init::kill(pid, INIT_KILL_WAIT);
            return Err(e);
        }
        Ok(pid)
    }

    /// The file pinning the pod's own PID namespace, if it has one.
    fn pinned_pid(&self) -> Option<PathBuf> {
        (self.pid == PidSharing::Pod && !self.host.pid).then(|| self.dir.join("ns").join("pid"))
    }

    /// The sandbox that lives or would live in `dir`, unchecked: for
    /// [`PodSandbox::remove`] of one whose mounts may be partly gone.
    pub fn at(
        dir: &Path,
        hostname: &str,
        network: &PodNetwork,
        host: HostShares,
        pid: PidSharing,
    ) -> PodSandbox {
        let ns = dir.join("ns");
        let (net, owns_net) = match network {
            PodNetwork::Existing(path) => (path.clone(), false),
            PodNetwork::New => (ns.join("net"), true),
        };
        let own_or_host = |kind: &str, shared: bool| {
            if shared {
                host_namespace(kind)
            } else {
                ns.join(kind)
            }
        };
        PodSandbox {
            dir: dir.to_path_buf(),
            hostname: hostname.to_string(),
            namespaces: SandboxNamespaces {
                net,
                ipc: own_or_host("ipc", host.ipc),
                uts: own_or_host("uts", host.uts),
                pid: if host.pid {
                    Some(host_namespace("pid"))
                } else {
                    (pid == PidSharing::Pod).then(|| ns.join("pid"))
                },
            },
            owns_net,
            host,
            pid,
        }
    }

    /// The sandbox's own mounts: pinned namespace files and its shm (none
    /// of what it shares with the host).
    fn owned_mounts(&self) -> Vec<PathBuf> {
        let mut owned = Vec::new();
        if !self.host.ipc {
            owned.push(self.namespaces.ipc.clone());
            owned.push(self.shm_dir());
        }
        if !self.host.uts {
            owned.push(self.namespaces.uts.clone());
        }
        if self.owns_net {
            owned.push(self.namespaces.net.clone());
        }
        owned.extend(self.pinned_pid());
        owned
    }

    /// Makes the pod's `/dev/shm` (its tmpfs's root) belong to `id` as
    /// uid and gid: the containers' root in a pod with a user namespace.
    pub fn give_shm_to(&self, id: u32) -> Result<()> {
        if self.host.ipc {
            return Ok(());
        }
        let shm = self.shm_dir();
        std::os::unix::fs::chown(&shm, Some(id), Some(id)).map_err(RuntimeError::io(&shm, "chown"))
    }

    /// The pod's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod's hostname (set in its UTS namespace).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The namespace files containers join.
    pub fn namespaces(&self) -> &SandboxNamespaces {
        &self.namespaces
    }

    /// The pod's shared `/dev/shm` directory (a tmpfs; the host's with
    /// the host's IPC namespace).
    pub fn shm_dir(&self) -> PathBuf {
        if self.host.ipc {
            PathBuf::from("/dev/shm")
        } else {
            self.dir.join("shm")
        }
    }

    /// What the pod shares with the host.
    pub fn host_shares(&self) -> HostShares {
        self.host
    }

    /// Unmounts the pinned namespaces (not an `Existing` network namespace)
    /// and the shm, and deletes the pod directory's sandbox files.
    /// Idempotent; containers must be gone first (a running container keeps
    /// its namespaces alive anyway, the files just disappear).
    pub fn remove(&self) -> Result<()> {
        // The init first: with it go whatever processes the namespace
        // still holds.
        if let Some(init) = self.pinned_pid().and_then(|p| pod_init::find_init(&p)) {
            pod_init::kill(init, INIT_KILL_WAIT)?;
        }
        let targets = self.owned_mounts();
        let mounts = mountinfo::read_self()?;
        for target in &targets {
            // A file may carry several stacked mounts after a failed retry.
            let layers = mounts.iter().filter(|m| m.mount_point == *target).count();
            for _ in 0..layers {
                unmount(target)?;
            }
        }
        for target in &targets {
            let removed = if target.is_dir() {
                fs::remove_dir(target)
            } else {
                fs::remove_file(target)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(RuntimeError::io(target, "remove")(e)),
            }
        }
        let ns_dir = self.dir.join("ns");
        match fs::remove_dir(&ns_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RuntimeError::io(&ns_dir, "remove")(e)),
        }
    }

    /// Creates the namespaces in a dedicated thread and pins them.
    fn pin_namespaces(&self) -> Result<()> {
        let mut targets = Vec::new();
        let mut flags = 0;
        if !self.host.ipc {
            targets.push(("ipc", self.namespaces.ipc.clone()));
            flags |= libc::CLONE_NEWIPC;
        }
        if !self.host.uts {
            targets.push(("uts", self.namespaces.uts.clone()));
            flags |= libc::CLONE_NEWUTS;
        }
        if self.owns_net {
            targets.push(("net", self.namespaces.net.clone()));
            flags |= libc::CLONE_NEWNET;
        }
        if targets.is_empty() {
            return Ok(());
        }
        for (_, file) in &targets {
            File::create(file).map_err(RuntimeError::io(file, "create namespace file"))?;
        }
        let hostname = (!self.host.uts).then(|| self.hostname.clone());
        let new_net = self.owns_net;
        // The unshared namespaces belong to this thread only; it ends right
        // after pinning them, so no other agent code ever runs inside them.
        thread::spawn(move || -> Result<()> {
            // SAFETY: unshare(2) with namespace flags affects this thread.
            if unsafe { libc::unshare(flags) } != 0 {
                return Err(RuntimeError::sys("unshare pod namespaces")(
                    io::Error::last_os_error(),
                ));
            }
            if let Some(hostname) = &hostname {
                set_hostname(hostname)?;
            }
            if new_net {
                loopback_up()?;
            }
            for (kind, file) in &targets {
                let source = PathBuf::from("/proc/thread-self/ns").join(kind);
                bind(&source, file)?;
            }
            Ok(())
        })
        .join()
        .map_err(|_| RuntimeError::sys("pin pod namespaces")(io::Error::other("thread panicked")))?
    }
}

/// Hostnames: 1..=64 bytes of `[A-Za-z0-9.-]`, as the kernel and DNS take.
fn validate_hostname(hostname: &str) -> Result<()> {
    if hostname.is_empty() || hostname.len() > 64 {
        return Err(RuntimeError::invalid(
            "hostname",
            hostname,
            "must be 1 to 64 bytes",
        ));
    }
    if !hostname
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(RuntimeError::invalid(
            "hostname",
            hostname,
            "only letters, digits, '-' and '.' are allowed",
        ));
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::invalid("path", path.to_string_lossy(), "contains NUL"))
}

fn bind(source: &Path, target: &Path) -> Result<()> {
    let (s, t) = (c_path(source)?, c_path(target)?);
    // SAFETY: NUL-terminated paths; a bind mount takes no type or data.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(RuntimeError::io(target, "bind-mount namespace")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn mount_shm(target: &Path) -> Result<()> {
    let t = c_path(target)?;
    let data = CString::new(format!("mode=1777,size={SHM_SIZE}"))
        .map_err(|_| RuntimeError::invalid("shm options", SHM_SIZE, "contains NUL"))?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"shm".as_ptr(),
            t.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(RuntimeError::io(target, "mount shm tmpfs")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn set_hostname(hostname: &str) -> Result<()> {
    // SAFETY: a pointer and length of a live byte buffer.
    let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    if rc != 0 {
        return Err(RuntimeError::sys("sethostname")(io::Error::last_os_error()));
    }
    Ok(())
}

/// `ip link set lo up` in the calling thread's network namespace.
fn loopback_up() -> Result<()> {
    // SAFETY: socket(2) returns a new descriptor or -1.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(RuntimeError::sys("socket for lo")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: the descriptor was just returned to us and is owned here.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: an all-zero ifreq is valid; the name is copied within bounds
    // (3 bytes including NUL, the array holds 16).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write the flags of `req`.
    unsafe {
        if libc::ioctl(raw, libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(RuntimeError::sys("get lo flags")(io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(raw, libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(RuntimeError::sys("set lo up")(io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_sandbox_hostname_rules() {
        assert!(validate_hostname("pod-7.example").is_ok());
        assert!(validate_hostname("").is_err());
        assert!(validate_hostname("a b").is_err());
        assert!(validate_hostname(&"x".repeat(65)).is_err());
    }
}
