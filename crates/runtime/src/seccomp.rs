//! The seccomp profile every container gets: Docker's and containerd's
//! default profile, written here as our own data.
//!
//! What it owns: the `linux.seccomp` section of a container's spec (see
//! `spec`). The kernel filter is built and loaded by the OCI runtime
//! (crun or runc, through libseccomp) before the container's process runs;
//! it applies to that process, everything it forks and every `exec` into
//! the container, and nothing inside can remove it (`seccomp` itself only
//! adds filters).
//!
//! Why: the capability set (see `spec`) keeps a container's root from most
//! privileged operations, but much kernel code is reachable without any
//! capability — above all user namespaces, in which an unprivileged
//! process holds every capability again (`unshare -r`, `clone` with
//! `CLONE_NEWUSER`) and reaches mount, netfilter, raw sockets and file
//! system code written for root. Most of the kernel's container escapes
//! went through that door. The filter closes it, and refuses system calls
//! no container needs (`kexec_load`, `init_module`, `bpf`, `keyctl`,
//! `userfaultfd`, `io_uring_setup`, ...).
//!
//! The profile followed: moby/profiles `seccomp` v0.2.3 (`default.json`,
//! as vendored by Docker 29.7; the same lists as containerd 2.4's
//! `contrib/seccomp/seccomp_default.go`), for x86-64 with its x86 and x32
//! ABIs:
//! - default action `SCMP_ACT_ERRNO` with `EPERM`;
//! - [`ALLOWED`]: the calls it allows unconditionally (`riscv_hwprobe`,
//!   RISC-V's, left out), plus `arch_prctl` and `modify_ldt` (x86);
//! - `socket` for every address family but `AF_ALG` and `AF_VSOCK` (the
//!   host's VMs listen on vsock; AF_ALG is kernel crypto code few services
//!   need), as three single-condition rules, as the profile does;
//! - `personality` only with the personas it allows ([`PERSONALITIES`]);
//! - `ptrace`, `process_vm_readv` and `process_vm_writev` on kernels from
//!   4.8 on (earlier ones let a traced process skip its filter);
//! - the calls it allows only with a capability ([`BY_CAPABILITY`]) when
//!   the container's bounding set holds it: with our set that is `chroot`
//!   (`CAP_SYS_CHROOT`) alone. We never grant `CAP_SYS_ADMIN`, so `mount`,
//!   `umount2`, `unshare`, `setns`, `pivot_root` (never allowed), the new
//!   mount API, `bpf`, `perf_event_open` stay refused;
//! - without `CAP_SYS_ADMIN`, `clone` only when its flags ask for no new
//!   namespace ([`NAMESPACE_FLAGS`] masked to zero), and `clone3` answered
//!   `ENOSYS` (its flags are in memory a filter cannot read), so that
//!   glibc falls back to `clone`.
//!
//! Where Docker and containerd differ (containerd allows the `lsm_*`
//! calls unconditionally, Docker only with `CAP_SYS_ADMIN`), the stricter
//! wins.
//!
//! What it refuses to do: make the profile optional or configurable per
//! pod (there is no privileged pod), or follow the kernel's newest calls
//! beyond the profile: a call it does not name gets `EPERM`. Runtimes
//! only filter names their libseccomp knows: Debian 12's (2.5.4) stops at
//! `futex_requeue` (Linux 6.7), so `statmount`, `listmount`, `mseal` and
//! the `*xattrat` calls get `EPERM` from crun 1.8 and `ENOSYS` from runc
//! 1.1 (which answers `ENOSYS` for every number above the newest it knows)
//! even though the profile allows them; `clone3`'s `ENOSYS` works with
//! both.

use std::sync::OnceLock;

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::error::Result;

/// The errno of a refused call (`EPERM`, as the default profile).
pub const REFUSED_ERRNO: u32 = libc::EPERM as u32;

