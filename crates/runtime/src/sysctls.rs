//! A pod's sysctls: kernel settings of its own network and IPC
//! namespaces, set by the agent once, when the sandbox is made — not by
//! the OCI runtime per container, since a container in the pod's user
//! namespace may not write settings of namespaces the host's user
//! namespace owns.
//!
//! The module owns the names: which sysctls belong to a pod's namespaces
//! (`net.*`; the System V IPC and POSIX message queue ones), and which of
//! those Kubernetes deems safe for any pod (they cannot reach beyond the
//! pod). It refuses a name that would leave `/proc/sys` (`..`, empty
//! components) and a value with a newline, and a sysctl the pod's
//! namespaces do not have (a host-wide `net.*` setting such as
//! `net.ipv4.tcp_mem` is invisible from a pod's network namespace).

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread;

use super::error::{Result, RuntimeError};

/// The sysctls Kubernetes allows every pod (the kubelet's safe set).
pub const SAFE: [&str; 11] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
];

/// The IPC namespace's sysctls (System V IPC), besides `fs.mqueue.*`.
const IPC: [&str; 8] = [
    "kernel.shm_rmid_forced",
    "kernel.shmmax",
    "kernel.shmall",
    "kernel.shmmni",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
];

/// The namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Net,
    Ipc,
}

/// One checked sysctl: its dotted name and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    name: String,
    value: String,
    namespace: Namespace,
}

impl Sysctl {
    /// Checks `name` (dotted, or slashed as `/proc/sys` has it) and
    /// `value`; refuses sysctls outside a pod's namespaces.
    pub fn new(name: &str, value: &str) -> Result<Sysctl> {
        let dotted = name.replace('/', ".");
        let well_formed = !dotted.is_empty()
            && dotted.split('.').all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        if !well_formed {
            return Err(RuntimeError::invalid("sysctl", name, "not a sysctl name"));
        }
        if value.contains(['\n', '\0']) {
            return Err(RuntimeError::invalid(
                "sysctl value",
                value,
                "holds a newline or NUL",
            ));
        }
        let namespace = if dotted.starts_with("net.") {
            Namespace::Net
        } else if IPC.contains(&dotted.as_str()) || dotted.starts_with("fs.mqueue.") {
            Namespace::Ipc
        } else {
            return Err(RuntimeError::invalid(
                "sysctl",
                name,
                "not a setting of a pod's own network or IPC namespace",
            ));
        };
        Ok(Sysctl {
            name: dotted,
            value: value.to_string(),
            namespace,
        })
    }

    /// The dotted name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace it is a setting of.
    pub fn namespace(&self) -> Namespace {
        self.namespace
    }

    /// Whether Kubernetes allows it to every pod.
    pub fn is_safe(&self) -> bool {
        SAFE.contains(&self.name.as_str())
    }

    fn proc_path(&self) -> PathBuf {
        Path::new("/proc/sys").join(self.name.replace('.', "/"))
    }
}

/// Sets `sysctls` in the network namespace at `net` and the IPC namespace
/// at `ipc` (pinned namespace files), from a thread that enters both and
/// ends right after.
pub fn apply(net: &Path, ipc: &Path, sysctls: &[Sysctl]) -> Result<()> {
    if sysctls.is_empty() {
        return Ok(());
    }
    let open = |path: &Path| fs::File::open(path).map_err(RuntimeError::io(path, "open namespace"));
    let (net_fd, ipc_fd) = (open(net)?, open(ipc)?);
    let sysctls = sysctls.to_vec();
    thread::spawn(move || -> Result<()> {
        for (fd, kind) in [(&net_fd, libc::CLONE_NEWNET), (&ipc_fd, libc::CLONE_NEWIPC)] {
            // SAFETY: setns on an open namespace descriptor; it changes
            // this thread only, which ends below.
            if unsafe { libc::setns(fd.as_raw_fd(), kind) } != 0 {
                return Err(RuntimeError::sys("enter the pod's namespaces")(
                    io::Error::last_os_error(),
                ));
            }
        }
        for sysctl in &sysctls {
            let path = sysctl.proc_path();
            match fs::write(&path, &sysctl.value) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(RuntimeError::invalid(
                        "sysctl",
                        sysctl.name.as_str(),
                        "not in the pod's namespaces (a host-wide setting)",
                    ))
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return Err(RuntimeError::invalid(
                        "sysctl value",
                        format!("{}={}", sysctl.name, sysctl.value),
                        "refused by the kernel",
                    ))
                }
                Err(e) => return Err(RuntimeError::io(&path, "write")(e)),
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| RuntimeError::sys("set sysctls")(io::Error::other("thread panicked")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_belong_to_a_pods_namespaces_or_are_refused() {
        let net = Sysctl::new("net.ipv4.ip_local_port_range", "1024 65000").unwrap();
        assert_eq!(net.namespace, Namespace::Net);
        assert!(net.is_safe());
        assert_eq!(
            net.proc_path(),
            PathBuf::from("/proc/sys/net/ipv4/ip_local_port_range")
        );
        let slashed = Sysctl::new("kernel/shm_rmid_forced", "1").unwrap();
        assert_eq!(slashed.name(), "kernel.shm_rmid_forced");
        assert_eq!(slashed.namespace, Namespace::Ipc);
        let unsafe_ipc = Sysctl::new("kernel.msgmax", "65536").unwrap();
        assert!(!unsafe_ipc.is_safe());
        assert!(Sysctl::new("fs.mqueue.msg_max", "20").is_ok());
        for host_wide in [
            "kernel.panic",
            "vm.swappiness",
            "fs.file-max",
            "kernel.hostname",
        ] {
            assert!(Sysctl::new(host_wide, "1").is_err(), "{host_wide}");
        }
        for bad in [
            "net..ipv4",
            "net.ipv4.",
            "../../etc/x",
            "net.ipv4/../../x",
            "",
        ] {
            assert!(Sysctl::new(bad, "1").is_err(), "{bad:?}");
        }
        assert!(Sysctl::new("net.ipv4.tcp_syncookies", "1\n").is_err());
    }
}
