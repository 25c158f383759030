//! Applying a tar stream to a directory, safely.
//!
//! Every entry is resolved with `beneath.rs` (no `..` or
//! absolute escapes, no writing through symlinks) and created relative to
//! its parent's descriptor. Refused outright: device nodes, hardlinks whose
//! target is absolute, above the root or not an earlier entry of the same
//! archive, and unknown entry types. The first refused entry fails the
//! whole archive; the caller unpacks into a private temp directory and
//! deletes it on failure, so nothing of a refused layer remains.
//!
//! Two modes: [`Mode::Layer`] keeps owners, permissions (setuid/setgid
//! included — images such as `su` or `ping` need them, and the container's
//! user namespace and seccomp, not the store, confine them), mtimes, the
//! `security.capability` xattr (other xattrs, notably `trusted.*` that
//! could forge overlay metadata, are dropped), FIFOs, hardlinks and
//! whiteouts (see [`whiteout`](super::whiteout)). [`UnpackLimits`] caps
//! what one archive may unpack to. [`Mode::Archive`] is for
//! `docker save` / OCI-layout tarballs given to `import`: regular files,
//! directories and symlinks only, owned by the agent, without setuid bits.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    chmodat, chownat, fchmod, fchown, fsetxattr, futimens, linkat, mkdirat, mknodat, openat,
    symlinkat, utimensat, AtFlags, FileType, Gid, Mode as FsMode, OFlags, Timestamps, Uid,
    XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

use super::beneath::{clear_for, normalize, Components, EntryError, Root};
use super::error::{ImageError, Refusal};
use super::whiteout;

/// What an archive is unpacked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// An image layer: full metadata, whiteouts, FIFOs, hardlinks.
    Layer,
    /// An import archive: files, directories and symlinks only.
    Archive,
}

const CAPABILITY_PAX: &str = "SCHILY.xattr.security.capability";

/// How much one archive may unpack to: checked against each entry's
/// declared size before anything of it is written, so a small compressed
/// layer that expands without end (a decompression bomb) is refused at the
/// cap, not when the disk is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// The sum of the entries' sizes.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    /// 16 GiB and a million entries per layer: far above real images (a
    /// full distribution's userland is ~100k files, a few GiB), far below
    /// what fills a host.
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 16 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Unpacks the tar stream `reader` into the existing directory `dest`.
/// `name` (a layer digest or archive path) is used in errors.
pub(crate) fn unpack(
    reader: impl Read,
    dest: &Path,
    mode: Mode,
    name: &str,
    limits: UnpackLimits,
) -> Result<(), ImageError> {
    let root = Root::open(dest).map_err(ImageError::io_at("open", dest))?;
    let mut archive = tar::Archive::new(reader);
    let bad = |source| ImageError::BadArchive {
        layer: name.to_owned(),
        source,
    };
    let mut dirs = Vec::new();
    let (mut bytes, mut entries) = (0u64, 0u64);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        entries += 1;
        bytes = bytes.saturating_add(entry.size());
        if entries > limits.max_entries {
            let reason = Refusal::TooManyEntries {
                max_entries: limits.max_entries,
            };
            return Err(entry_error(name, path, reason.into()));
        }
        if bytes > limits.max_bytes {
            let reason = Refusal::TooLarge {
                max_bytes: limits.max_bytes,
            };
            return Err(entry_error(name, path, reason.into()));
        }
        match apply(&root, &mut entry, mode) {
            Ok(Some(dir)) => dirs.push(dir),
            Ok(None) => {}
            Err(e) => return Err(entry_error(name, path, e)),
        }
    }
    set_dir_times(&root, &dirs).map_err(|e| entry_error(name, String::new(), e))
}

fn entry_error(name: &str, path: String, err: EntryError) -> ImageError {
    match err {
        EntryError::Refused(reason) => ImageError::RefusedEntry {
            layer: name.to_owned(),
            path,
            reason,
        },
        EntryError::Io(source) => ImageError::Io {
            context: format!("{name}: entry {path:?}"),
            source,
        },
    }
}

/// A directory whose mtime is set after all entries (creating entries in
/// it would change it again).
struct DirTime {
    path: Components,
    mtime: i64,
}

