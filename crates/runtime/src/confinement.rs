//! What a container's process may do: its capabilities, whether it runs
//! under the default seccomp profile, `noNewPrivileges`, and the paths
//! hidden from it or made read-only — the part of the spec a pod's
//! security context changes.
//!
//! The module owns the names (capabilities as Kubernetes and Docker write
//! them) and the arithmetic (the default set, plus adds, minus drops). It
//! does not decide who may ask for what: a caller that may not add a
//! capability is refused before a `Confinement` is made (the agent's pod
//! security level).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::OnceLock;

pub use oci_spec::runtime::Capability;
use oci_spec::runtime::LinuxSeccomp;

use super::error::{Result, RuntimeError};
use super::spec::{DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};

/// Every capability Linux 6.1 knows (`CAP_LAST_CAP` = 40), in number order.
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// A capability as a security context names it: `NET_ADMIN`,
/// `CAP_NET_ADMIN`, any case; `ALL` is every capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapabilityName {
    One(Capability),
    All,
}

impl FromStr for CapabilityName {
    type Err = RuntimeError;

    fn from_str(name: &str) -> Result<CapabilityName> {
        let upper = name.to_ascii_uppercase();
        if upper == "ALL" {
            return Ok(CapabilityName::All);
        }
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        Capability::from_str(bare)
            .map(CapabilityName::One)
            .map_err(|_| RuntimeError::invalid("capability", name, "not a Linux capability"))
    }
}

/// Every capability this process may hand on (its bounding set), which
/// is what `ALL` and a privileged container get, as containerd gives
/// them: a runtime asked for one it lacks fails (`capset`), and an agent
/// may run in a container or under a systemd unit that took some away.
pub fn current_capabilities() -> Vec<Capability> {
    static CURRENT: OnceLock<Vec<Capability>> = OnceLock::new();
    CURRENT
        .get_or_init(|| {
            let bounding = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| {
                    status.lines().find_map(|l| {
                        l.strip_prefix("CapBnd:")
                            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                    })
                })
                .unwrap_or(u64::MAX);
            ALL_CAPABILITIES
                .iter()
                .enumerate()
                .filter(|(n, _)| bounding & (1u64 << n) != 0)
                .map(|(_, c)| *c)
                .collect()
        })
        .clone()
}

/// The default set changed as containerd and CRI-O change it: `ALL` in
/// `add` gives every capability this process has (see
/// [`current_capabilities`]), `ALL` in `drop` then leaves none, the
/// named adds go in, the named drops come out. So the restricted pod
/// pattern — drop ALL, add NET_BIND_SERVICE — leaves exactly that one.
pub fn capabilities(add: &[CapabilityName], drop: &[CapabilityName]) -> Vec<Capability> {
    let mut set: BTreeSet<usize> = DEFAULT_CAPABILITIES.iter().map(|c| number(*c)).collect();
    if add.contains(&CapabilityName::All) {
        set.extend(current_capabilities().into_iter().map(number));
    }
    if drop.contains(&CapabilityName::All) {
        set.clear();
    }
    for name in add {
        if let CapabilityName::One(c) = name {
            set.insert(number(*c));
        }
    }
    for name in drop {
        if let CapabilityName::One(c) = name {
            set.remove(&number(*c));
        }
    }
    set.into_iter()
        .filter_map(|n| ALL_CAPABILITIES.get(n).copied())
        .collect()
}

/// A capability's number (its index in [`ALL_CAPABILITIES`]).
fn number(capability: Capability) -> usize {
    ALL_CAPABILITIES
        .iter()
        .position(|c| *c == capability)
        .unwrap_or(usize::MAX)
}

/// Whether `capability` is one every container has by default.
pub fn is_default(capability: Capability) -> bool {
    DEFAULT_CAPABILITIES.contains(&capability)
}

/// The confinement of one container's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Bounding, effective and permitted set (inheritable and ambient stay
    /// empty).
    pub capabilities: Vec<Capability>,
    /// Run under a seccomp filter: `seccomp_profile`, else the default
    /// profile for these capabilities; `false`: no filter.
    pub seccomp: bool,
    /// A profile of the caller's (a Localhost profile) instead of the
    /// default one.
    pub seccomp_profile: Option<LinuxSeccomp>,
    /// Set `noNewPrivileges`: setuid binaries and file capabilities give
    /// nothing.
    pub no_new_privileges: bool,
    /// Hidden paths: the defaults and these.
    pub masked_paths: Vec<String>,
    /// Read-only paths: the defaults and these.
    pub readonly_paths: Vec<String>,
    /// A privileged container: no masked or read-only paths at all and a
    /// writable `/sys` (capabilities, seccomp and `noNewPrivileges` as
    /// the fields above say: see [`Confinement::privileged`]).
    pub privileged: bool,
}

