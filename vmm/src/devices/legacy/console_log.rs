//! The serial console's log file, bounded: a guest that prints without
//! end (a boot loop, a chatty service) must not fill the host's disk.
//!
//! When a write would take the file past its limit, the file becomes
//! `<path>.1` (replacing the older generation) and a new `<path>` starts,
//! so at most twice the limit is on disk. The agent's console follower
//! sees the new file (another inode at the same path) and carries on from
//! its start. If the new file cannot be made (a full disk), output is
//! dropped until it can: the guest never waits on the host's disk.
//!
//! Also the other outputs `PUT /serial` may name ([`open_named`]: a named
//! pipe or a device, written without blocking, what does not fit dropped)
//! and its token bucket ([`RateLimited`]: output past it dropped).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::rate_limiter::bucket::{BucketError, TokenBucket};
use crate::vmm_config::rate_limiter::TokenBucketConfig;

/// Default largest size of one console log file.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;

/// Smallest limit accepted: one screenful is no log.
pub const MIN_MAX_BYTES: u64 = 4 << 10;

/// A console log file that rotates at `max_bytes`.
#[derive(Debug)]
pub struct ConsoleLog {
    path: PathBuf,
    older: PathBuf,
    file: Option<File>,
    written: u64,
    max_bytes: u64,
}

impl ConsoleLog {
    /// Creates (truncating) the log at `path`.
    pub fn create(path: &Path, max_bytes: u64) -> io::Result<ConsoleLog> {
        Ok(ConsoleLog::create_with(
            Some(File::create(path)?),
            path,
            max_bytes,
        ))
    }

    /// A log on `file`, already open at `path`: emptied, then as
    /// [`Self::create`]'s.
    fn adopt(file: File, path: &Path, max_bytes: u64) -> io::Result<ConsoleLog> {
        file.set_len(0)?;
        Ok(ConsoleLog::create_with(Some(file), path, max_bytes))
    }

    fn create_with(file: Option<File>, path: &Path, max_bytes: u64) -> ConsoleLog {
        let mut older = path.as_os_str().to_owned();
        older.push(".1");
        ConsoleLog {
            file,
            path: path.to_path_buf(),
            older: PathBuf::from(older),
            written: 0,
            max_bytes: max_bytes.max(MIN_MAX_BYTES),
        }
    }

    /// Starts the next file: the current one becomes the older generation.
    /// Whatever happens to the old one, the new file starts empty.
    fn rotate(&mut self) {
        self.file = None;
        let _ = fs::rename(&self.path, &self.older);
        self.file = File::create(&self.path).ok();
        self.written = 0;
    }
}

impl Write for ConsoleLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if self.file.is_none()
            || (self.written > 0 && self.written.saturating_add(len) > self.max_bytes)
        {
            self.rotate();
        }
        let Some(file) = self.file.as_mut() else {
            // No file to write to: the output is dropped, not queued.
            return Ok(buf.len());
        };
        let n = file.write(buf)?;
        self.written = self
            .written
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), Write::flush)
    }
}

/// Opens `path` as Firecracker opens `serial_out_path`: created if
/// missing, read-write and non-blocking, so a named pipe without a reader
/// opens at once and never makes a write wait (what a full pipe cannot
/// take is dropped). A regular file becomes a [`ConsoleLog`], emptied and
/// bounded by `max_bytes`.
pub fn open_named(path: &Path, max_bytes: u64) -> io::Result<Box<dyn Write + Send>> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if file.metadata()?.is_file() {
        return Ok(Box::new(ConsoleLog::adopt(file, path, max_bytes)?));
    }
    Ok(Box::new(DroppingWriter(file)))
}

/// A non-blocking pipe or device: a write it cannot take now is dropped,
/// never retried (the guest's UART must not wait).
struct DroppingWriter(File);

impl Write for DroppingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(buf.len()),
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Console output through a token bucket of bytes: a write the bucket
/// cannot pay for now is dropped whole (Firecracker's serial limiter),
/// and counted.
pub struct RateLimited {
    inner: Box<dyn Write + Send>,
    bucket: Option<TokenBucket>,
    dropped: u64,
}