/// Owner, permission bits and mtime to give an entry.
struct Meta {
    owner: Option<(Uid, Gid)>,
    perms: u32,
    mtime: i64,
}

impl Meta {
    fn from_header(header: &tar::Header, mode: Mode) -> Result<Self, EntryError> {
        let perms = header.mode()? & 0o7777;
        let mtime = i64::try_from(header.mtime()?).unwrap_or(i64::MAX);
        if mode == Mode::Archive {
            let perms = perms & 0o755;
            return Ok(Meta {
                owner: None,
                perms,
                mtime,
            });
        }
        let uid = id(header.uid()?, "uid")?;
        let gid = id(header.gid()?, "gid")?;
        let owner = Some((Uid::from_raw(uid), Gid::from_raw(gid)));
        Ok(Meta {
            owner,
            perms,
            mtime,
        })
    }

    fn times(&self) -> Timestamps {
        let t = rustix::fs::Timespec {
            tv_sec: self.mtime,
            tv_nsec: 0,
        };
        Timestamps {
            last_access: t,
            last_modification: t,
        }
    }
}

fn id(raw: u64, what: &str) -> Result<u32, EntryError> {
    match u32::try_from(raw) {
        Ok(v) if v != u32::MAX => Ok(v),
        _ => Err(Refusal::Malformed(format!("{what} {raw} out of range")).into()),
    }
}

/// Applies one entry; returns the directory to stamp later, if any.
fn apply<R: Read>(
    root: &Root,
    entry: &mut tar::Entry<R>,
    mode: Mode,
) -> Result<Option<DirTime>, EntryError> {
    let kind = entry.header().entry_type();
    if is_metadata(kind) {
        return Ok(None);
    }
    let path = normalize(&entry.path_bytes())?;
    let Some((name, parents)) = path.split_last() else {
        return Ok(None); // "./": the root itself, which the store owns
    };
    let parent = root.open_dir(parents, true)?;
    if mode == Mode::Layer && whiteout::is_whiteout(name) {
        whiteout::apply(&parent, name)?;
        return Ok(None);
    }
    let meta = Meta::from_header(entry.header(), mode)?;
    create(root, &parent, name, entry, &meta, mode)?;
    Ok((kind == EntryType::Directory).then_some(DirTime {
        mtime: meta.mtime,
        path,
    }))
}

/// Pax and GNU long-name headers, which the tar reader has already
/// applied to the entry that follows.
fn is_metadata(kind: EntryType) -> bool {
    matches!(
        kind,
        EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink
    )
}

/// Creates `name` in `parent` as the entry's type says, or refuses it.
fn create<R: Read>(
    root: &Root,
    parent: &OwnedFd,
    name: &OsStr,
    entry: &mut tar::Entry<R>,
    meta: &Meta,
    mode: Mode,
) -> Result<(), EntryError> {
    match entry.header().entry_type() {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            write_file(parent, name, entry, meta)
        }
        EntryType::Directory => make_dir(parent, name, meta),
        EntryType::Symlink => make_symlink(parent, name, entry, meta),
        EntryType::Link if mode == Mode::Layer => hard_link(root, parent, name, entry),
        EntryType::Fifo if mode == Mode::Layer => make_fifo(parent, name, meta),
        EntryType::Char | EntryType::Block => Err(Refusal::DeviceNode.into()),
        other => Err(Refusal::UnsupportedType(format!("{other:?}")).into()),
    }
}

fn write_file<R: Read>(
    dir: &OwnedFd,
    name: &OsStr,
    entry: &mut tar::Entry<R>,
    meta: &Meta,
) -> Result<(), EntryError> {
    let capability = capability_xattr(entry)?;
    clear_for(dir, name, false)?;
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = openat(dir, name, flags, FsMode::from_raw_mode(0o600))?;
    let mut file = File::from(fd);
    io::copy(entry, &mut file)?;
    if let Some(value) = capability {
        fsetxattr(&file, "security.capability", &value, XattrFlags::empty())?;
    }
    set_fd_meta(file.as_fd(), meta)
}