/// The namespace flags `clone` may not carry without `CAP_SYS_ADMIN`.
pub const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The `personality` values allowed: `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, `UNAME26 | PER_LINUX32`, and `0xffffffff` (a query).
pub const PERSONALITIES: [u64; 5] = [0x0, 0x0008, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// `AF_ALG` and `AF_VSOCK`: the address families `socket` refuses.
const AF_ALG: u64 = libc::AF_ALG as u64;
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;

/// Calls allowed on x86 alone.
const X86_ALLOWED: [&str; 2] = ["arch_prctl", "modify_ldt"];

/// Calls allowed from Linux 4.8 on ([`PTRACE_SAFE_SINCE`]).
const TRACE_CALLS: [&str; 3] = ["process_vm_readv", "process_vm_writev", "ptrace"];

/// The first kernel on which `ptrace` cannot be used to skip a filter.
pub const PTRACE_SAFE_SINCE: KernelVersion = KernelVersion { major: 4, minor: 8 };

/// Calls allowed only when the container holds a capability.
pub const BY_CAPABILITY: [(Capability, &[&str]); 14] = [
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "lsm_get_self_attr",
            "lsm_list_modules",
            "lsm_set_self_attr",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (
        Capability::SysModule,
        &["delete_module", "init_module", "finit_module"],
    ),
    (Capability::SysPacct, &["acct"]),
    (
        Capability::SysPtrace,
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    (Capability::SysRawio, &["iopl", "ioperm"]),
    (
        Capability::SysTime,
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    (Capability::SysTtyConfig, &["vhangup"]),
    (
        Capability::SysNice,
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// The calls allowed unconditionally, in the profile's order.
#[rustfmt::skip]
pub const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
    "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32",
    "getitimer", "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority",
    "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
    "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area",
    "gettid", "gettimeofday", "getuid", "getuid32", "getxattr", "getxattrat", "inotify_add_watch",
    "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy",
    "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set",
    "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
    "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen",
    "listmount", "listxattr", "listxattrat", "llistxattr", "_llseek", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "lstat64", "madvise", "map_shadow_stack", "membarrier", "memfd_create",
    "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2",
    "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open",
    "openat", "openat2", "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc",
    "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr",
    "removexattrat", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop",
    "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg",
    "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt", "shmget", "shutdown",
    "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair",
    "splice", "stat", "stat64", "statfs", "statfs64", "statmount", "statx", "symlink", "symlinkat",
    "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "uretprobe", "utime", "utimensat", "utimensat_time64", "utimes",
    "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
];

/// A kernel release as far as the profile cares: major and minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// `6` of 6.1.
    pub major: u32,
    /// `1` of 6.1.
    pub minor: u32,
}

impl KernelVersion {
    /// `6.1.0-18-amd64` → 6.1; `None` when it does not start that way.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut numbers = release.trim().split(|c: char| !c.is_ascii_digit());
        let major = numbers.next()?.parse().ok()?;
        let minor = numbers.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }

    /// The running kernel's (`/proc/sys/kernel/osrelease`), read once.
    pub fn host() -> Option<KernelVersion> {
        static HOST: OnceLock<Option<KernelVersion>> = OnceLock::new();
        *HOST.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .as_deref()
                .and_then(KernelVersion::parse)
        })
    }
}

/// The profile of a container whose bounding capability set is
/// `capabilities`, on a kernel of version `kernel` (`None`, unknown, is
/// taken for one older than 4.8).
pub fn default_profile(
    capabilities: &[Capability],
    kernel: Option<KernelVersion>,
) -> Result<LinuxSeccomp> {
    let mut rules = vec![allow(ALLOWED)?, allow(&X86_ALLOWED)?];
    // Three ranges that leave AF_ALG and AF_VSOCK to the default action:
    // one rule with two "not equal" conditions on the same argument would
    // be split by runc into two rules that together allow everything.
    for (op, value) in [
        (LinuxSeccompOperator::ScmpCmpLt, AF_ALG),
        (LinuxSeccompOperator::ScmpCmpEq, AF_ALG + 1),
        (LinuxSeccompOperator::ScmpCmpGt, AF_VSOCK),
    ] {
        rules.push(allow_if("socket", op, value, None)?);
    }
    for persona in PERSONALITIES {
        rules.push(allow_if(
            "personality",
            LinuxSeccompOperator::ScmpCmpEq,
            persona,
            None,
        )?);
    }
    if kernel.is_some_and(|k| k >= PTRACE_SAFE_SINCE) {
        rules.push(allow(&TRACE_CALLS)?);
    }
    for (capability, names) in BY_CAPABILITY {
        if capabilities.contains(&capability) {
            rules.push(allow(names)?);
        }
    }
    if !capabilities.contains(&Capability::SysAdmin) {
        // (flags & NAMESPACE_FLAGS) == 0: a thread or a process, never a
        // namespace.
        rules.push(allow_if(
            "clone",
            LinuxSeccompOperator::ScmpCmpMaskedEq,
            NAMESPACE_FLAGS,
            Some(0),
        )?);
        rules.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOSYS as u32)
                .build()?,
        );
    }
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(REFUSED_ERRNO)
        .architectures(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ])
        .syscalls(rules)
        .build()?)
}

fn allow(names: &[&str]) -> Result<LinuxSyscall> {
    Ok(LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()?)
}

/// Allows `name` when its first argument compares as `op` with `value`
/// (`value_two` is the datum of a masked compare).
fn allow_if(
    name: &str,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> Result<LinuxSyscall> {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(value)
        .op(op);
    if let Some(two) = value_two {
        arg = arg.value_two(two);
    }
    Ok(LinuxSyscallBuilder::default()
        .names(vec![name.to_string()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg.build()?])
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DEFAULT_CAPABILITIES;

    /// What the filter answers, evaluated from the profile as the
    /// runtime's libseccomp compiles it: a rule naming the call whose
    /// conditions all hold decides; otherwise the default action.
    #[derive(Debug, PartialEq, Eq)]
    enum Verdict {
        Allow,
        Errno(u32),
    }

    fn verdict(profile: &LinuxSeccomp, name: &str, args: &[u64]) -> Verdict {
        let holds = |rule: &LinuxSyscall| {
            rule.args().iter().flatten().all(|a| {
                let arg = args.get(a.index()).copied().unwrap_or(0);
                match a.op() {
                    LinuxSeccompOperator::ScmpCmpEq => arg == a.value(),
                    LinuxSeccompOperator::ScmpCmpNe => arg != a.value(),
                    LinuxSeccompOperator::ScmpCmpLt => arg < a.value(),
                    LinuxSeccompOperator::ScmpCmpLe => arg <= a.value(),
                    LinuxSeccompOperator::ScmpCmpGt => arg > a.value(),
                    LinuxSeccompOperator::ScmpCmpGe => arg >= a.value(),
                    LinuxSeccompOperator::ScmpCmpMaskedEq => {
                        arg & a.value() == a.value_two().unwrap_or(0)
                    }
                }
            })
        };
        let decided = profile
            .syscalls()
            .iter()
            .flatten()
            .filter(|rule| rule.names().iter().any(|n| n == name))
            .find(|rule| holds(rule));
        match decided {
            Some(rule) if rule.action() == LinuxSeccompAction::ScmpActAllow => Verdict::Allow,
            Some(rule) => Verdict::Errno(rule.errno_ret().unwrap_or(REFUSED_ERRNO)),
            None => Verdict::Errno(profile.default_errno_ret().unwrap_or(REFUSED_ERRNO)),
        }
    }

    const LINUX_6_1: Option<KernelVersion> = Some(KernelVersion { major: 6, minor: 1 });
    const EPERM: Verdict = Verdict::Errno(libc::EPERM as u32);

    fn ours() -> LinuxSeccomp {
        default_profile(&DEFAULT_CAPABILITIES, LINUX_6_1).expect("profile")
    }

    #[test]
    fn seccomp_allows_what_services_use() {
        let p = ours();
        for name in [
            "read",
            "write",
            "openat",
            "execve",
            "mmap",
            "futex",
            "epoll_wait",
            "accept4",
            "bind",
            "listen",
            "clock_nanosleep",
            "rt_sigreturn",
            "exit_group",
            "wait4",
            "arch_prctl",
            "chroot",
            "ptrace",
            "io_setup",
            "fchmodat2",
        ] {
            assert_eq!(verdict(&p, name, &[]), Verdict::Allow, "{name}");
        }
        let sigchld = libc::SIGCHLD as u64;
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        assert_eq!(verdict(&p, "clone", &[sigchld]), Verdict::Allow, "fork");
        assert_eq!(verdict(&p, "clone", &[thread]), Verdict::Allow, "a thread");
        assert_eq!(
            verdict(&p, "socket", &[libc::AF_INET as u64]),
            Verdict::Allow
        );
        assert_eq!(
            verdict(&p, "socket", &[libc::AF_UNIX as u64]),
            Verdict::Allow
        );
        assert_eq!(
            verdict(&p, "socket", &[libc::AF_NETLINK as u64]),
            Verdict::Allow
        );
        assert_eq!(
            verdict(&p, "socket", &[libc::AF_NFC as u64]),
            Verdict::Allow
        );
        assert_eq!(
            verdict(&p, "socket", &[libc::AF_XDP as u64]),
            Verdict::Allow
        );
        for persona in [0x0, 0x8, 0xffff_ffff] {
            assert_eq!(verdict(&p, "personality", &[persona]), Verdict::Allow);
        }
    }

    #[test]
    fn seccomp_refuses_namespaces_mounts_and_kernel_interfaces() {
        let p = ours();
        for name in [
            "unshare",
            "setns",
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "mount_setattr",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "bpf",
            "keyctl",
            "add_key",
            "request_key",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "perf_event_open",
            "userfaultfd",
            "io_uring_setup",
            "io_uring_enter",
            "reboot",
            "swapon",
            "acct",
            "settimeofday",
            "clock_settime",
            "syslog",
            "iopl",
            "ioperm",
            "lsm_set_self_attr",
            "sethostname",
            "kcmp",
            "pidfd_getfd",
            "quotactl",
            "nfsservctl",
            "no_such_call",
        ] {
            assert_eq!(verdict(&p, name, &[]), EPERM, "{name}");
            assert!(!ALLOWED.contains(&name), "{name} in the allow-list");
        }
        for flag in [
            libc::CLONE_NEWNS,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
        ] {
            let flags = flag as u64 | libc::SIGCHLD as u64;
            assert_eq!(verdict(&p, "clone", &[flags]), EPERM, "clone {flag:#x}");
        }
        assert_eq!(
            verdict(&p, "clone3", &[]),
            Verdict::Errno(libc::ENOSYS as u32),
            "ENOSYS: glibc falls back to clone"
        );
        assert_eq!(verdict(&p, "socket", &[libc::AF_VSOCK as u64]), EPERM);
        assert_eq!(verdict(&p, "socket", &[libc::AF_ALG as u64]), EPERM);
        // READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE: not a persona it allows.
        assert_eq!(verdict(&p, "personality", &[0x0040_0000]), EPERM);
        assert_eq!(verdict(&p, "personality", &[0x0004_0000]), EPERM);
    }

    #[test]
    fn seccomp_follows_kernel_and_capabilities() {
        let old = default_profile(
            &DEFAULT_CAPABILITIES,
            Some(KernelVersion { major: 4, minor: 4 }),
        )
        .expect("profile");
        assert_eq!(verdict(&old, "ptrace", &[]), EPERM, "before 4.8");
        let unknown = default_profile(&DEFAULT_CAPABILITIES, None).expect("profile");
        assert_eq!(verdict(&unknown, "process_vm_readv", &[]), EPERM);
        // Without CAP_SYS_CHROOT, no chroot; with CAP_SYS_ADMIN (never
        // granted) Docker's admin set and an unconditional clone.
        let none = default_profile(&[], LINUX_6_1).expect("profile");
        assert_eq!(verdict(&none, "chroot", &[]), EPERM);
        let admin = default_profile(&[Capability::SysAdmin], LINUX_6_1).expect("profile");
        assert_eq!(verdict(&admin, "mount", &[]), Verdict::Allow);
        let newuser = libc::CLONE_NEWUSER as u64;
        assert_eq!(verdict(&admin, "clone", &[newuser]), Verdict::Allow);
        assert_eq!(verdict(&admin, "clone3", &[]), Verdict::Allow);
    }

    #[test]
    fn seccomp_profile_json_is_what_runtimes_read() {
        let json = serde_json::to_value(ours()).expect("json");
        assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(json["defaultErrnoRet"], libc::EPERM);
        assert_eq!(
            json["architectures"],
            serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let rules = json["syscalls"].as_array().expect("syscalls");
        let clone = rules
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone"]))
            .expect("clone rule");
        assert_eq!(clone["action"], "SCMP_ACT_ALLOW");
        assert_eq!(
            clone["args"],
            serde_json::json!([{
                "index": 0, "value": 2_114_060_288u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"
            }])
        );
        let clone3 = rules
            .iter()
            .find(|r| r["names"] == serde_json::json!(["clone3"]))
            .expect("clone3 rule");
        assert_eq!(clone3["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3["errnoRet"], libc::ENOSYS);
    }

    #[test]
    fn seccomp_lists_are_clean() {
        let mut names: Vec<&str> = ALLOWED.to_vec();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicates in ALLOWED");
        assert!(ALLOWED.iter().all(|n| !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')));
        for (_, gated) in BY_CAPABILITY {
            for name in gated {
                assert!(!ALLOWED.contains(name), "{name} is both gated and allowed");
            }
        }
    }

    #[test]
    fn seccomp_kernel_versions_parse() {
        let v = |major, minor| Some(KernelVersion { major, minor });
        assert_eq!(KernelVersion::parse("6.1.0-18-amd64"), v(6, 1));
        assert_eq!(KernelVersion::parse("6.18.44-fc-v1272\n"), v(6, 18));
        assert_eq!(KernelVersion::parse("4.8"), v(4, 8));
        assert_eq!(KernelVersion::parse("linux"), None);
        assert!(v(4, 10) > v(4, 8) && v(5, 0) > v(4, 10));
        assert!(KernelVersion::host().is_some());
    }
}
