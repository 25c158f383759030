//! The jailer's steps, in the order they must happen.
//!
//! [`run`] enters new mount, IPC, UTS and PID namespaces, opens everything
//! the jail needs while the mount namespace is still a copy of the host's
//! ([`Prepared`]) and forks the jailed process, PID 1 of the new PID
//! namespace. The child ([`enter`]) builds the root on a tmpfs, pivots
//! into it, gives up root and execs;
//! it reports a failure through a close-on-exec pipe, so the parent learns
//! "it runs" (the pipe closes empty at exec) or "why not" (the text).
//!
//! Single-threaded by construction (the binary does nothing else), so the
//! child may allocate after `fork`.

use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::spec::JAIL_RUN_DIR;
use crate::{elf, JailError, JailSpec};

/// Mount options of the jail's root: small, and no inode to spare.
const ROOT_TMPFS_OPTIONS: &str = "size=1m,nr_inodes=256,mode=0755";

/// The host side of one bind: an `O_PATH` descriptor opened before any
/// namespace changed, and where it goes.
struct OpenBind {
    fd: OwnedFd,
    jail: PathBuf,
    writable: bool,
    exec: bool,
}

/// Everything opened or looked up on the host before the jail is built.
pub struct Prepared {
    run_dir: OwnedFd,
    binds: Vec<OpenBind>,
    /// Device path and its `st_rdev`.
    devices: Vec<(PathBuf, u64)>,
    dev_null: File,
    cap_last: u32,
}

fn o_path(path: &Path, flags: i32) -> Result<OwnedFd, JailError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC | flags)
        .open(path)
        .map_err(JailError::io(format!("open {}", path.display())))?;
    Ok(file.into())
}

/// Checks the spec and opens what it names, with host paths resolved now.
pub fn prepare(spec: &JailSpec) -> Result<Prepared, JailError> {
    spec.validate()?;
    if !elf::is_static(&spec.exec.host)
        .map_err(JailError::io(format!("read {}", spec.exec.host.display())))?
    {
        return Err(JailError::Dynamic(spec.exec.host.clone()));
    }
    let run_dir = o_path(&spec.run_dir, libc::O_DIRECTORY)?;
    let mut binds = Vec::new();
    for (bind, writable) in spec.binds() {
        let fd = o_path(&bind.host, 0)?;
        let meta = File::from(fd.try_clone().map_err(JailError::io("dup"))?)
            .metadata()
            .map_err(JailError::io(format!("stat {}", bind.host.display())))?;
        if !meta.is_file() {
            return Err(JailError::NotAFile(bind.host.clone()));
        }
        binds.push(OpenBind {
            fd,
            jail: bind.jail.clone(),
            writable,
            exec: std::ptr::eq(bind, &spec.exec),
        });
    }
    let mut devices = Vec::new();
    for device in &spec.devices {
        let meta = std::fs::metadata(device)
            .map_err(JailError::io(format!("stat {}", device.display())))?;
        if !meta.file_type().is_char_device() {
            return Err(JailError::NotADevice(device.clone()));
        }
        devices.push((device.clone(), meta.rdev()));
    }
    let dev_null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(JailError::io("open /dev/null"))?;
    let cap_last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63);
    Ok(Prepared {
        run_dir,
        binds,
        devices,
        dev_null,
        cap_last,
    })
}

/// Runs the jailer: prepare, fork into a new PID namespace, wait for the
/// exec, print the pid, wait for stdin to close. Returns the jailed
/// process's host pid (already printed).
pub fn run(spec: &JailSpec) -> Result<u32, JailError> {
    spec.validate()?;
    // The new PID namespace is the next child's; the others are ours and
    // the child's. The host's files are opened inside the new mount
    // namespace (a bind mount's source must be in the caller's), before
    // anything is mounted there, so they resolve as on the host.
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWPID;
    // SAFETY: unshare with flag constants.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(JailError::last_os("unshare(mount, IPC, UTS, PID)"));
    }
    // Nothing mounted from here on reaches the host's namespace.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let prepared = prepare(spec)?;
    let (report_read, report_write) = pipe()?;
    // SAFETY: this process is single-threaded (see the module docs), so
    // the child may run ordinary Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(JailError::last_os("fork"));
    }
    if pid == 0 {
        drop(report_read);
        let error = match enter(spec, &prepared) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let mut pipe = File::from(report_write);
        let _ = pipe.write_all(error.to_string().as_bytes());
        // SAFETY: leaving the child without running the parent's exit code.
        unsafe { libc::_exit(1) };
    }
    drop(report_write);
    let mut failure = String::new();
    let _ = File::from(report_read).read_to_string(&mut failure);
    let pid = u32::try_from(pid).map_err(|_| JailError::last_os("fork"))?;
    if !failure.is_empty() {
        reap(pid);
        return Err(JailError::Step {
            step: "jail".into(),
            source: std::io::Error::other(failure),
        });
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{pid}")
        .and_then(|()| out.flush())
        .map_err(JailError::io("report the pid"))?;
    // The launcher closes our stdin once it holds a pidfd; until then the
    // jailed process stays our child, so its pid cannot be reused even if
    // it exits at once.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    Ok(pid)
}

