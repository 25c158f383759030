//! VM disks made from a base image by a fast copy-on-write clone.
//!
//! Why: every VM of a role starts from the same multi-GiB base image, and
//! VM creation must take milliseconds and little space, not a full copy.
//! - Reflink (`FICLONE`) where the filesystem shares extents (XFS, btrfs,
//!   bcachefs, …): constant time, no space until the VM writes.
//! - Otherwise a sparse copy: only the base's data extents are copied
//!   (`SEEK_DATA`/`SEEK_HOLE`), and all-zero blocks inside them are skipped,
//!   then the length is set to the base's. Space used is what the base
//!   really holds; never a dense copy of the holes.
//!
//! The clone is written under a temporary name in the destination's
//! directory, fsynced, and renamed into place without replacing anything
//! (`renameat2(RENAME_NOREPLACE)`), then the directory is fsynced: after a
//! crash the final name either holds a whole disk or does not exist. A
//! failed clone removes its temporary file. Blocking; use `spawn_blocking`.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Copy buffer; also the unit in which data extents are read.
const CHUNK: usize = 1 << 20;
/// Granularity of zero-skipping (the usual filesystem block).
const BLOCK: usize = 4096;

/// How a disk was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMethod {
    /// Extents shared with the base (`FICLONE`).
    Reflink,
    /// Data extents copied, holes kept.
    SparseCopy,
}

/// Why a disk could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The base image does not exist.
    #[error("base image {0} does not exist")]
    BaseMissing(PathBuf),

    /// The base exists but is not a regular file.
    #[error("base image {0} is not a regular file")]
    BaseNotAFile(PathBuf),

    /// Refused to overwrite an existing disk.
    #[error("disk {0} already exists")]
    AlreadyExists(PathBuf),

    /// A disk was asked to be smaller than its base image.
    #[error("a disk of {size} bytes cannot hold its base image {} of {base_size} bytes", base.display())]
    SmallerThanBase {
        base: PathBuf,
        base_size: u64,
        size: u64,
    },

    /// The destination has no file name or parent directory.
    #[error("disk path {0} has no parent directory and file name")]
    BadPath(PathBuf),

    /// A filesystem operation failed.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> DiskError {
    let path = path.to_path_buf();
    move |source| DiskError::Io { path, op, source }
}

/// Makes the disk `dest` from `base` (reflink, else sparse copy). `dest`
/// must not exist; its directory must.
pub fn clone_disk(base: &Path, dest: &Path) -> Result<CloneMethod, DiskError> {
    clone_disk_sized(base, dest, None)
}

/// Like [`clone_disk`], and the disk is grown to `size` bytes (sparse: the
/// growth takes no space until the guest writes there; the guest grows
/// its filesystem, as cloud-init's resizefs does). A size below the base's
/// is refused before anything is made.
pub fn clone_disk_sized(
    base: &Path,
    dest: &Path,
    size: Option<u64>,
) -> Result<CloneMethod, DiskError> {
    let source = open_base(base)?;
    let base_size = source.metadata().map_err(io_err(base, "stat"))?.len();
    if let Some(size) = size.filter(|&size| size < base_size) {
        return Err(DiskError::SmallerThanBase {
            base: base.to_path_buf(),
            base_size,
            size,
        });
    }
    let (dir, name) = split_dest(dest)?;
    if dest.symlink_metadata().is_ok() {
        return Err(DiskError::AlreadyExists(dest.to_path_buf()));
    }
    let temp = TempFile::create(&dir, &name)?;
    let method = fill(&source, base, &temp)?;
    if let Some(size) = size.filter(|&size| size > base_size) {
        temp.file
            .set_len(size)
            .map_err(io_err(&temp.path, "grow"))?;
    }
    temp.file.sync_all().map_err(io_err(&temp.path, "fsync"))?;
    temp.persist(dest)?;
    sync_dir(&dir)?;
    Ok(method)
}

/// Makes the file `dest` with what `fill` writes into it, all or nothing,
/// the way [`clone_disk`] makes a disk: `dest` must not exist.
pub fn create_new_with(
    dest: &Path,
    fill: impl FnOnce(&File) -> io::Result<()>,
) -> Result<(), DiskError> {
    let (dir, name) = split_dest(dest)?;
    let temp = TempFile::create(&dir, &name)?;
    fill(&temp.file).map_err(io_err(&temp.path, "write"))?;
    temp.file.sync_all().map_err(io_err(&temp.path, "fsync"))?;
    temp.persist(dest)?;
    sync_dir(&dir)
}