impl RateLimited {
    pub fn new(
        inner: Box<dyn Write + Send>,
        config: &TokenBucketConfig,
    ) -> Result<Self, BucketError> {
        Ok(Self {
            inner,
            bucket: config.bucket(Instant::now())?,
            dropped: 0,
        })
    }

    /// Bytes dropped so far for want of tokens.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Write for RateLimited {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if let Some(bucket) = self.bucket.as_mut() {
            if !bucket.try_take(len, Instant::now()) {
                self.dropped = self.dropped.saturating_add(len);
                return Ok(buf.len());
            }
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty directory of the test's own.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("console-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_log_rotates_at_its_limit_and_keeps_one_older_file() {
        let dir = scratch("rotate");
        let path = dir.join("console.log");
        let mut log = ConsoleLog::create(&path, MIN_MAX_BYTES).expect("create");
        let line = [b'x'; 1000];
        for i in 0..10u8 {
            let mut chunk = line;
            chunk[0] = b'0' + i;
            log.write_all(&chunk).expect("write");
        }
        // 4 chunks per file: 0-3 and 4-7 rotated away, 8-9 current.
        let current = fs::read(&path).expect("current");
        let older = fs::read(dir.join("console.log.1")).expect("older");
        assert_eq!(current.len(), 2000);
        assert_eq!((current[0], current[1000]), (b'8', b'9'));
        assert_eq!(older.len(), 4000);
        assert_eq!((older[0], older[3000]), (b'4', b'7'));
        let files = fs::read_dir(&dir).expect("list").count();
        assert_eq!(files, 2, "only the log and one older generation");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_named_pipe_without_a_reader_opens_at_once_and_a_full_one_drops() {
        let dir = scratch("fifo");
        let path = dir.join("console.fifo");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let mut out = open_named(&path, MIN_MAX_BYTES).expect("no reader: still opens");
        // Far more than a pipe holds (64 KiB by default): never blocks.
        for _ in 0..64 {
            out.write_all(&[b'z'; 4096]).expect("dropped, not an error");
        }
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .expect("reader");
        let mut got = Vec::new();
        let _ = io::Read::read_to_end(&mut reader, &mut got);
        assert!(!got.is_empty() && got.len() < 64 * 4096, "{}", got.len());
        assert!(got.iter().all(|b| *b == b'z'));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_named_regular_file_is_emptied_and_bounded() {
        let dir = scratch("named");
        let path = dir.join("serial.out");
        fs::write(&path, b"old contents").unwrap();
        let mut out = open_named(&path, MIN_MAX_BYTES).expect("open");
        out.write_all(b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        out.write_all(&[b'y'; 4096]).unwrap();
        assert_eq!(
            fs::read(&path).unwrap(),
            vec![b'y'; 4096],
            "rotated at the limit"
        );
        assert_eq!(fs::read(dir.join("serial.out.1")).unwrap(), b"new");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_past_the_bucket_is_dropped_and_counted() {
        let captured = Captured::default();
        let bucket = TokenBucketConfig {
            size: 4,
            one_time_burst: None,
            refill_time: 3_600_000,
        };
        let mut out = RateLimited::new(Box::new(captured.clone()), &bucket).unwrap();
        for b in b"abcdefgh" {
            out.write_all(&[*b]).unwrap();
        }
        assert_eq!(*captured.0.lock().unwrap(), b"abcd");
        assert_eq!(out.dropped(), 4);
    }

    #[test]
    fn output_is_dropped_while_no_file_can_be_made() {
        let dir = scratch("full");
        let path = dir.join("console.log");
        let mut log = ConsoleLog::create(&path, MIN_MAX_BYTES).expect("create");
        log.write_all(&[b'a'; 4096]).expect("fill");
        // The directory goes away: rotation cannot make a new file.
        fs::remove_dir_all(&dir).expect("remove dir");
        log.write_all(b"lost").expect("never an error to the guest");
        fs::create_dir(&dir).expect("dir back");
        log.write_all(b"kept").expect("write");
        assert_eq!(fs::read(&path).expect("new file"), b"kept");
        fs::remove_dir_all(&dir).unwrap();
    }
}
