//! Seccomp-BPF filters, one allow-list per kind of thread vmm runs.
//!
//! What it owns: the list of thread kinds ([`ThreadKind`]), the system
//! calls (and, where it matters, the arguments) each kind may make once it
//! runs guest-controlled work, the compilation of those lists to BPF with
//! `seccompiler`, and [`install`], which each thread calls on itself.
//!
//! Why: a guest drives vmm's vCPU exits and device queues. A bug there is
//! the guest's way into the host; the filters bound what such a bug can do
//! to what the thread already needed. As in Firecracker, a call outside the
//! list kills the whole process (`SECCOMP_RET_KILL_PROCESS`): the VM ends
//! visibly (the parent sees SIGSYS, the kernel log names the call) instead
//! of a thread dying quietly or a call failing in a way code may ignore.
//!
//! When each filter goes on: a thread installs its own filter (filters are
//! per thread, inherited by threads it spawns) before it does the work the
//! guest controls: a vCPU before its first `KVM_RUN`, a device worker before
//! it reads its queues, the console-input thread before it reads stdin. The
//! threads that build the VM (the main thread, or the API thread that
//! served `InstanceStart`) need open, mmap of guest memory, KVM's VM ioctls
//! and thread creation while they build it, as Firecracker's VMM thread
//! does: they go unfiltered until the VM runs, then stack their run-time
//! filter (the main thread when it starts waiting for the VM, each API
//! thread after the request it is serving). Device workers start when the
//! guest's driver activates a device, i.e. from a vCPU exit: a thread
//! inherits its parent's filter, so they are spawned by a dedicated thread
//! ([`ThreadKind::Spawner`], see [`spawn`]) whose list is the union of the
//! workers' lists plus thread creation, rather than widening the vCPU's.
//!
//! Firecracker's `--seccomp-filter FILE` replaces the built-in list of a
//! thread kind with the operator's: FILE is in the JSON format of
//! seccompiler (the source Firecracker's `seccompiler-bin` compiles; we
//! take the source rather than Firecracker's compiled form, whose encoding
//! changes between its releases), keyed by our thread kinds' names. It
//! must name Firecracker's three (`vmm`, `api`, `vcpu`); a kind it does not
//! name (our device workers, which Firecracker runs on its vmm thread)
//! keeps its built-in list. A name that is not a thread kind, a syscall the
//! architecture lacks, or a file over 1 MiB is refused at start.
//!
//! What it refuses: no API changes a filter; `--no-seccomp` turns them all
//! off, for debugging only.
//! KVM ioctls are admitted by request number, only on the threads that
//! issue them at run time. `mmap`/`mprotect` never admit `PROT_EXEC`.
//! At run time only two threads open files: a vCPU creating the console
//! log's next file, and an API thread opening a drive's new image (`PATCH
//! /drives`, read-only or read-write, never creating). A second filter on
//! every thread ([`probe_filter`]) fails the exact form of glibc malloc's
//! read-only probes of /proc with ENOENT.
//! A thread that cannot install its filter does not run unfiltered: it
//! ends the process.
//!
//! Test trigger: `STRATUM_VMM_SECCOMP_TEST=<kind>` in vmm's environment at
//! start makes the thread(s) of that kind call `getpgid(0)` (in no list)
//! right after installing their filter, so tests can see a violation kill
//! vmm with SIGSYS. It is read once, from the environment the operator
//! starts vmm with; no guest action and no API request can set it, and all
//! it can do is end the process, never widen a filter. It has no effect
//! with `--no-seccomp`. `STRATUM_VMM_SECCOMP_TEST=log` instead turns the
//! default action into `SECCOMP_RET_LOG`: nothing is killed, and the kernel
//! logs each call a list lacks (`audit: type=1326 ... syscall=N`), which is
//! how the lists were checked against full runs (tests/tests/vmm_seccomp.rs,
//! `syscall_survey`). That is an operator's debugging switch like
//! `--no-seccomp`, with the same reach: the environment vmm starts with.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::vmm_log;

