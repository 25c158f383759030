//! Named network namespaces, one per pod, as `ip netns` makes them but
//! without running `ip`: a netns is kept alive by bind-mounting its nsfs
//! file onto `<dir>/<pod-id>`, so it outlives every process in it (the
//! agent included) until [`NetnsDir::remove`] unmounts and unlinks it. The
//! OCI runtime is then pointed at that path.
//!
//! Creating one: a fresh thread calls `unshare(CLONE_NEWNET)`, which moves
//! only that thread into a new netns, bind-mounts
//! `/proc/thread-self/ns/net` onto the file and exits. A thread rather
//! than a forked child because forking a multi-threaded tokio process is
//! unsafe, and a thread that dies takes its netns membership with it; never
//! a runtime thread, which would stay in the pod's network.
//!
//! Before the bind, the same thread sets the two sysctls containerd sets
//! in a pod's netns (its `enable_unprivileged_ports` and
//! `enable_unprivileged_icmp`, defaults since 2.0):
//! `net.ipv4.ip_unprivileged_port_start=0` and
//! `net.ipv4.ping_group_range=0 2147483647`. A pod's containers run in a
//! user namespace of their own while the netns belongs to the host's, so
//! their root holds no `CAP_NET_BIND_SERVICE` over it: without the first,
//! a web server's root could not bind port 80; without the second, `ping`
//! (no `CAP_NET_RAW` in a pod) could not send echo requests. Both reach
//! only this netns (net sysctls are per network namespace), and a thread
//! opens `/proc/sys/net` of its own netns.
//!
//! The directory itself is made a shared mount point (bind-mounted onto
//! itself first if needed), as `ip netns` does with /run/netns: mount
//! namespaces created later (containers, systemd services with private
//! mounts) then see the unmount when a pod's netns is removed, instead of
//! keeping a copy of the mount and with it the whole network namespace.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::error::{NetError, Result};
use super::names::check_id;

/// Set in every pod netns (see the module docs).
const POD_SYSCTLS: [(&str, &str); 2] = [
    ("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0"),
    ("/proc/sys/net/ipv4/ping_group_range", "0 2147483647"),
];

/// `statfs` type of an nsfs file (a bound namespace).
const NSFS_MAGIC: i64 = 0x6e73_6673;

fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn mount(src: &Path, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let (src, target, none) = (cstr(src)?, cstr(target)?, c"none");
    // SAFETY: valid NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            none.as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
}

fn umount_detach(target: &Path) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
}

/// Whether `path` is a bound network namespace (an nsfs mount).
pub fn is_bound(path: &Path) -> bool {
    let Ok(c) = cstr(path) else { return false };
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a live, writable
    // statfs that the call fills.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let nsfs = st.f_type as i64 == NSFS_MAGIC;
    ok && nsfs
}

/// Run `f` on a fresh thread that has entered the netns bound at `path`,
/// and wait for it without blocking the runtime. The thread exits after
/// `f`, so its netns membership goes with it.
pub async fn run_in<T, F>(path: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let fd = open_netns(path)?;
    let owned = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("podnet-netns".into())
        .spawn(move || {
            let res = enter(&fd).map(|()| f());
            let _ = tx.send(res);
        })
        .map_err(|source| NetError::Netns {
            path: owned.clone(),
            op: "spawn a thread to enter",
            source,
        })?;
    let res = rx.await.map_err(|_| NetError::Netns {
        path: owned.clone(),
        op: "run a thread in",
        source: io::Error::other("the thread panicked"),
    })?;
    res.map_err(|source| NetError::Netns {
        path: owned,
        op: "enter (setns)",
        source,
    })
}

/// Open the netns bound at `path` (for `setns` or `IFLA_NET_NS_FD`).
pub fn open_netns(path: &Path) -> Result<OwnedFd> {
    let file = fs::File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetError::Netns {
            path: path.to_path_buf(),
            op: "open",
            source,
        })?;
    if !is_bound(path) {
        return Err(NetError::Netns {
            path: path.to_path_buf(),
            op: "open",
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a bound network namespace"),
        });
    }
    Ok(file.into())
}

/// Move the calling thread into the netns open at `fd`.
pub fn enter(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns on an open namespace descriptor; affects this thread.
    check(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) })
}

/// The directory of a pod network's netns files.
#[derive(Debug, Clone)]
pub struct NetnsDir {
    dir: PathBuf,
}

