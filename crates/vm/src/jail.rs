//! Launching `vmm` in its jail (`stratum-jailer`, see the `stratum_jail`
//! crate): what a VM's jail holds and how its files are made ready for
//! the VM's unprivileged uid.
//!
//! Inside, vmm sees:
//!
//! | jail path            | what                                  |
//! |----------------------|---------------------------------------|
//! | `/vmm`               | the vmm binary, read-only             |
//! | `/vm/kernel`         | the kernel, read-only                 |
//! | `/vm/initrd`         | the initrd, read-only                 |
//! | `/vm/disk<N>`        | disk N, read-only or read-write       |
//! | `/vm/snapshot`, `/vm/memory` | a restore's state and memory files, read-only |
//! | `/dev/kvm`, `/dev/urandom`, `/dev/net/tun` (with NICs) | its own nodes |
//! | `/run`               | the run directory (API socket, console log, vsock sockets) |
//!
//! Before each jailed launch, as root: the run directory is made anew,
//! owned by the uid (mode 0700), so nothing a previous run (perhaps under
//! another uid) left can be in the way or be trusted; the VM's disks
//! (the agent's own per-VM clones) are given to the uid, mode 0600; the
//! kernel and initrd must be world-readable (they are shared, so they are
//! not chowned); each TAP is given to the uid ([`crate::tap`]). A
//! snapshot's files are shared by its clones and readable by its group
//! alone: a restoring vmm runs with that group as its gid.
//!
//! The uid's file size limit is the largest disk or the console's bound,
//! whichever is larger.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use stratum_jail::{Bind, JailSpec};
use stratum_process::pidfd;

use super::launch::{vmm_args, DiskSpec, LaunchError, VmProcessSpec};
use super::run_dir::RunDir;
use super::tap;

/// Who a jailed vmm runs as, and the jailer that puts it there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// The `stratum-jailer` binary.
    pub jailer: PathBuf,
    /// Not 0; one per running VM.
    pub uid: u32,
    /// Not 0; one per running VM.
    pub gid: u32,
}

const JAIL_VMM: &str = "/vmm";
const JAIL_KERNEL: &str = "/vm/kernel";
const JAIL_INITRD: &str = "/vm/initrd";
const JAIL_SNAPSHOT: &str = "/vm/snapshot";
const JAIL_MEMORY: &str = "/vm/memory";
/// vmm's console log bound (`--console-max-bytes`, two generations) with
/// room: the file size limit never cuts the console short.
const CONSOLE_FILE_LIMIT: u64 = 64 << 20;

fn jail_disk(index: usize) -> PathBuf {
    PathBuf::from(format!("/vm/disk{index}"))
}

/// Gets the run directory, disks and TAPs ready for `config`'s uid and
/// returns the jailer's spec and the VM spec as vmm sees it inside.
pub(crate) fn prepare(
    config: &JailConfig,
    vmm_binary: &Path,
    run_dir: &RunDir,
    spec: &VmProcessSpec,
) -> Result<(JailSpec, VmProcessSpec), LaunchError> {
    let mut jail = JailSpec::new(
        &spec.id,
        config.uid,
        config.gid,
        run_dir.path(),
        Bind::new(JAIL_VMM, vmm_binary),
    );
    let mut inside = spec.clone();
    check_readable("kernel", &spec.kernel)?;
    jail.read_only.push(Bind::new(JAIL_KERNEL, &spec.kernel));
    inside.kernel = JAIL_KERNEL.into();
    if let Some(initrd) = &spec.initrd {
        check_readable("initrd", initrd)?;
        jail.read_only.push(Bind::new(JAIL_INITRD, initrd));
        inside.initrd = Some(JAIL_INITRD.into());
    }
    let mut largest_file = CONSOLE_FILE_LIMIT;
    for (i, (disk, seen)) in spec.disks.iter().zip(&mut inside.disks).enumerate() {
        let size = give_disk(disk, config)?;
        largest_file = largest_file.max(size);
        let bind = Bind::new(jail_disk(i), &disk.path);
        if disk.read_only {
            jail.read_only.push(bind);
        } else {
            jail.writable.push(bind);
        }
        seen.path = jail_disk(i);
    }
    if let Some(restore) = &spec.restore {
        jail.read_only
            .push(Bind::new(JAIL_SNAPSHOT, &restore.state));
        jail.read_only.push(Bind::new(JAIL_MEMORY, &restore.memory));
        inside.restore = Some(crate::Restore {
            state: JAIL_SNAPSHOT.into(),
            memory: JAIL_MEMORY.into(),
        });
    }
    for nic in &spec.nics {
        tap::give_to(&nic.tap, config.uid, config.gid)?;
    }
    jail.devices = vec!["/dev/kvm".into(), "/dev/urandom".into()];
    if !spec.nics.is_empty() {
        jail.devices.push("/dev/net/tun".into());
    }
    jail.max_file_size = Some(largest_file);
    let args = vmm_args(
        spec,
        &in_jail_run(&run_dir.api_sock()),
        &in_jail_run(&run_dir.console_log()),
    );
    jail.args = args
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    remake_run_dir(run_dir, config)?;
    Ok((jail, inside))
}