/// Environment variable of the test trigger (see the module doc).
pub const TEST_TRIGGER_ENV: &str = "STRATUM_VMM_SECCOMP_TEST";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build the seccomp filter of the {kind} thread: {source}")]
    Build {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of the {kind} thread: {source}")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("{TEST_TRIGGER_ENV}={0}: neither `log` nor a thread kind (one of {list})", list = ThreadKind::names())]
    UnknownTrigger(String),
    #[error("cannot spawn the {0} thread: {1}")]
    Spawn(String, #[source] std::io::Error),
    #[error("cannot read the seccomp filter file {path}: {source}")]
    FilterFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the seccomp filter file {0} is larger than {MAX_FILTER_FILE} bytes")]
    FilterFileTooLarge(PathBuf),
    #[error("invalid seccomp filter file {path}: {message}")]
    FilterCompile { path: PathBuf, message: String },
    #[error("the seccomp filter file names {0:?}, which is not a thread kind (one of {list})", list = ThreadKind::names())]
    FilterThread(String),
    #[error(
        "the seccomp filter file has no filter for the {0} thread (it must name vmm, api and vcpu)"
    )]
    FilterMissing(&'static str),
}

/// The kinds of thread vmm runs, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM runs: waits for it to end, cleans up.
    Vmm,
    /// A vCPU: KVM_RUN and the port/MMIO exits it emulates.
    Vcpu,
    /// The API acceptor and connection threads once the VM runs.
    Api,
    /// Starts device workers on a vCPU's behalf.
    Spawner,
    /// virtio-blk worker.
    Block,
    /// virtio-net worker.
    Net,
    /// virtio-rng worker.
    Rng,
    /// virtio-vsock worker.
    Vsock,
    /// virtio-balloon worker.
    Balloon,
    /// Forwards stdin to the serial console.
    ConsoleIn,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 10] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::Spawner,
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Rng,
        ThreadKind::Vsock,
        ThreadKind::Balloon,
        ThreadKind::ConsoleIn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::Spawner => "spawner",
            ThreadKind::Block => "block",
            ThreadKind::Net => "net",
            ThreadKind::Rng => "rng",
            ThreadKind::Vsock => "vsock",
            ThreadKind::Balloon => "balloon",
            ThreadKind::ConsoleIn => "console-in",
        }
    }

    fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Process-wide seccomp settings, fixed once at start.
#[derive(Debug, Clone, Copy, Default)]
struct Policy {
    enabled: bool,
    trigger: Option<ThreadKind>,
    /// Log calls outside a list instead of killing (test trigger `log`).
    log_only: bool,
}

static POLICY: OnceLock<Policy> = OnceLock::new();
/// The operator's filters (`--seccomp-filter`), by thread kind name.
static CUSTOM: OnceLock<BTreeMap<&'static str, BpfProgram>> = OnceLock::new();
/// The largest filter file read: Firecracker's whole set is ~30 KiB.
const MAX_FILTER_FILE: u64 = 1 << 20;
/// The kinds a filter file must name: Firecracker's thread kinds.
const REQUIRED_IN_FILE: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Vcpu];
static VM_STARTED: AtomicBool = AtomicBool::new(false);

/// Turns filtering on (vmm's default) or off (`--no-seccomp`) for the rest
/// of the process, compiles the operator's filter file if any, and reads
/// the test trigger. Without this call (the library in unit tests) no
/// filter is ever installed.
pub fn configure(enabled: bool, filter_file: Option<&Path>) -> Result<(), Error> {
    if let Some(path) = filter_file.filter(|_| enabled) {
        let _ = CUSTOM.set(load_filter_file(path)?);
    }
    let mut policy = Policy {
        enabled,
        ..Policy::default()
    };
    match std::env::var(TEST_TRIGGER_ENV) {
        Ok(name) if enabled && name == "log" => policy.log_only = true,
        Ok(name) if enabled => {
            let kind =
                ThreadKind::parse(&name).ok_or_else(|| Error::UnknownTrigger(name.clone()))?;
            policy.trigger = Some(kind);
        }
        _ => {}
    }
    let _ = POLICY.set(policy);
    Ok(())
}

/// Whether threads install their filters.
pub fn enabled() -> bool {
    POLICY.get().is_some_and(|p| p.enabled)
}

/// Records that the VM runs: from now on the threads that built it narrow
/// themselves to their run-time lists.
pub(crate) fn mark_vm_started() {
    VM_STARTED.store(true, Ordering::Release);
}