impl NetnsDir {
    /// The directory `dir` (not touched until used).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        NetnsDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The netns file of `name`.
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn err(&self, op: &'static str) -> impl FnOnce(io::Error) -> NetError + '_ {
        move |source| NetError::Netns {
            path: self.dir.clone(),
            op,
            source,
        }
    }

    /// Create the directory and make it a shared mount point.
    pub fn ensure(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&self.dir)
            .map_err(self.err("create directory"))?;
        let shared = (libc::MS_SHARED | libc::MS_REC) as libc::c_ulong;
        match mount(Path::new(""), &self.dir, shared) {
            Ok(()) => Ok(()),
            // Not a mount point yet: make it one, then share it.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let bind = (libc::MS_BIND | libc::MS_REC) as libc::c_ulong;
                mount(&self.dir, &self.dir, bind).map_err(self.err("bind-mount onto itself"))?;
                mount(Path::new(""), &self.dir, shared).map_err(self.err("make shared"))
            }
            Err(e) => Err(self.err("make shared")(e)),
        }
    }

    /// Create netns `name` (a checked pod id) and return its path; an
    /// existing bound one is kept (creation is idempotent).
    pub fn create(&self, name: &str) -> Result<PathBuf> {
        check_id("netns name", name)?;
        self.ensure()?;
        let path = self.path_of(name);
        if is_bound(&path) {
            return Ok(path);
        }
        let err = |op| {
            let path = path.clone();
            move |source| NetError::Netns { path, op, source }
        };
        // The mount point. A leftover plain file (a crash between this and
        // the mount) is reused.
        fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o444)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(err("create mount point"))?;
        let target = path.clone();
        let bound = std::thread::Builder::new()
            .name("podnet-unshare".into())
            .spawn(move || -> io::Result<()> {
                // SAFETY: unshare affects only this thread, which exits next.
                check(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
                for (sysctl, value) in POD_SYSCTLS {
                    fs::write(sysctl, value).map_err(|e| {
                        io::Error::new(e.kind(), format!("write {value:?} to {sysctl}: {e}"))
                    })?;
                }
                let flags = libc::MS_BIND as libc::c_ulong;
                mount(Path::new("/proc/thread-self/ns/net"), &target, flags)
            })
            .map_err(err("spawn a thread to create"))?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread panicked")));
        if let Err(e) = bound {
            let _ = fs::remove_file(&path);
            return Err(err("unshare and bind-mount")(e));
        }
        Ok(path)
    }

    /// Remove netns `name`: unmount and unlink. `false` if it did not
    /// exist. The netns itself dies when its last process leaves.
    pub fn remove(&self, name: &str) -> Result<bool> {
        check_id("netns name", name)?;
        remove_at(&self.path_of(name))
    }

    /// Remove `name` as [`list`](Self::list) returned it (any file name,
    /// not only a valid pod id: reconcile clears whatever is there).
    pub fn remove_entry(&self, name: &str) -> Result<bool> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(NetError::InvalidArgument(format!(
                "{name:?} is not a file name"
            )));
        }
        remove_at(&self.path_of(name))
    }

    /// The names of the files in the directory (bound or leftover).
    pub fn list(&self) -> Result<Vec<String>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err("list")(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(self.err("list"))?;
            if let Some(name) = entry.file_name().to_str() {
                out.push(name.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Remove every netns in the directory, then the directory's own
    /// shared bind mount and the directory itself if it is empty.
    pub fn remove_all(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for name in self.list()? {
            if remove_at(&self.path_of(&name))? {
                removed.push(name);
            }
        }
        // Undo `ensure`: only a bind of the directory onto itself (its
        // mount's root is not a filesystem's root), never a real
        // filesystem someone mounted there.
        while self_bound(&self.dir)? {
            umount_detach(&self.dir).map_err(self.err("unmount"))?;
        }
        match fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Not empty (a foreign file): leave it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
            Err(e) => return Err(self.err("remove directory")(e)),
        }
        Ok(removed)
    }
}

fn remove_at(path: &Path) -> Result<bool> {
    let err = |op| {
        let path = path.to_path_buf();
        move |source| NetError::Netns { path, op, source }
    };
    match umount_detach(path) {
        Ok(()) => {}
        // Not mounted (a leftover file) or not there at all.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => {}
        Err(e) => return Err(err("unmount")(e)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(err("remove")(e)),
    }
}

/// Whether `dir` is a mount point whose mount is a bind of a directory
/// (its root, field 4 of mountinfo, is not `/`).
fn self_bound(dir: &Path) -> Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(NetError::io("read /proc/self/mountinfo"))?;
    let want = escape_mountinfo(dir);
    Ok(info.lines().any(|line| {
        let mut f = line.split(' ');
        let root = f.nth(3);
        let point = f.next();
        point == Some(want.as_str()) && root.is_some_and(|r| r != "/")
    }))
}

/// A path as mountinfo writes it: space, tab, newline and backslash as
/// octal escapes.
fn escape_mountinfo(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escaping() {
        assert_eq!(
            escape_mountinfo(Path::new("/run/a b\\c")),
            "/run/a\\040b\\134c"
        );
    }
}