fn reap(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    let mut status = 0;
    // SAFETY: waitpid on our own child with a live status int.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

fn pipe() -> Result<(OwnedFd, OwnedFd), JailError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors into a live array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::last_os("pipe2"));
    }
    // SAFETY: the kernel just returned both descriptors; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cstring(bytes: &[u8]) -> Result<CString, JailError> {
    CString::new(bytes).map_err(|e| JailError::Step {
        step: "path".into(),
        source: std::io::Error::other(e),
    })
}

fn cpath(path: &Path) -> Result<CString, JailError> {
    cstring(path.as_os_str().as_bytes())
}

/// `mount(2)` with optional source, type and data.
fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let source_c = source.map(cpath).transpose()?;
    let target_c = cpath(target)?;
    let fstype_c = fstype.map(|t| cstring(t.as_bytes())).transpose()?;
    let data_c = data.map(|d| cstring(d.as_bytes())).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for
    // the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source_c),
            target_c.as_ptr(),
            ptr(&fstype_c),
            flags,
            ptr(&data_c).cast(),
        )
    };
    if rc != 0 {
        return Err(JailError::last_os(format!(
            "mount {} on {} (flags {flags:#x})",
            source.map_or("none".into(), |s| s.display().to_string()),
            target.display()
        )));
    }
    Ok(())
}

/// The path of an open descriptor, to bind-mount what it names.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `path` inside `root` (`path` is absolute and normal: validated).
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The jailed child: namespaces, root, identity, exec. Returns only on
/// failure.
fn enter(spec: &JailSpec, prepared: &Prepared) -> Result<std::convert::Infallible, JailError> {
    let root = &spec.run_dir;
    build_root(root, spec, prepared)?;
    pivot(root)?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(ROOT_TMPFS_OPTIONS),
    )?;
    set_hostname(&spec.hostname)?;
    set_limits(spec)?;
    for target in [libc::STDIN_FILENO, libc::STDOUT_FILENO] {
        // SAFETY: dup2 of an open descriptor onto a standard one.
        if unsafe { libc::dup2(prepared.dev_null.as_raw_fd(), target) } < 0 {
            return Err(JailError::last_os("dup2 /dev/null"));
        }
    }
    drop_privileges(spec, prepared.cap_last)?;
    close_on_exec_from(3);
    exec(spec)
}

/// The tmpfs root (mounted over the run directory's path: the run
/// directory itself stays reachable through its descriptor) with the
/// devices, the binds and /run.
fn build_root(root: &Path, spec: &JailSpec, prepared: &Prepared) -> Result<(), JailError> {
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(ROOT_TMPFS_OPTIONS),
    )?;
    for (device, rdev) in &prepared.devices {
        make_device(&under(root, device), *rdev, spec.uid, spec.gid)?;
    }
    for bind in &prepared.binds {
        let target = under(root, &bind.jail);
        make_parent(&target)?;
        File::create(&target).map_err(JailError::io(format!("create {}", target.display())))?;
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        if !bind.writable {
            flags |= libc::MS_RDONLY;
        }
        if !bind.exec {
            flags |= libc::MS_NOEXEC;
        }
        bind_mount(&fd_path(&bind.fd), &target, flags)?;
    }
    let run = under(root, Path::new(JAIL_RUN_DIR));
    std::fs::create_dir(&run).map_err(JailError::io(format!("mkdir {}", run.display())))?;
    bind_mount(
        &fd_path(&prepared.run_dir),
        &run,
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )
}

fn make_parent(path: &Path) -> Result<(), JailError> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent)
            .map_err(JailError::io(format!("mkdir {}", parent.display()))),
        None => Ok(()),
    }
}

/// A bind mount, then a remount for its flags (a bind ignores them).
fn bind_mount(source: &Path, target: &Path, flags: libc::c_ulong) -> Result<(), JailError> {
    mount(Some(source), target, None, libc::MS_BIND, None)?;
    mount(
        None,
        target,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | flags,
        None,
    )
}

fn make_device(path: &Path, rdev: u64, uid: u32, gid: u32) -> Result<(), JailError> {
    make_parent(path)?;
    let c = cpath(path)?;
    // SAFETY: mknod and chown on a NUL-terminated path.
    unsafe {
        if libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, rdev) != 0 {
            return Err(JailError::last_os(format!("mknod {}", path.display())));
        }
        if libc::chown(c.as_ptr(), uid, gid) != 0 {
            return Err(JailError::last_os(format!("chown {}", path.display())));
        }
    }
    Ok(())
}

