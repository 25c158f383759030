//! User namespaces for a pod's containers: container root is an
//! unprivileged host uid.
//!
//! Each pod gets a range of 65536 host ids (the kubelet's size), and every
//! container of the pod a new user namespace mapping container ids
//! `0..65536` onto it (the same mapping for all of them, so files and IPC
//! objects they share agree on owners). Root in a container then holds
//! capabilities only over what its namespace owns; to the host it is a uid
//! that owns nothing but the container's own writes.
//!
//! The image's layers stay as unpacked (owned by host root, shared by
//! every container): the container sees them through **idmapped mounts**
//! (`mount_setattr(MOUNT_ATTR_IDMAP)`, Linux ≥ 5.12; overlayfs over
//! idmapped layers, ≥ 5.19), one per layer, made with a user namespace of
//! the pod's mapping, below the container's overlay. A file of host root
//! in a layer shows as the container's root, and a change to it is copied
//! up into the container's upper directory owned by the mapped uid.
//! Nothing is chowned or copied. Where the kernel or file system cannot
//! (checked once with [`probe`]), pods run without user namespaces and the
//! agent says so.
//!
//! What it refuses: a range that includes host root or overflows a uid.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::{Result, RuntimeError};

/// Ids per pod: container ids `0..IDS_PER_POD`.
pub const IDS_PER_POD: u32 = 65536;

/// Container ids `0..size` are host ids `host..host + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub host: u32,
    pub size: u32,
}

impl IdMap {
    /// The pod range starting at `host`; refused if it holds host root or
    /// runs past the largest uid.
    pub fn pod(host: u32) -> Result<IdMap> {
        if host == 0 || host.checked_add(IDS_PER_POD).is_none() {
            return Err(RuntimeError::invalid(
                "user namespace range",
                host.to_string(),
                "must start above 0 and end below 4294967295",
            ));
        }
        Ok(IdMap {
            host,
            size: IDS_PER_POD,
        })
    }

    /// A `uid_map`/`gid_map` line.
    fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host, self.size)
    }
}

/// A user namespace with `map` for uids and gids, held by the returned
/// descriptor (the process that made it is gone).
pub fn user_namespace(map: IdMap) -> Result<OwnedFd> {
    let sys = |what: &'static str| move |e: io::Error| RuntimeError::sys(what)(e);
    let (ready_read, ready_write) = pipe().map_err(sys("pipe2"))?;
    let (go_read, go_write) = pipe().map_err(sys("pipe2"))?;
    // SAFETY: the child runs only async-signal-safe calls (unshare, write,
    // read, _exit) on descriptors it inherited: safe after fork in a
    // multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(RuntimeError::sys("fork")(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: as above. The child closes its copies of the parent's
        // ends first, or its read would never see the parent's close.
        unsafe {
            libc::close(ready_read.as_raw_fd());
            libc::close(go_write.as_raw_fd());
            let ok: u8 = u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0);
            libc::write(ready_write.as_raw_fd(), (&ok as *const u8).cast(), 1);
            let mut byte = 0u8;
            libc::read(go_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(ready_write);
    drop(go_read);
    let made = (|| {
        let mut ok = [0u8; 1];
        let n = io::Read::read(&mut fs::File::from(ready_read), &mut ok)
            .map_err(sys("read from the user namespace child"))?;
        if n != 1 || ok[0] != 1 {
            return Err(RuntimeError::sys("unshare(CLONE_NEWUSER)")(
                io::Error::other("the kernel refused a new user namespace"),
            ));
        }
        for file in ["uid_map", "gid_map"] {
            let path = format!("/proc/{pid}/{file}");
            fs::write(&path, map.map_line()).map_err(RuntimeError::io(&path, "write"))?;
        }
        let ns = format!("/proc/{pid}/ns/user");
        let file = fs::File::open(&ns).map_err(RuntimeError::io(&ns, "open"))?;
        Ok(OwnedFd::from(file))
    })();
    drop(go_write);
    let mut status = 0;
    // SAFETY: waitpid on our own child with a live status int.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    made
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors into a live array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned both; nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RuntimeError::invalid("path", path.to_string_lossy(), "contains NUL"))
}

/// Mounts `source` at `target` (an existing directory) with its ids shown
/// through `userns`'s mapping.
pub fn bind_idmapped(source: &Path, target: &Path, userns: BorrowedFd<'_>) -> Result<()> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let source_c = cpath(source)?;
    let target_c = cpath(target)?;
    let sys = |what: &'static str| RuntimeError::sys(what)(io::Error::last_os_error());
    // SAFETY: open_tree on a NUL-terminated path with flag constants.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(sys("open_tree"));
    }
    let tree = i32::try_from(tree).map_err(|_| sys("open_tree"))?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(tree) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).unwrap_or(0),
    };
    // SAFETY: mount_setattr on the detached tree with a live mount_attr of
    // the size given; move_mount of that tree onto a NUL-terminated path.
    unsafe {
        if libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        ) != 0
        {
            return Err(sys("mount_setattr(MOUNT_ATTR_IDMAP)"));
        }
        if libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        ) != 0
        {
            return Err(sys("move_mount"));
        }
    }
    Ok(())
}

/// Whether idmapped layers under an overlay work in `scratch` (a fresh
/// directory on the image store's file system, removed again): a layer
/// file of host root must show as the mapped root through the overlay.
pub fn probe(scratch: &Path) -> Result<()> {
    let result = probe_in(scratch);
    for mount in [scratch.join("merged"), scratch.join("lower")] {
        let _ = super::rootfs::unmount(&mount);
    }
    let _ = fs::remove_dir_all(scratch);
    result
}

fn probe_in(scratch: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let map = IdMap::pod(u32::MAX - IDS_PER_POD - 1)?;
    let dir = |name: &str| {
        let path = scratch.join(name);
        fs::create_dir_all(&path).map_err(RuntimeError::io(&path, "create directory"))?;
        Ok::<_, RuntimeError>(path)
    };
    let (layer, lower, upper, work, merged) = (
        dir("layer")?,
        dir("lower")?,
        dir("upper")?,
        dir("work")?,
        dir("merged")?,
    );
    fs::write(layer.join("file"), b"").map_err(RuntimeError::io(&layer, "write"))?;
    let userns = user_namespace(map)?;
    bind_idmapped(&layer, &lower, std::os::fd::AsFd::as_fd(&userns))?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    super::rootfs::mount_overlay(&merged, &options)?;
    let owner = fs::metadata(merged.join("file"))
        .map_err(RuntimeError::io(&merged, "stat"))?
        .uid();
    if owner != map.host {
        return Err(RuntimeError::invalid(
            "idmapped overlay",
            owner.to_string(),
            "a layer file does not show the mapped owner",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_that_hold_root_or_overflow_are_refused() {
        assert!(IdMap::pod(0).is_err());
        assert!(IdMap::pod(u32::MAX - 10).is_err());
        let map = IdMap::pod(2_000_000_000).unwrap();
        assert_eq!(map.map_line(), "0 2000000000 65536\n");
    }

    #[test]
    fn this_host_idmaps_layers_under_an_overlay() {
        stratum_testkit::root::require_root("idmapped mounts");
        let scratch = tempfile::tempdir().unwrap();
        probe(&scratch.path().join("probe")).unwrap();
        assert!(!scratch.path().join("probe").exists(), "cleaned up");
    }
}