/// Removes a VM disk; a missing one is not an error.
pub fn remove_disk(path: &Path) -> Result<(), DiskError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path, "remove")(e)),
        _ => Ok(()),
    }
}

fn open_base(base: &Path) -> Result<File, DiskError> {
    let file = File::open(base).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => DiskError::BaseMissing(base.to_path_buf()),
        _ => io_err(base, "open")(e),
    })?;
    let meta = file.metadata().map_err(io_err(base, "stat"))?;
    if !meta.is_file() {
        return Err(DiskError::BaseNotAFile(base.to_path_buf()));
    }
    Ok(file)
}

fn split_dest(dest: &Path) -> Result<(PathBuf, String), DiskError> {
    let bad = || DiskError::BadPath(dest.to_path_buf());
    let name = dest
        .file_name()
        .ok_or_else(bad)?
        .to_string_lossy()
        .into_owned();
    let dir = match dest.parent() {
        Some(p) if p.as_os_str().is_empty() => PathBuf::from("."),
        Some(p) => p.to_path_buf(),
        None => return Err(bad()),
    };
    Ok((dir, name))
}

/// Reflink if the filesystem can, else sparse copy.
fn fill(source: &File, base: &Path, temp: &TempFile) -> Result<CloneMethod, DiskError> {
    match reflink(source, &temp.file) {
        Ok(()) => return Ok(CloneMethod::Reflink),
        Err(e) if reflink_unsupported(&e) => {}
        Err(e) => return Err(io_err(&temp.path, "FICLONE")(e)),
    }
    sparse_copy(source, &temp.file).map_err(io_err(base, "sparse copy"))?;
    Ok(CloneMethod::SparseCopy)
}

fn reflink(source: &File, dest: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its argument; both are open.
    let rc = unsafe { libc::ioctl(dest.as_raw_fd(), libc::FICLONE, source.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Errors meaning "this filesystem (pair) cannot share extents".
fn reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS)
    )
}

/// Copies the data extents of `source` into the empty `dest` and gives it
/// the same length.
pub(crate) fn sparse_copy(source: &File, dest: &File) -> io::Result<()> {
    let len = source.metadata()?.len();
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0;
    while let Some((start, end)) = next_data(source, offset, len)? {
        copy_range(source, dest, start, end, &mut buf)?;
        offset = end;
    }
    dest.set_len(len)
}

/// The next data extent at or after `offset`, as `[start, end)`.
fn next_data(file: &File, offset: u64, len: u64) -> io::Result<Option<(u64, u64)>> {
    if offset >= len {
        return Ok(None);
    }
    let start = match seek(file, offset, libc::SEEK_DATA) {
        Ok(start) => start,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(None),
        // No SEEK_DATA support: treat the rest as data (zeros still skipped).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((offset, len))),
        Err(e) => return Err(e),
    };
    let end = seek(file, start, libc::SEEK_HOLE)?.min(len);
    Ok(Some((start, end)))
}

fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<u64> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek on an open fd; it only moves the file offset.
    let pos = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    u64::try_from(pos).map_err(|_| io::Error::last_os_error())
}

/// Copies `[start, end)`, writing only blocks that are not all zero.
fn copy_range(source: &File, dest: &File, start: u64, end: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let want = usize::try_from(end - pos).map_or(buf.len(), |n| n.min(buf.len()));
        let chunk = &mut buf[..want];
        source.read_exact_at(chunk, pos)?;
        write_nonzero_blocks(dest, chunk, pos)?;
        pos += want as u64;
    }
    Ok(())
}

/// Writes the runs of non-zero blocks of `chunk` (one write per run, not
/// per block), leaving the zero blocks as holes.
fn write_nonzero_blocks(dest: &File, chunk: &[u8], at: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut offset = 0;
    for block in chunk.chunks(BLOCK) {
        let zero = block.iter().all(|&b| b == 0);
        match (run_start, zero) {
            (None, false) => run_start = Some(offset),
            (Some(start), true) => {
                dest.write_all_at(&chunk[start..offset], at + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
        offset += block.len();
    }
    if let Some(start) = run_start {
        dest.write_all_at(&chunk[start..], at + start as u64)?;
    }
    Ok(())
}

/// A file being made under a temporary name; removed on drop unless
/// persisted.
struct TempFile {
    file: File,
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    fn create(dir: &Path, name: &str) -> Result<TempFile, DiskError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path, "create"))?;
        Ok(TempFile {
            file,
            path,
            persisted: false,
        })
    }

    /// Renames to `dest`, failing (and cleaning up) if `dest` appeared.
    fn persist(mut self, dest: &Path) -> Result<(), DiskError> {
        rename_noreplace(&self.path, dest).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => DiskError::AlreadyExists(dest.to_path_buf()),
            _ => io_err(dest, "rename into place")(e),
        })?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths relative to the cwd, a valid flag.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes the rename durable.
fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const MIB: u64 = 1 << 20;

    /// 64 MiB, data only at 1 MiB (4 KiB) and 40 MiB (8 KiB).
    fn sparse_base(dir: &Path) -> PathBuf {
        let path = dir.join("base.img");
        let file = File::create(&path).expect("create base");
        file.set_len(64 * MIB).expect("set_len");
        file.write_all_at(&[0xab; 4096], MIB).expect("write 1");
        let pattern: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8 + 1).collect();
        file.write_all_at(&pattern, 40 * MIB).expect("write 2");
        file.sync_all().expect("sync");
        path
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .expect("read dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect()
    }

    #[test]
    fn a_sized_clone_is_grown_sparse_and_a_smaller_size_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = sparse_base(dir.path());
        let dest = dir.path().join("grown.img");
        clone_disk_sized(&base, &dest, Some(256 * MIB)).expect("clone");
        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!(meta.len(), 256 * MIB);
        assert!(meta.blocks() * 512 < MIB, "the growth is a hole");
        let grown = std::fs::read(&dest).unwrap();
        assert_eq!(
            &grown[..(64 * MIB) as usize],
            &std::fs::read(&base).unwrap()[..]
        );
        assert!(grown[(64 * MIB) as usize..].iter().all(|&b| b == 0));

        let small = dir.path().join("small.img");
        let err = clone_disk_sized(&base, &small, Some(MIB)).unwrap_err();
        assert!(matches!(err, DiskError::SmallerThanBase { .. }), "{err}");
        assert!(!small.exists());
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn clone_has_the_same_bytes_and_stays_sparse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = sparse_base(dir.path());
        let dest = dir.path().join("vm-disk0.img");
        let method = clone_disk(&base, &dest).expect("clone");
        assert_eq!(std::fs::read(&base).unwrap(), std::fs::read(&dest).unwrap());
        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!(meta.len(), 64 * MIB);
        // st_blocks counts 512-byte units: well under 1 MiB allocated.
        assert!(
            meta.blocks() * 512 < MIB,
            "{method:?}: {} bytes allocated",
            meta.blocks() * 512
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn the_sparse_copy_itself_keeps_holes() {
        // Tested directly so it is covered on reflink filesystems too.
        let dir = tempfile::tempdir().expect("tempdir");
        let base = sparse_base(dir.path());
        let dest_path = dir.path().join("copy.img");
        let dest = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&dest_path)
            .unwrap();
        sparse_copy(&File::open(&base).unwrap(), &dest).expect("sparse copy");
        assert_eq!(
            std::fs::read(&base).unwrap(),
            std::fs::read(&dest_path).unwrap()
        );
        assert!(dest.metadata().unwrap().blocks() * 512 < MIB);
    }

    #[test]
    fn a_missing_base_is_a_typed_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("disk.img");
        let err = clone_disk(&dir.path().join("nope.img"), &dest).unwrap_err();
        assert!(matches!(err, DiskError::BaseMissing(_)), "{err}");
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_existing_disk_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = sparse_base(dir.path());
        let dest = dir.path().join("disk.img");
        std::fs::write(&dest, b"precious").unwrap();
        let err = clone_disk(&base, &dest).unwrap_err();
        assert!(matches!(err, DiskError::AlreadyExists(_)), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"precious");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[test]
    fn remove_is_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, b"x").unwrap();
        remove_disk(&disk).expect("remove");
        remove_disk(&disk).expect("remove again");
        assert!(!disk.exists());
    }

    #[test]
    fn a_directory_base_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = clone_disk(dir.path(), &dir.path().join("d.img")).unwrap_err();
        assert!(matches!(err, DiskError::BaseNotAFile(_)), "{err}");
    }
}