pub fn vm_started() -> bool {
    VM_STARTED.load(Ordering::Acquire)
}

/// Installs `kind`'s filter on the calling thread (nothing when filtering
/// is off), then fires the test trigger if it names `kind`.
pub fn install(kind: ThreadKind) -> Result<(), Error> {
    let policy = POLICY.get().copied().unwrap_or_default();
    if !policy.enabled {
        return Ok(());
    }
    let install = |program: &BpfProgram| {
        seccompiler::apply_filter(program).map_err(|source| Error::Install {
            kind: kind.name(),
            source,
        })
    };
    let program = match CUSTOM.get().and_then(|custom| custom.get(kind.name())) {
        Some(custom) => custom.clone(),
        None => compile(kind, policy.log_only)?,
    };
    // The probe filter first: the kind's own may not admit `seccomp`.
    install(&probe_filter(kind)?)?;
    install(&program)?;
    if policy.trigger == Some(kind) {
        eprintln!(
            "vmm: {TEST_TRIGGER_ENV}: the {} thread makes a forbidden system call (getpgid)",
            kind.name()
        );
        vmm_log!(
            Warning,
            "{TEST_TRIGGER_ENV}: the {} thread makes a forbidden system call",
            kind.name()
        );
        // SAFETY: getpgid has no memory arguments; the filter kills the
        // process before it returns.
        unsafe { libc::getpgid(0) };
    }
    Ok(())
}

/// [`install`], or the end of the process: a thread that would run
/// guest-controlled work without its filter must not run at all.
pub fn install_or_exit(kind: ThreadKind) {
    if let Err(error) = install(kind) {
        vmm_log!(Error, "{error}");
        eprintln!("vmm: error: {error}");
        std::process::exit(1);
    }
}

/// Reads and compiles an operator's filter file (see the module doc).
fn load_filter_file(path: &Path) -> Result<BTreeMap<&'static str, BpfProgram>, Error> {
    let read_error = |source| Error::FilterFile {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::image_file::open(path, false).map_err(read_error)?;
    let mut text = Vec::new();
    file.take(MAX_FILTER_FILE + 1)
        .read_to_end(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_FILTER_FILE {
        return Err(Error::FilterFileTooLarge(path.to_path_buf()));
    }
    let compiled =
        seccompiler::compile_from_json(text.as_slice(), TargetArch::x86_64).map_err(|error| {
            Error::FilterCompile {
                path: path.to_path_buf(),
                message: error.to_string(),
            }
        })?;
    let mut filters = BTreeMap::new();
    for (name, program) in compiled {
        let kind = ThreadKind::parse(&name).ok_or(Error::FilterThread(name))?;
        filters.insert(kind.name(), program);
    }
    match REQUIRED_IN_FILE
        .iter()
        .find(|kind| !filters.contains_key(kind.name()))
    {
        Some(missing) => Err(Error::FilterMissing(missing.name())),
        None => Ok(filters),
    }
}

/// The compiled filter of `kind` for this machine's architecture.
pub fn program(kind: ThreadKind) -> Result<BpfProgram, Error> {
    compile(kind, false)
}

fn compile(kind: ThreadKind, log_only: bool) -> Result<BpfProgram, Error> {
    let mismatch = if log_only {
        SeccompAction::Log
    } else {
        SeccompAction::KillProcess
    };
    let build = |source| Error::Build {
        kind: kind.name(),
        source,
    };
    let filter = SeccompFilter::new(
        rules(kind).map_err(build)?,
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

/// The flags glibc opens its probe files with (see [`probe_filter`]).
const PROBE_OPEN_FLAGS: u64 = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;

/// The second filter every thread installs: a read-only `openat` fails
/// with ENOENT instead of opening anything. glibc's malloc reads
/// /proc/sys/vm/overcommit_memory the first time it shrinks a thread's
/// heap, in whatever thread frees then, and copes with the file missing
/// (it then behaves as with overcommit allowed). Each kind's own list
/// admits that one `openat` form (a filter that kills would win over this
/// one); this filter makes sure it never opens a file.
pub fn probe_filter(kind: ThreadKind) -> Result<BpfProgram, Error> {
    let build = |source| Error::Build {
        kind: kind.name(),
        source,
    };
    let mut rules = Rules::new();
    allow_if(
        &mut rules,
        libc::SYS_openat,
        vec![vec![eq(2, PROBE_OPEN_FLAGS).map_err(build)?]],
    )
    .map_err(build)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOENT as u32),
        TargetArch::x86_64,
    )
    .map_err(build)?;
    BpfProgram::try_from(filter).map_err(build)
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;
type RuleResult<T> = Result<T, seccompiler::BackendError>;

/// A call admitted whatever its arguments.
fn allow(rules: &mut Rules, syscalls: &[i64]) {
    for &nr in syscalls {
        rules.insert(nr, Vec::new());
    }
}

fn eq(arg: u8, value: u64) -> RuleResult<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

fn qeq(arg: u8, value: u64) -> RuleResult<SeccompCondition> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)
}