impl Default for Confinement {
    fn default() -> Self {
        Confinement {
            capabilities: DEFAULT_CAPABILITIES.to_vec(),
            seccomp: true,
            seccomp_profile: None,
            no_new_privileges: true,
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            privileged: false,
        }
    }
}

impl Confinement {
    /// A privileged container's: every capability this process has, no
    /// seccomp filter, privilege escalation allowed, nothing masked.
    pub fn privileged() -> Confinement {
        Confinement {
            capabilities: current_capabilities(),
            seccomp: false,
            seccomp_profile: None,
            no_new_privileges: false,
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            privileged: true,
        }
    }

    /// Refuses paths the runtime would choke on.
    pub fn validate(&self) -> Result<()> {
        for path in self.masked_paths.iter().chain(&self.readonly_paths) {
            if !path.starts_with('/') || path.contains('\0') {
                return Err(RuntimeError::invalid(
                    "masked or read-only path",
                    path.as_str(),
                    "not an absolute path",
                ));
            }
        }
        Ok(())
    }

    /// `linux.maskedPaths`: the defaults, then the extra ones not already
    /// there.
    pub fn all_masked_paths(&self) -> Vec<String> {
        if self.privileged {
            return Vec::new();
        }
        merged(&DEFAULT_MASKED_PATHS, &self.masked_paths)
    }

    /// `linux.readonlyPaths`, as [`Self::all_masked_paths`].
    pub fn all_readonly_paths(&self) -> Vec<String> {
        if self.privileged {
            return Vec::new();
        }
        merged(&DEFAULT_READONLY_PATHS, &self.readonly_paths)
    }
}

fn merged(defaults: &[&str], extra: &[String]) -> Vec<String> {
    let mut all: Vec<String> = defaults.iter().map(|p| p.to_string()).collect();
    for path in extra {
        if !all.contains(path) {
            all.push(path.clone());
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<CapabilityName> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn names_parse_with_or_without_prefix_in_any_case() {
        for name in ["NET_ADMIN", "CAP_NET_ADMIN", "net_admin", "cap_net_admin"] {
            assert_eq!(
                name.parse::<CapabilityName>().unwrap(),
                CapabilityName::One(Capability::NetAdmin)
            );
        }
        assert_eq!(
            "all".parse::<CapabilityName>().unwrap(),
            CapabilityName::All
        );
        assert!("NET_ADMINS".parse::<CapabilityName>().is_err());
        assert!("".parse::<CapabilityName>().is_err());
        assert!("CAP_".parse::<CapabilityName>().is_err());
    }

    #[test]
    fn the_table_is_in_kernel_order() {
        // Spot checks against linux/capability.h.
        assert_eq!(number(Capability::Chown), 0);
        assert_eq!(number(Capability::NetRaw), 13);
        assert_eq!(number(Capability::SysAdmin), 21);
        assert_eq!(number(Capability::Setfcap), 31);
        assert_eq!(number(Capability::CheckpointRestore), 40);
        let distinct: BTreeSet<usize> = ALL_CAPABILITIES.iter().map(|c| number(*c)).collect();
        assert_eq!(distinct.len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn adds_then_drops() {
        let default = capabilities(&[], &[]);
        assert_eq!(default.len(), DEFAULT_CAPABILITIES.len());
        let added = capabilities(&names(&["NET_ADMIN"]), &[]);
        assert!(added.contains(&Capability::NetAdmin));
        assert_eq!(added.len(), default.len() + 1);
        let dropped = capabilities(&[], &names(&["CHOWN", "KILL"]));
        assert!(!dropped.contains(&Capability::Chown));
        assert_eq!(dropped.len(), default.len() - 2);
        let current = current_capabilities().len();
        assert_eq!(capabilities(&names(&["ALL"]), &[]).len(), current);
        assert!(capabilities(&[], &names(&["ALL"])).is_empty());
        assert_eq!(
            capabilities(&names(&["NET_BIND_SERVICE"]), &names(&["ALL"])),
            vec![Capability::NetBindService]
        );
        assert_eq!(
            capabilities(&names(&["ALL"]), &names(&["SYS_ADMIN"])).len(),
            current - 1
        );
    }

    #[test]
    fn extra_paths_join_the_defaults_once() {
        let c = Confinement {
            masked_paths: vec!["/proc/kcore".into(), "/proc/extra".into()],
            ..Confinement::default()
        };
        let masked = c.all_masked_paths();
        assert_eq!(masked.len(), DEFAULT_MASKED_PATHS.len() + 1);
        assert!(masked.contains(&"/proc/extra".to_string()));
        assert!(Confinement {
            readonly_paths: vec!["relative".into()],
            ..Confinement::default()
        }
        .validate()
        .is_err());
    }
}