/// Where a file of the run directory is inside the jail (`/run/<name>`).
pub(crate) fn in_jail_run(path: &Path) -> PathBuf {
    Path::new(stratum_jail::spec::JAIL_RUN_DIR).join(path.file_name().unwrap_or_default())
}

/// A shared file the jailed uid must read: world-readable.
fn check_readable(what: &'static str, path: &Path) -> Result<(), LaunchError> {
    let mode = std::fs::metadata(path)
        .map_err(|source| LaunchError::Disk {
            path: path.to_path_buf(),
            op: "stat",
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o004 == 0 {
        return Err(LaunchError::Unreadable {
            what,
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Gives the VM's own disk clone to the uid (0600); returns its size.
fn give_disk(disk: &DiskSpec, config: &JailConfig) -> Result<u64, LaunchError> {
    let err = |op| {
        let path = disk.path.clone();
        move |source| LaunchError::Disk { path, op, source }
    };
    // lchown: a symlink in its place is not followed to another file.
    std::os::unix::fs::lchown(&disk.path, Some(config.uid), Some(config.gid))
        .map_err(err("chown"))?;
    let meta = std::fs::symlink_metadata(&disk.path).map_err(err("stat"))?;
    if !meta.is_file() {
        return Err(err("check")(io::Error::other("not a regular file")));
    }
    std::fs::set_permissions(&disk.path, std::fs::Permissions::from_mode(0o600))
        .map_err(err("chmod"))?;
    Ok(meta.size())
}

/// The run directory, empty, owned by the uid, mode 0700.
fn remake_run_dir(run_dir: &RunDir, config: &JailConfig) -> Result<(), LaunchError> {
    let err = |op| {
        let path = run_dir.path().to_path_buf();
        move |source| LaunchError::RunDir { path, op, source }
    };
    run_dir.remove().map_err(err("remove"))?;
    std::fs::create_dir_all(run_dir.path()).map_err(err("create"))?;
    std::os::unix::fs::chown(run_dir.path(), Some(config.uid), Some(config.gid))
        .map_err(err("chown"))?;
    std::fs::set_permissions(run_dir.path(), std::fs::Permissions::from_mode(0o700))
        .map_err(err("chmod"))
}

/// The pid line the jailer prints once vmm runs; `None` if the jailer
/// closed its stdout without one (it failed; its stderr says why).
pub(crate) fn read_pid(jailer: &mut Child, timeout: Duration) -> Result<Option<u32>, LaunchError> {
    let Some(stdout) = jailer.stdout.as_mut() else {
        return Ok(None);
    };
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut buf = [0u8; 32];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ready =
            pidfd::poll_readable(stdout.as_fd(), left).map_err(|source| LaunchError::Process {
                op: "poll the jailer's output",
                source,
            })?;
        if left.is_zero() || !ready {
            return Err(LaunchError::JailTimeout(timeout));
        }
        let n = stdout
            .read(&mut buf)
            .map_err(|source| LaunchError::Process {
                op: "read the jailer's output",
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(&line[..end]).into_owned();
            return text
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| LaunchError::Process {
                    op: "read the jailer's output",
                    source: io::Error::other(format!("not a pid: {text:?}")),
                });
        }
        if line.len() > 64 {
            return Err(LaunchError::Process {
                op: "read the jailer's output",
                source: io::Error::other("no pid line"),
            });
        }
    }
}