/// The entry's `security.capability` (file capabilities, e.g. of `ping`),
/// the one xattr kept.
fn capability_xattr<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Option<Vec<u8>>> {
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(None);
    };
    for ext in extensions {
        let ext = ext?;
        if ext.key_bytes() == CAPABILITY_PAX.as_bytes() {
            return Ok(Some(ext.value_bytes().to_vec()));
        }
    }
    Ok(None)
}

/// chown, then chmod (chown clears setuid/setgid), then the mtime.
fn set_fd_meta(fd: std::os::fd::BorrowedFd<'_>, meta: &Meta) -> Result<(), EntryError> {
    if let Some((uid, gid)) = meta.owner {
        fchown(fd, Some(uid), Some(gid))?;
    }
    fchmod(fd, FsMode::from_raw_mode(meta.perms))?;
    futimens(fd, &meta.times())?;
    Ok(())
}

fn make_dir(dir: &OwnedFd, name: &OsStr, meta: &Meta) -> Result<(), EntryError> {
    clear_for(dir, name, true)?;
    match mkdirat(dir, name, FsMode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
    let fd = openat(dir, name, flags, FsMode::empty())?;
    if let Some((uid, gid)) = meta.owner {
        fchown(&fd, Some(uid), Some(gid))?;
    }
    fchmod(&fd, FsMode::from_raw_mode(meta.perms))?;
    Ok(())
}

fn make_symlink<R: Read>(
    dir: &OwnedFd,
    name: &OsStr,
    entry: &tar::Entry<R>,
    meta: &Meta,
) -> Result<(), EntryError> {
    let target = entry
        .link_name_bytes()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::Malformed("symlink without a target".into()))?;
    clear_for(dir, name, false)?;
    symlinkat(OsStr::from_bytes(&target), dir, name)?;
    if let Some((uid, gid)) = meta.owner {
        chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
    }
    utimensat(dir, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// A hardlink to an earlier entry of the same layer, both resolved beneath
/// the root; `linkat` without `AT_SYMLINK_FOLLOW` links a symlink itself,
/// never its target.
fn hard_link<R: Read>(
    root: &Root,
    dir: &OwnedFd,
    name: &OsStr,
    entry: &tar::Entry<R>,
) -> Result<(), EntryError> {
    let raw = entry.link_name_bytes().unwrap_or_default();
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let outside = || Refusal::HardlinkOutside {
        target: shown.clone(),
    };
    let target = normalize(&raw).map_err(|_| outside())?;
    let Some((target_name, target_parents)) = target.split_last() else {
        return Err(outside().into());
    };
    let missing = || Refusal::HardlinkMissing {
        target: shown.clone(),
    };
    let target_dir = match root.open_dir(target_parents, false) {
        Err(EntryError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {
            return Err(missing().into())
        }
        other => other?,
    };
    clear_for(dir, name, false)?;
    match linkat(&target_dir, target_name, dir, name, AtFlags::empty()) {
        Err(Errno::NOENT) => Err(missing().into()),
        other => Ok(other?),
    }
}

fn make_fifo(dir: &OwnedFd, name: &OsStr, meta: &Meta) -> Result<(), EntryError> {
    clear_for(dir, name, false)?;
    mknodat(dir, name, FileType::Fifo, FsMode::from_raw_mode(0o600), 0)?;
    if let Some((uid, gid)) = meta.owner {
        chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)?;
    }
    // The name was just created as a FIFO in a directory only this unpack
    // writes, so following it cannot lead elsewhere.
    chmodat(
        dir,
        name,
        FsMode::from_raw_mode(meta.perms),
        AtFlags::empty(),
    )?;
    utimensat(dir, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn set_dir_times(root: &Root, dirs: &[DirTime]) -> Result<(), EntryError> {
    for dir in dirs.iter().rev() {
        let Some((name, parents)) = dir.path.split_last() else {
            continue;
        };
        // A directory replaced later in the archive (by a file or symlink)
        // is not stamped.
        let parent = match root.open_dir(parents, false) {
            Ok(parent) => parent,
            Err(EntryError::Refused(_)) => continue,
            Err(EntryError::Io(e)) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let times = Meta {
            owner: None,
            perms: 0,
            mtime: dir.mtime,
        }
        .times();
        match utimensat(&parent, name, &times, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
