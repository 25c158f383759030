//! Reading one small file of an image as its containers see it — the
//! layers' merged view, topmost layer first — without mounting an
//! overlay: the image's `/etc/passwd` and `/etc/group`, which say who a
//! user name is and which groups it belongs to.
//!
//! Layer contents are untrusted. Each layer is walked from its root by
//! descriptor, never following a symlink (a `/etc` that links elsewhere
//! is not read through, in this layer or any other), and only a regular
//! file is read, opened non-blocking (a FIFO named `passwd` cannot stall
//! the caller) and only up to a size limit. Whiteouts (0/0 character
//! devices) end the search, and so does an opaque directory on the way.
//! What the walk refuses reads as absent: the caller then falls back to
//! what it does without the file.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{fgetxattr, fstat, openat, statat, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::whiteout::OPAQUE_XATTR;

const DIR_FLAGS: OFlags = OFlags::DIRECTORY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::RDONLY)
    .union(OFlags::CLOEXEC);

const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOCTTY);

/// What one layer says about a path.
enum InLayer {
    /// The file, read.
    Found(Vec<u8>),
    /// Deleted or hidden here (a whiteout, an opaque directory, a
    /// symlink or non-directory on the way, a non-regular file): the
    /// layers below do not count.
    Hidden,
    /// Not in this layer: look below.
    Absent,
}

/// The file at `path` (relative to the image root, `/`-separated, no
/// `..`) in the merged view of `lowerdirs` (top first), if it is a
/// regular file of at most `max_bytes` reached without a symlink. An
/// error only when the layers themselves cannot be read.
pub fn read_file(lowerdirs: &[PathBuf], path: &str, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let components: Vec<OsString> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(OsString::from)
        .collect();
    let Some((name, dirs)) = components.split_last() else {
        return Ok(None);
    };
    if components.iter().any(|c| c == "..") {
        return Ok(None);
    }
    for layer in lowerdirs {
        match in_layer(layer, dirs, name, max_bytes)? {
            InLayer::Found(bytes) => return Ok(Some(bytes)),
            InLayer::Hidden => return Ok(None),
            InLayer::Absent => {}
        }
    }
    Ok(None)
}

fn in_layer(
    layer: &PathBuf,
    dirs: &[OsString],
    name: &OsStr,
    max_bytes: u64,
) -> io::Result<InLayer> {
    let mut dir = openat(CWD, layer, DIR_FLAGS, Mode::empty())?;
    let mut opaque = false;
    for component in dirs {
        match file_type(&dir, component)? {
            None if opaque => return Ok(InLayer::Hidden),
            None => return Ok(InLayer::Absent),
            Some(FileType::Directory) => {}
            Some(_) => return Ok(InLayer::Hidden),
        }
        dir = openat(&dir, component.as_os_str(), DIR_FLAGS, Mode::empty())?;
        opaque |= is_opaque(&dir);
    }
    match file_type(&dir, name)? {
        None if opaque => Ok(InLayer::Hidden),
        None => Ok(InLayer::Absent),
        Some(FileType::RegularFile) => read_regular(&dir, name, max_bytes),
        Some(_) => Ok(InLayer::Hidden),
    }
}

fn read_regular(dir: &OwnedFd, name: &OsStr, max_bytes: u64) -> io::Result<InLayer> {
    let fd = openat(dir, name, FILE_FLAGS, Mode::empty())?;
    let st = fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || u64::try_from(st.st_size).unwrap_or(u64::MAX) > max_bytes
    {
        return Ok(InLayer::Hidden);
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(max_bytes)
        .read_to_end(&mut bytes)?;
    Ok(InLayer::Found(bytes))
}

fn file_type(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileType>> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_opaque(dir: &OwnedFd) -> bool {
    let mut value = [0u8; 1];
    matches!(fgetxattr(dir, OPAQUE_XATTR, &mut value), Ok(1) if value[0] == b'y')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn layers(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let base = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..n).map(|i| base.path().join(i.to_string())).collect();
        for d in &dirs {
            fs::create_dir_all(d).unwrap();
        }
        (base, dirs)
    }

    fn put(layer: &std::path::Path, path: &str, text: &str) {
        let file = layer.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, text).unwrap();
    }

    #[test]
    fn the_topmost_layer_wins() {
        let (_base, dirs) = layers(2);
        put(&dirs[1], "etc/passwd", "bottom");
        assert_eq!(
            read_file(&dirs, "etc/passwd", 100).unwrap().unwrap(),
            b"bottom"
        );
        put(&dirs[0], "etc/passwd", "top");
        assert_eq!(
            read_file(&dirs, "/etc/passwd", 100).unwrap().unwrap(),
            b"top"
        );
        assert_eq!(read_file(&dirs, "etc/group", 100).unwrap(), None);
    }

    #[test]
    fn symlinks_are_not_followed_and_hide_what_is_below() {
        let (base, dirs) = layers(2);
        put(&dirs[1], "etc/passwd", "bottom");
        let outside = base.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("passwd"), "host secret").unwrap();
        symlink(&outside, dirs[0].join("etc")).unwrap();
        assert_eq!(read_file(&dirs, "etc/passwd", 100).unwrap(), None);

        let (base, dirs) = layers(1);
        fs::create_dir_all(dirs[0].join("etc")).unwrap();
        fs::write(base.path().join("secret"), "host secret").unwrap();
        symlink(base.path().join("secret"), dirs[0].join("etc/passwd")).unwrap();
        assert_eq!(read_file(&dirs, "etc/passwd", 100).unwrap(), None);
    }

    #[test]
    fn a_whiteout_deletes_what_is_below() {
        let (_base, dirs) = layers(2);
        put(&dirs[1], "etc/passwd", "bottom");
        fs::create_dir_all(dirs[0].join("etc")).unwrap();
        // The agent runs as root, and so do its tests: mknod of 0/0.
        rustix::fs::mknodat(
            CWD,
            dirs[0].join("etc/passwd"),
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        )
        .unwrap();
        assert_eq!(read_file(&dirs, "etc/passwd", 100).unwrap(), None);
    }

    #[test]
    fn fifos_and_big_files_are_not_read() {
        let (_base, dirs) = layers(1);
        fs::create_dir_all(dirs[0].join("etc")).unwrap();
        let fifo = dirs[0].join("etc/passwd");
        rustix::fs::mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
        assert_eq!(read_file(&dirs, "etc/passwd", 100).unwrap(), None);
        put(&dirs[0], "etc/group", &"x".repeat(101));
        assert_eq!(read_file(&dirs, "etc/group", 100).unwrap(), None);
        assert_eq!(read_file(&dirs, "etc/../../x", 100).unwrap(), None);
    }
}
