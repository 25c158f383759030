//! The serial console's log file, bounded: a guest that prints without
//! end (a boot loop, a chatty service) must not fill the host's disk.
//!
//! When a write would take the file past its limit, the file becomes
//! `<path>.1` (replacing the older generation) and a new `<path>` starts,
//! so at most twice the limit is on disk. The agent's console follower
//! sees the new file (another inode at the same path) and carries on from
//! its start. If the new file cannot be made (a full disk), output is
//! dropped until it can: the guest never waits on the host's disk.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

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
        let mut older = path.as_os_str().to_owned();
        older.push(".1");
        Ok(ConsoleLog {
            file: Some(File::create(path)?),
            path: path.to_path_buf(),
            older: PathBuf::from(older),
            written: 0,
            max_bytes: max_bytes.max(MIN_MAX_BYTES),
        })
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