/// `arg & mask == 0`.
fn clear(arg: u8, mask: u64) -> RuleResult<SeccompCondition> {
    SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        0,
    )
}

/// A call admitted when one of `alternatives` (each a list of conditions
/// that must all hold) matches. Adds to the call's earlier rules.
fn allow_if(
    rules: &mut Rules,
    nr: i64,
    alternatives: Vec<Vec<SeccompCondition>>,
) -> RuleResult<()> {
    let entry = rules.entry(nr).or_default();
    for conditions in alternatives {
        entry.push(SeccompRule::new(conditions)?);
    }
    Ok(())
}

/// `syscall(fd, request, ...)` with `request` one of `requests`.
fn allow_requests(rules: &mut Rules, nr: i64, requests: &[u64]) -> RuleResult<()> {
    let alternatives = requests
        .iter()
        .map(|&r| eq(1, r).map(|c| vec![c]))
        .collect::<RuleResult<Vec<_>>>()?;
    allow_if(rules, nr, alternatives)
}

/// KVM ioctl request numbers the run-time threads use.
mod kvm {
    use kvm_bindings::{
        kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
        kvm_msrs, kvm_pit_state2, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    };
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    const KVMIO: u32 = 0xAE;
    ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
    ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
    ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
    ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
    ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
    ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
    ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
    ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
    ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
    ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
    ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
    ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
    ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
    ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
    ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
    ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_bindings::kvm_dirty_log);

    /// What a snapshot reads of a paused VM: every vCPU's state, the
    /// in-kernel devices' (`Vcpu`/`Vm::save_state`) and KVM's dirty page
    /// log (`Vm::dirty_log`: read and cleared, which changes no vCPU).
    pub fn snapshot_reads() -> [u64; 15] {
        [
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
            KVM_GET_MP_STATE(),
            KVM_GET_XSAVE(),
            KVM_GET_XCRS(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_LAPIC(),
            KVM_GET_MSRS(),
            KVM_GET_VCPU_EVENTS(),
            KVM_GET_CPUID2(),
            KVM_GET_TSC_KHZ(),
            KVM_GET_IRQCHIP(),
            KVM_GET_PIT2(),
            KVM_GET_CLOCK(),
            KVM_GET_DIRTY_LOG(),
        ]
    }

    pub fn run() -> u64 {
        KVM_RUN()
    }

    pub fn get_regs() -> u64 {
        KVM_GET_REGS()
    }

    pub fn get_sregs() -> u64 {
        KVM_GET_SREGS()
    }
}

