//! Opening the files a VM's configuration names — kernel, initrd, drive
//! images — which an API client chose and the VMM does not trust.
//!
//! What it refuses, and why: anything but a regular file or a block
//! device. A named pipe would make an ordinary `open` wait for a writer
//! (with the API's controller lock held, every later request would wait
//! too), and a read from a character device or socket never ends the
//! way a file does. The open itself never blocks: it is made with
//! `O_NONBLOCK`, the type checked on the descriptor (not on the path,
//! which could be swapped in between), and only then is the descriptor
//! made blocking again for the reads and writes of a file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Opens `path` for reading (and writing when `writable`), refusing what
/// is not a regular file or a block device (see the module docs).
pub fn open(path: &Path, writable: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a directory",
        ));
    }
    if !(kind.is_file() || kind.is_block_device()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file or a block device",
        ));
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns, integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Creates (or truncates) `path` for writing, mode 0600 — a snapshot's
/// state or memory file — refusing what is not a regular file as
/// [`open`] does: a named pipe with no reader fails the open at once
/// instead of waiting for one.
pub fn create(path: &Path) -> io::Result<File> {
    create_with(path, true)
}

/// Opens `path` for writing, creating it (mode 0600) if it is missing and
/// keeping what it holds: a Diff snapshot's memory file, written over the
/// previous snapshot's. Refuses what is not a regular file as [`create`].
pub fn create_or_update(path: &Path) -> io::Result<File> {
    create_with(path, false)
}

fn create_with(path: &Path, truncate: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is not a regular file",
        ));
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns, integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_and_block_devices_open_pipes_and_others_are_refused_at_once() {
        let dir = std::env::temp_dir().join(format!("vmm-image-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("disk.img");
        std::fs::write(&file, b"data").unwrap();
        let opened = open(&file, true).unwrap();
        // SAFETY: F_GETFL on a descriptor `opened` owns.
        let flags = unsafe { libc::fcntl(opened.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "left non-blocking");

        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Without O_NONBLOCK this would wait for a writer forever.
        let error = open(&fifo, false).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        let error = open(Path::new("/dev/null"), false).unwrap_err();
        assert!(error.to_string().contains("not a regular file"), "{error}");
        let error = open(&dir, false).unwrap_err();
        assert!(error.to_string().contains("directory"), "{error}");
        assert!(open(&dir.join("missing"), false).is_err());

        let created = create(&dir.join("new.snap")).unwrap();
        assert_eq!(
            created.metadata().unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A pipe with no reader fails the open; one with a reader is
        // refused after it.
        assert!(create(&fifo).is_err());
        assert!(create(Path::new("/dev/null")).is_err());
        assert!(create(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