/// Makes `root` the root: `pivot_root`, the old root detached. Where the
/// current root is the initramfs (`rootfs` cannot be pivoted away, as on
/// a diskless host booted from an initramfs), the root is moved over `/`
/// and chrooted instead, as runc's `--no-pivot`: the old root stays under
/// it, out of reach without CAP_SYS_CHROOT, which the jail drops.
fn pivot(root: &Path) -> Result<(), JailError> {
    let root_c = cpath(root)?;
    let dot = c".";
    // SAFETY: chdir, pivot_root, umount2, mount and chroot on
    // NUL-terminated paths.
    unsafe {
        if libc::chdir(root_c.as_ptr()) != 0 {
            return Err(JailError::last_os(format!("chdir {}", root.display())));
        }
        let pivoted = libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) == 0;
        if pivoted {
            if libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0 {
                return Err(JailError::last_os("detach the old root"));
            }
        } else {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINVAL) {
                return Err(JailError::Step {
                    step: "pivot_root".into(),
                    source: error,
                });
            }
            if libc::mount(
                dot.as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ) != 0
            {
                return Err(JailError::last_os("move the root over /"));
            }
            if libc::chroot(dot.as_ptr()) != 0 {
                return Err(JailError::last_os("chroot"));
            }
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(JailError::last_os("chdir /"));
        }
    }
    Ok(())
}

fn set_hostname(name: &str) -> Result<(), JailError> {
    // SAFETY: sethostname reads `len` bytes from the pointer.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        return Err(JailError::last_os("sethostname"));
    }
    Ok(())
}

fn set_limits(spec: &JailSpec) -> Result<(), JailError> {
    let limits = [
        ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE, spec.max_open_files),
        ("RLIMIT_NPROC", libc::RLIMIT_NPROC, spec.max_processes),
        ("RLIMIT_CORE", libc::RLIMIT_CORE, 0),
        (
            "RLIMIT_FSIZE",
            libc::RLIMIT_FSIZE,
            spec.max_file_size.unwrap_or(libc::RLIM_INFINITY),
        ),
    ];
    for (name, resource, value) in limits {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads one live rlimit.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(JailError::last_os(format!("setrlimit {name} {value}")));
        }
    }
    Ok(())
}

/// The bounding and ambient sets emptied, then the uid and gid changed
/// (which clears the permitted and effective sets), then `no_new_privs`;
/// checked at the end.
fn drop_privileges(spec: &JailSpec, cap_last: u32) -> Result<(), JailError> {
    // SAFETY: prctl, setgroups and set*id with integer arguments (and a
    // null group list of length 0).
    unsafe {
        for cap in 0..=cap_last {
            if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0 {
                return Err(JailError::last_os(format!("drop capability {cap}")));
            }
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(JailError::last_os("clear ambient capabilities"));
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(JailError::last_os("setgroups"));
        }
        if libc::setresgid(spec.gid, spec.gid, spec.gid) != 0 {
            return Err(JailError::last_os(format!("setresgid {}", spec.gid)));
        }
        if libc::setresuid(spec.uid, spec.uid, spec.uid) != 0 {
            return Err(JailError::last_os(format!("setresuid {}", spec.uid)));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(JailError::last_os("no_new_privs"));
        }
    }
    match effective_capabilities()? {
        0 => Ok(()),
        left => Err(JailError::CapabilitiesLeft(left)),
    }
}

/// The effective capability set (capget, version 3).
fn effective_capabilities() -> Result<u64, JailError> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header and the two data structs v3 fills.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(JailError::last_os("capget"));
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// Marks every descriptor from `first` up close-on-exec, so nothing of the
/// launcher's leaks into the jail. Best effort: without close_range
/// (Linux < 5.11) the first 4096 are marked one by one.
fn close_on_exec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with a range and a flag; fcntl on integers.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) == 0 {
            return;
        }
        for fd in first..4096 {
            let fd = fd as libc::c_int;
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// execve of the program at its jail path, with an empty environment.
fn exec(spec: &JailSpec) -> Result<std::convert::Infallible, JailError> {
    let path = cpath(&spec.exec.jail)?;
    let name = spec
        .exec
        .jail
        .file_name()
        .unwrap_or_else(|| OsStr::new("vmm"));
    let mut argv = vec![cstring(name.as_bytes())?];
    for arg in &spec.args {
        argv.push(cstring(arg.as_bytes())?);
    }
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: a NUL-terminated path and null-terminated arrays of
    // NUL-terminated strings, all alive for the call.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr()) };
    Err(JailError::last_os(format!(
        "execve {}",
        spec.exec.jail.display()
    )))
}