/// What every thread needs to live and end: memory (never executable),
/// locks and condition variables, clocks, signal masks, its own exit, the
/// per-thread hash keys std draws, and writing log lines and panics.
fn thread_basics(rules: &mut Rules) -> RuleResult<()> {
    allow(
        rules,
        &[
            libc::SYS_futex,
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_mremap,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getrandom,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_close,
            libc::SYS_write,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    // Signals to this process's own threads only: a vCPU's kick (pause),
    // abort()'s SIGABRT.
    // SAFETY: getpid has no arguments and cannot fail.
    let pid = u64::try_from(unsafe { libc::getpid() }).unwrap_or(0);
    allow_if(rules, libc::SYS_tgkill, vec![vec![eq(0, pid)?]])?;
    // Closing a descriptor: in debug builds std first checks it is open.
    allow_requests(rules, libc::SYS_fcntl, &[libc::F_GETFD as u64])?;
    // glibc's read-only probes, which the probe filter fails with ENOENT.
    allow_if(
        rules,
        libc::SYS_openat,
        vec![vec![eq(2, PROBE_OPEN_FLAGS)?]],
    )?;
    let prot_exec = libc::PROT_EXEC as u64;
    allow_if(rules, libc::SYS_mmap, vec![vec![clear(2, prot_exec)?]])?;
    allow_if(rules, libc::SYS_mprotect, vec![vec![clear(2, prot_exec)?]])?;
    Ok(())
}

/// Polling and eventfd/timerfd reads and writes of a device worker.
fn worker_basics(rules: &mut Rules) -> RuleResult<()> {
    thread_basics(rules)?;
    allow(
        rules,
        &[
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_read,
            libc::SYS_timerfd_settime,
        ],
    );
    Ok(())
}

fn block(rules: &mut Rules) -> RuleResult<()> {
    worker_basics(rules)?;
    // Sector I/O at an offset, and the flush (block.rs).
    allow(
        rules,
        &[libc::SYS_pread64, libc::SYS_pwrite64, libc::SYS_fdatasync],
    );
    // Discard punches a hole, write-zeroes zeroes a range (block.rs).
    let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64;
    let zero = (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE) as u64;
    allow_if(
        rules,
        libc::SYS_fallocate,
        vec![vec![eq(1, punch)?], vec![eq(1, zero)?]],
    )
}

fn net(rules: &mut Rules) -> RuleResult<()> {
    // The TAP is read and written a frame at a time. The metadata service
    // (mmds) needs nothing more: its session tokens and hash keys come
    // from getrandom, its clocks from clock_gettime (the thread basics),
    // its TCP timers from a timerfd made at build time and armed here
    // (the worker basics).
    worker_basics(rules)
}

fn rng(rules: &mut Rules) -> RuleResult<()> {
    worker_basics(rules)
}

fn vsock(rules: &mut Rules) -> RuleResult<()> {
    worker_basics(rules)?;
    allow(
        rules,
        &[
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
        ],
    );
    // Streams to the host's Unix sockets (muxer.rs), and nothing else.
    let unix = libc::AF_UNIX as u64;
    let stream = (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64;
    allow_if(
        rules,
        libc::SYS_socket,
        vec![vec![eq(0, unix)?, eq(1, stream)?, eq(2, 0)?]],
    )?;
    // set_nonblocking on accepted streams, try_clone of a handshake's.
    allow_requests(rules, libc::SYS_ioctl, &[libc::FIONBIO])?;
    allow_requests(rules, libc::SYS_fcntl, &[libc::F_DUPFD_CLOEXEC as u64])
}

/// The balloon gives inflated pages back with `madvise(MADV_DONTNEED)`
/// (balloon.rs), and nothing else: its `madvise` rule replaces the
/// basics' (any advice) with that one. Its statistics timer is armed and
/// disarmed with timerfd_settime and read (the worker basics).
fn balloon(rules: &mut Rules) -> RuleResult<()> {
    worker_basics(rules)?;
    rules.remove(&libc::SYS_madvise);
    allow_if(
        rules,
        libc::SYS_madvise,
        vec![vec![eq(2, libc::MADV_DONTNEED as u64)?]],
    )
}

fn vcpu(rules: &mut Rules) -> RuleResult<()> {
    thread_basics(rules)?;
    // The console log's rotation (console_log.rs); eventfd writes (irqfds,
    // a device's kill fd) are `write`s.
    allow(rules, &[libc::SYS_rename, libc::SYS_renameat]);
    // The registers are read only to say where a failed or triple-faulted
    // vCPU was.
    allow_requests(
        rules,
        libc::SYS_ioctl,
        &[kvm::run(), kvm::get_regs(), kvm::get_sregs()],
    )?;
    // Activating a device (a guest's MMIO write) clones its eventfds and
    // makes its worker's stop eventfd.
    allow_requests(rules, libc::SYS_fcntl, &[libc::F_DUPFD_CLOEXEC as u64])?;
    allow_if(
        rules,
        libc::SYS_eventfd2,
        vec![vec![eq(1, libc::EFD_NONBLOCK as u64)?]],
    )?;
    // File::create of the console log's next file (console_log.rs).
    let create = (libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC) as u64;
    allow_if(rules, libc::SYS_openat, vec![vec![eq(2, create)?]])
}

fn console_in(rules: &mut Rules) -> RuleResult<()> {
    thread_basics(rules)?;
    allow(rules, &[libc::SYS_read]);
    Ok(())
}

/// Thread creation as std does it, and what a new thread does before its
/// filter is on: name itself, install the filter.
fn thread_creation(rules: &mut Rules) -> RuleResult<()> {
    allow(
        rules,
        &[
            libc::SYS_clone3,
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
            libc::SYS_seccomp,
        ],
    );
    // clone: threads only (glibc's fallback where clone3 is missing).
    let thread = libc::CLONE_THREAD as u64;
    allow_if(
        rules,
        libc::SYS_clone,
        vec![vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(thread),
            thread,
        )?]],
    )?;
    let name = libc::PR_SET_NAME as u64;
    let no_new_privs = libc::PR_SET_NO_NEW_PRIVS as u64;
    allow_if(
        rules,
        libc::SYS_prctl,
        vec![vec![eq(0, name)?], vec![eq(0, no_new_privs)?, qeq(1, 1)?]],
    )
}

fn spawner(rules: &mut Rules) -> RuleResult<()> {
    // Its children inherit this filter: it admits what each worker does.
    block(rules)?;
    net(rules)?;
    rng(rules)?;
    vsock(rules)?;
    thread_creation(rules)?;
    // Last: the balloon's narrower madvise must not replace the basics'
    // any-advice rule the other workers inherit through this filter.
    let madvise = rules.remove(&libc::SYS_madvise);
    balloon(rules)?;
    if let Some(any_advice) = madvise {
        rules.insert(libc::SYS_madvise, any_advice);
    }
    Ok(())
}

fn api(rules: &mut Rules) -> RuleResult<()> {
    thread_basics(rules)?;
    // The acceptor starts a thread per connection.
    thread_creation(rules)?;
    allow(
        rules,
        &[
            libc::SYS_accept4,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            // A rate limiter's update arms or disarms its timer.
            libc::SYS_timerfd_settime,
        ],
    );
    drive_image_open(rules)?;
    snapshot_create(rules)
}

/// `PUT /snapshot/create` runs on the API thread, as Firecracker's does on
/// its VMM thread: it reads the paused VM's state through KVM (reads only,
/// and the dirty page log: nothing here can change a vCPU) and creates
/// the two files the caller named, write-only, non-blocking (a FIFO fails
/// at once), truncated or (a Diff snapshot's memory file) not, then
/// writes, sizes and syncs them. It cannot open a file for reading this
/// way, nor remove or rename one.
fn snapshot_create(rules: &mut Rules) -> RuleResult<()> {
    allow_requests(rules, libc::SYS_ioctl, &kvm::snapshot_reads())?;
    let update = (libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
    let create = update | libc::O_TRUNC as u64;
    allow_if(
        rules,
        libc::SYS_openat,
        vec![vec![eq(2, create)?], vec![eq(2, update)?]],
    )?;
    allow(
        rules,
        &[
            libc::SYS_write,
            libc::SYS_pwrite64,
            libc::SYS_ftruncate,
            libc::SYS_fsync,
        ],
    );
    Ok(())
}

/// `PATCH /drives/{id}` with `path_on_host` opens the drive's new image on
/// the API thread (`image_file::open`): the caller must hear at once
/// whether it opens, and nothing else may change a running drive. Only
/// that open is admitted: O_RDONLY or O_RDWR, always with O_NONBLOCK (a
/// FIFO cannot hold the thread, and the controller's lock, waiting for a
/// writer) and O_CLOEXEC, never O_CREAT, O_TRUNC or O_PATH, so the thread
/// can neither create nor truncate a file. Then statx of the open
/// descriptor (std's `File::metadata`: empty path, AT_EMPTY_PATH) for its
/// type, fcntl F_GETFL/F_SETFL to make it blocking, and lseek to its end
/// for its size.
fn drive_image_open(rules: &mut Rules) -> RuleResult<()> {
    let image = (libc::O_NONBLOCK | libc::O_CLOEXEC) as u64;
    allow_if(
        rules,
        libc::SYS_openat,
        vec![
            vec![eq(2, libc::O_RDONLY as u64 | image)?],
            vec![eq(2, libc::O_RDWR as u64 | image)?],
        ],
    )?;
    allow_if(
        rules,
        libc::SYS_statx,
        vec![vec![eq(2, libc::AT_EMPTY_PATH as u64)?]],
    )?;
    allow_requests(
        rules,
        libc::SYS_fcntl,
        &[libc::F_GETFL as u64, libc::F_SETFL as u64],
    )?;
    allow(rules, &[libc::SYS_lseek]);
    Ok(())
}

fn vmm(rules: &mut Rules) -> RuleResult<()> {
    thread_basics(rules)?;
    // Removing the API and vsock socket files on the way out.
    allow(rules, &[libc::SYS_unlink]);
    Ok(())
}

fn rules(kind: ThreadKind) -> RuleResult<Rules> {
    let mut rules = Rules::new();
    match kind {
        ThreadKind::Vmm => vmm(&mut rules)?,
        ThreadKind::Vcpu => vcpu(&mut rules)?,
        ThreadKind::Api => api(&mut rules)?,
        ThreadKind::Spawner => spawner(&mut rules)?,
        ThreadKind::Block => block(&mut rules)?,
        ThreadKind::Net => net(&mut rules)?,
        ThreadKind::Rng => rng(&mut rules)?,
        ThreadKind::Vsock => vsock(&mut rules)?,
        ThreadKind::Balloon => balloon(&mut rules)?,
        ThreadKind::ConsoleIn => console_in(&mut rules)?,
    }
    Ok(rules)
}

type Job = Box<dyn FnOnce() + Send + 'static>;
type Reply = Sender<std::io::Result<JoinHandle<()>>>;

static SPAWNER: OnceLock<Mutex<Sender<(String, Job, Reply)>>> = OnceLock::new();

/// Starts the spawner thread (when filtering is on): from then on
/// [`spawn`] creates threads through it. Called while the VM is built,
/// before any vCPU runs.
pub(crate) fn start_spawner() -> Result<(), Error> {
    if !enabled() || SPAWNER.get().is_some() {
        return Ok(());
    }
    let (requests, jobs) = channel::<(String, Job, Reply)>();
    std::thread::Builder::new()
        .name("vmm_spawner".into())
        .spawn(move || {
            install_or_exit(ThreadKind::Spawner);
            for (name, job, reply) in jobs {
                let _ = reply.send(std::thread::Builder::new().name(name).spawn(job));
            }
        })
        .map_err(|e| Error::Spawn("vmm_spawner".into(), e))?;
    let _ = SPAWNER.set(Mutex::new(requests));
    Ok(())
}

/// A device worker thread named `name` running `body`: through the
/// spawner thread once it runs (so the new thread inherits the spawner's
/// filter, not its caller's), directly otherwise.
pub fn spawn<F>(name: &str, body: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let Some(spawner) = SPAWNER.get() else {
        return std::thread::Builder::new().name(name.into()).spawn(body);
    };
    let (reply, result) = channel();
    let sent = spawner.lock().unwrap_or_else(|p| p.into_inner()).send((
        name.into(),
        Box::new(body),
        reply,
    ));
    let gone = || std::io::Error::other("the spawner thread has ended");
    sent.map_err(|_| gone())?;
    result.recv().map_err(|_| gone())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles_for_x86_64() {
        for kind in ThreadKind::ALL {
            let program = program(kind).unwrap_or_else(|e| panic!("{e}"));
            assert!(!program.is_empty(), "{}", kind.name());
            assert!(!probe_filter(kind).unwrap().is_empty());
            // The kernel's limit on one program (BPF_MAXINSNS).
            assert!(program.len() <= 4096, "{}: {}", kind.name(), program.len());
        }
    }

    #[test]
    fn the_spawner_admits_what_each_worker_does() {
        let spawner = rules(ThreadKind::Spawner).unwrap();
        for kind in [
            ThreadKind::Block,
            ThreadKind::Net,
            ThreadKind::Rng,
            ThreadKind::Vsock,
            ThreadKind::Balloon,
        ] {
            for nr in rules(kind).unwrap().keys() {
                assert!(
                    spawner.contains_key(nr),
                    "{}: syscall {nr} missing from the spawner",
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn the_net_worker_may_run_the_metadata_service() {
        let net = rules(ThreadKind::Net).unwrap();
        for nr in [
            libc::SYS_getrandom,
            libc::SYS_clock_gettime,
            libc::SYS_timerfd_settime,
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_poll,
        ] {
            assert!(net.contains_key(&nr), "syscall {nr}");
        }
        // Its timer is made before the filter, never by the worker.
        assert!(!net.contains_key(&libc::SYS_timerfd_create));
        assert!(!net.contains_key(&libc::SYS_socket));
    }

    #[test]
    fn the_balloon_may_only_drop_pages() {
        let balloon = rules(ThreadKind::Balloon).unwrap();
        assert_eq!(
            balloon[&libc::SYS_madvise].len(),
            1,
            "madvise(MADV_DONTNEED) only"
        );
        assert!(!balloon.contains_key(&libc::SYS_timerfd_create));
        assert!(!balloon.contains_key(&libc::SYS_clone3));
        // The spawner keeps every worker's madvise (any advice).
        let spawner = rules(ThreadKind::Spawner).unwrap();
        assert!(spawner[&libc::SYS_madvise].is_empty());
        assert!(rules(ThreadKind::Rng).unwrap()[&libc::SYS_madvise].is_empty());
    }

    #[test]
    fn the_vcpu_filter_admits_only_its_kvm_ioctls() {
        let vcpu = rules(ThreadKind::Vcpu).unwrap();
        assert_eq!(
            vcpu[&libc::SYS_ioctl].len(),
            3,
            "KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS"
        );
        assert!(!vcpu.contains_key(&libc::SYS_clone3));
        assert!(!vcpu.contains_key(&libc::SYS_socket));
        for kind in ThreadKind::ALL {
            assert!(!rules(kind).unwrap().contains_key(&libc::SYS_getpgid));
            assert!(!rules(kind).unwrap().contains_key(&libc::SYS_execve));
        }
    }

    /// Under a thread's filters a read-only open fails with ENOENT and the
    /// process lives on.
    #[test]
    fn read_only_opens_fail_without_killing() {
        let probe = probe_filter(ThreadKind::Rng).unwrap();
        let program = program(ThreadKind::Rng).unwrap();
        let path = c"/proc/sys/vm/overcommit_memory";
        // SAFETY: as in `a_forbidden_call_kills_the_process`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: in the child, as above.
            unsafe {
                if seccompiler::apply_filter(&probe).is_err()
                    || seccompiler::apply_filter(&program).is_err()
                {
                    libc::_exit(3);
                }
                let fd = libc::openat(
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                );
                let errno = *libc::__errno_location();
                libc::_exit(if fd < 0 && errno == libc::ENOENT {
                    0
                } else {
                    4
                });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }

    #[test]
    fn kvm_request_numbers_are_the_kernels() {
        // <linux/kvm.h>: _IO(KVMIO, 0x80), _IOR(KVMIO, 0x81, struct kvm_regs),
        // _IOR(KVMIO, 0x83, struct kvm_sregs).
        assert_eq!(kvm::run(), 0xAE80);
        assert_eq!(kvm::get_regs(), 0x8090_AE81);
        assert_eq!(kvm::get_sregs(), 0x8138_AE83);
    }

    #[test]
    fn thread_kinds_parse_by_name() {
        for kind in ThreadKind::ALL {
            assert_eq!(ThreadKind::parse(kind.name()), Some(kind));
        }
        assert_eq!(ThreadKind::parse("nope"), None);
    }

    /// A filtered child process: an allowed call works, `getpgid` kills it
    /// with SIGSYS.
    #[test]
    fn a_forbidden_call_kills_the_process() {
        let program = program(ThreadKind::Rng).unwrap();
        // SAFETY: the child only calls async-signal-safe functions and
        // `_exit`s; the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: in the child, as above.
            unsafe {
                if seccompiler::apply_filter(&program).is_err() {
                    libc::_exit(3);
                }
                libc::getpgid(0);
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
