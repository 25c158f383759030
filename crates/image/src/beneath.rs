//! Resolving archive paths beneath a root directory without ever following
//! a symlink, so no entry of a layer can write outside it.
//!
//! Paths are normalised lexically (empty and `.` components dropped, `..`
//! pops one), and refused if absolute or if `..` would climb above the
//! root. Parents are then opened one component at a time from the root's
//! file descriptor with `O_DIRECTORY | O_NOFOLLOW`: a component that is a
//! symlink (or not a directory) fails to open instead of being followed,
//! and the final operation (create, link, mknod, xattr) is made relative
//! to the parent's descriptor. Nothing is resolved through a path string,
//! so a symlink planted by an earlier entry (`link -> /tmp`, then
//! `link/file`) is refused, not followed.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{mkdirat, openat, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::error::Refusal;

/// An archive path split into normal components.
pub(crate) type Components = Vec<OsString>;

/// Why an entry could not be applied: refused by policy, or an OS error.
#[derive(Debug)]
pub(crate) enum EntryError {
    /// The archive asked for something not allowed.
    Refused(Refusal),
    /// The filesystem failed.
    Io(io::Error),
}

impl From<Refusal> for EntryError {
    fn from(r: Refusal) -> Self {
        EntryError::Refused(r)
    }
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        EntryError::Io(e)
    }
}

impl From<Errno> for EntryError {
    fn from(e: Errno) -> Self {
        EntryError::Io(e.into())
    }
}

/// Normalises a raw archive path; absolute paths and `..` above the root
/// are refused.
pub(crate) fn normalize(raw: &[u8]) -> Result<Components, Refusal> {
    if raw.starts_with(b"/") {
        return Err(Refusal::Escapes);
    }
    let mut out: Components = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop().ok_or(Refusal::Escapes)?;
            }
            name => out.push(OsStr::from_bytes(name).to_owned()),
        }
    }
    Ok(out)
}

/// `a/b/c` for messages.
pub(crate) fn display(components: &[OsString]) -> String {
    let parts: Vec<_> = components.iter().map(|c| c.to_string_lossy()).collect();
    parts.join("/")
}

/// A directory that archive entries are applied beneath.
pub(crate) struct Root {
    fd: OwnedFd,
}

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

impl Root {
    /// Opens `path` (which must be a real directory, not a symlink).
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let fd = openat(CWD, path, DIR_FLAGS, Mode::empty())?;
        Ok(Root { fd })
    }

    /// Opens the directory `dirs` beneath the root, component by
    /// component, never following a symlink. With `create`, missing
    /// directories are made (mode 0755, as tar does for implied parents).
    pub(crate) fn open_dir(&self, dirs: &[OsString], create: bool) -> Result<OwnedFd, EntryError> {
        let mut current = openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        for (i, name) in dirs.iter().enumerate() {
            current = open_child_dir(&current, name, create)
                .map_err(|e| name_refusal(e, &current, name, &dirs[..=i]))?;
        }
        Ok(current)
    }
}

/// Opens (or makes and opens) the directory `name` in `parent`.
fn open_child_dir(parent: &OwnedFd, name: &OsStr, create: bool) -> Result<OwnedFd, Errno> {
    match openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Err(Errno::NOENT) if create => {
            match mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
            openat(parent, name, DIR_FLAGS, Mode::empty())
        }
        other => other,
    }
}

/// Turns a failed open of a parent component into a refusal that says
/// what the component is (symlink, not a directory), or an OS error.
fn name_refusal(err: Errno, parent: &OwnedFd, name: &OsStr, prefix: &[OsString]) -> EntryError {
    if !matches!(err, Errno::LOOP | Errno::NOTDIR) {
        return EntryError::Io(err.into());
    }
    let component = display(prefix);
    match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
            Refusal::ThroughSymlink { component }.into()
        }
        _ => Refusal::NotADirectory { component }.into(),
    }
}

/// The type of `name` in `dir` without following it, `None` if absent.
pub(crate) fn file_type(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileType>> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Makes room for a new entry `name` in `dir`: an existing non-directory
/// is unlinked; an existing directory is kept when the new entry is a
/// directory too (tar merges them), else removed with its contents.
pub(crate) fn clear_for(dir: &OwnedFd, name: &OsStr, new_is_dir: bool) -> io::Result<()> {
    match file_type(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) if new_is_dir => Ok(()),
        Some(FileType::Directory) => remove_tree(dir, name),
        Some(_) => Ok(unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// Removes the directory `name` in `parent` and everything in it, by
/// descriptor (never through a path, never following a symlink).
fn remove_tree(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let fd = openat(parent, name, DIR_FLAGS, Mode::empty())?;
    let mut children = Vec::new();
    for entry in Dir::read_from(&fd)? {
        let entry = entry?;
        let child = OsStr::from_bytes(entry.file_name().to_bytes()).to_owned();
        if child != "." && child != ".." {
            children.push(child);
        }
    }
    for child in children {
        if file_type(&fd, &child)? == Some(FileType::Directory) {
            remove_tree(&fd, &child)?;
        } else {
            unlinkat(&fd, &child, AtFlags::empty())?;
        }
    }
    Ok(unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<String, Refusal> {
        normalize(s.as_bytes()).map(|c| display(&c))
    }

    #[test]
    fn normalises_lexically() {
        assert_eq!(norm("./bin//busybox").ok().as_deref(), Some("bin/busybox"));
        assert_eq!(norm("a/../b/./c/").ok().as_deref(), Some("b/c"));
        assert_eq!(norm("./").ok().as_deref(), Some(""));
    }

    #[test]
    fn refuses_escapes() {
        for bad in ["../escape", "/abs/escape", "a/../../x", ".."] {
            assert_eq!(norm(bad), Err(Refusal::Escapes), "{bad}");
        }
    }

    #[test]
    fn walk_refuses_symlinked_parents() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).expect("symlink");
        std::fs::write(dir.path().join("file"), b"x").expect("file");
        let root = Root::open(dir.path()).expect("root");
        let refused = |p: &str| match root.open_dir(&normalize(p.as_bytes()).expect("norm"), true) {
            Err(EntryError::Refused(r)) => Some(r),
            _ => None,
        };
        assert_eq!(
            refused("link/x"),
            Some(Refusal::ThroughSymlink {
                component: "link".into()
            })
        );
        assert_eq!(
            refused("file/x"),
            Some(Refusal::NotADirectory {
                component: "file".into()
            })
        );
        assert!(root
            .open_dir(&normalize(b"new/sub").expect("norm"), true)
            .is_ok());
        assert!(dir.path().join("new/sub").is_dir());
    }
}
