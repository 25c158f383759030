//! Container logs in the CRI log format, and following them.
//!
//! Format (kubelet's and containerd's): one line per record,
//! `<RFC3339Nano UTC timestamp> <stdout|stderr> <F|P> <message>\n`, where
//! `F` ends a line and `P` is a piece of a longer one: lines over 16 KiB
//! are split into `P` records followed by an `F`.
//!
//! The records are written by the container's log writer process (see
//! [`crate::log_writer`]), which owns the files and rotates them; this
//! module holds the format, the names of the files and the reader.
//!
//! **Files.** A container's log is `<name>.log` and its rotated files
//! `<name>.log.<N>`, where `N` counts rotations up from 1 and is never
//! reused: the higher, the newer. (The kubelet names them by a timestamp
//! of the second; a sequence number stays in order when several rotations
//! fall in one second or the clock steps back.) Nothing else in the
//! directory matches that pattern (the writer's staging file is hidden).
//! Files are not compressed, so a reader reads them as they are.
//!
//! [`LogFollower`] reads CRI records back from the oldest file on, in
//! order, and with `follow` waits for more while a log writer still
//! holds the log. A file is known by its inode: when the one it reads is
//! no longer the one at `<name>.log`, the writer is done with it (records
//! go to the new file only once it is in place), so the follower reads it
//! to its end and goes on with the next file — no record read twice, none
//! skipped unless the writer deleted a file before the follower reached
//! it (then it goes on with the oldest that is left).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::error::{Result, RuntimeError};
use super::log_writer::writer_active;

/// Longest message of one CRI record; longer lines become `P` records.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// How often a following reader looks for new output.
pub const LOG_POLL: Duration = Duration::from_millis(50);

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl LogStream {
    /// `stdout` or `stderr`, as written in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// One CRI log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriLogLine {
    /// RFC 3339 timestamp with nanoseconds, UTC.
    pub timestamp: String,
    /// The stream.
    pub stream: LogStream,
    /// `P`: a piece of a longer line; `F`: the (end of the) line.
    pub partial: bool,
    /// The text, without the newline.
    pub message: Vec<u8>,
}

impl CriLogLine {
    /// The record as written to the log, newline included.
    pub fn encode(&self) -> Vec<u8> {
        let tag = if self.partial { "P" } else { "F" };
        let mut out = Vec::with_capacity(self.timestamp.len() + self.message.len() + 12);
        out.extend_from_slice(self.timestamp.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.stream.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&self.message);
        out.push(b'\n');
        out
    }

    /// Parses one record (with or without its trailing newline).
    pub fn parse(line: &[u8]) -> Result<CriLogLine> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let bad = |reason| RuntimeError::LogFormat {
            line: String::from_utf8_lossy(line).into_owned(),
            reason,
        };
        let mut parts = line.splitn(4, |&b| b == b' ');
        let timestamp = parts
            .next()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no timestamp"))?;
        let stream = match parts.next() {
            Some(b"stdout") => LogStream::Stdout,
            Some(b"stderr") => LogStream::Stderr,
            _ => return Err(bad("stream is not stdout or stderr")),
        };
        let partial = match parts.next() {
            Some(b"P") => true,
            Some(b"F") => false,
            _ => return Err(bad("tag is not P or F")),
        };
        let message = parts.next().unwrap_or_default().to_vec();
        let timestamp = std::str::from_utf8(timestamp).map_err(|_| bad("timestamp not UTF-8"))?;
        Ok(CriLogLine {
            timestamp: timestamp.to_string(),
            stream,
            partial,
            message,
        })
    }
}

/// `time` as RFC 3339 in UTC with nine fractional digits
/// (`2026-11-24T07:18:24.642060123Z`).
pub fn format_timestamp(time: SystemTime) -> String {
    let t = time::OffsetDateTime::from(time);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// Splits a byte stream into CRI messages: complete lines, and pieces of
/// [`MAX_LOG_LINE`] bytes of lines that grow longer.
#[derive(Debug, Default, Clone)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds `data`; returns (partial, message) pairs ready to write.
    pub fn push(&mut self, data: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        for &byte in data {
            if byte == b'\n' {
                out.push((false, std::mem::take(&mut self.pending)));
                continue;
            }
            // A full buffer is emitted as a piece only when a byte follows
            // that is not the newline: a line of exactly MAX bytes is "F".
            if self.pending.len() == MAX_LOG_LINE {
                out.push((true, std::mem::take(&mut self.pending)));
            }
            self.pending.push(byte);
        }
        out
    }

    /// Bytes held back waiting for the rest of their line.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The unfinished line as a final `F` message (the stream ended).
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

/// The name of `log`'s rotated file number `n`: `<log>.<n>`.
pub fn rotated_path(log: &Path, n: u64) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// `log`'s rotated files with their numbers, oldest first. None when the
/// directory does not exist.
pub fn rotated_files(log: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Ok(Vec::new());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(number) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(n) = number.parse::<u64>() {
            files.push((n, dir.join(&file_name)));
        }
    }
    files.sort_unstable_by_key(|(n, _)| *n);
    Ok(files)
}

/// Removes `log` and its rotated files (a missing file is no error).
pub fn remove_log_files(log: &Path) -> io::Result<()> {
    let mut files: Vec<PathBuf> = rotated_files(log)?.into_iter().map(|(_, p)| p).collect();
    files.push(log.to_path_buf());
    for file in files {
        match fs::remove_file(&file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A file's identity: device and inode.
type FileId = (u64, u64);

fn id_of(meta: &fs::Metadata) -> FileId {
    (meta.dev(), meta.ino())
}

/// Reads CRI records back from a container's log files, optionally
/// following the log.
#[derive(Debug)]
pub struct LogFollower {
    /// The log (`<name>.log`); its rotated files are found next to it.
    path: PathBuf,
    /// The file being read (open: it stays readable when it is deleted).
    file: File,
    id: FileId,
    buf: Vec<u8>,
    follow: bool,
    /// Records read ahead ([`LogFollower::keep_last`]), handed out first.
    queued: VecDeque<CriLogLine>,
}

impl LogFollower {
    /// Reads the log at `path` from its oldest file on. With `follow` it
    /// waits for more records at the end while a log writer holds the log
    /// (the container's run has output to come); without, it stops at the
    /// end of the current file.
    pub fn open(path: &Path, follow: bool) -> Result<LogFollower> {
        let mut opened = None;
        for _ in 0..MAX_RELISTS {
            match open_first(&listed(path)?, None) {
                Pick::Opened(file, id) => {
                    opened = Some((file, id));
                    break;
                }
                Pick::Changed => continue,
                Pick::Nothing => break,
            }
        }
        let (file, id) = match opened {
            Some(opened) => opened,
            None => {
                let file = File::open(path).map_err(RuntimeError::io(path, "open CRI log"))?;
                let id = file
                    .metadata()
                    .map(|m| id_of(&m))
                    .map_err(RuntimeError::io(path, "stat CRI log"))?;
                (file, id)
            }
        };
        Ok(LogFollower {
            path: path.to_path_buf(),
            file,
            id,
            buf: Vec::new(),
            follow,
            queued: VecDeque::new(),
        })
    }

    /// The next record; `None` at the end (follow mode: at the end of the
    /// container's output).
    pub async fn next(&mut self) -> Result<Option<CriLogLine>> {
        loop {
            if let Some(line) = self.queued.pop_front() {
                return Ok(Some(line));
            }
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return CriLogLine::parse(&line).map(Some);
            }
            if self.read_more()? > 0 || self.next_file()? {
                continue;
            }
            if !self.follow {
                return Ok(None);
            }
            // Checked before the last read: records written just before
            // the writer let go (or rotated once more) are still read.
            if !writer_active(&self.path) {
                if self.read_more()? == 0 && !self.next_file()? {
                    return Ok(None);
                }
                continue;
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }

    /// Reads every record there is now, without waiting for more, and
    /// keeps the last `n` to be returned first by [`LogFollower::next`];
    /// following then goes on after them. Memory is bounded by the log's
    /// retained size (its rotation limits).
    pub async fn keep_last(&mut self, n: usize) -> Result<()> {
        let follow = std::mem::replace(&mut self.follow, false);
        let mut last = VecDeque::new();
        let read = loop {
            match self.next().await {
                Ok(Some(line)) => {
                    last.push_back(line);
                    if last.len() > n {
                        last.pop_front();
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.follow = follow;
        self.queued = last;
        read
    }

    fn read_more(&mut self) -> Result<usize> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = self
            .file
            .read(&mut chunk)
            .map_err(RuntimeError::io(&self.path, "read CRI log"))?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// At the end of the file being read: when it has been rotated away,
    /// reads what is left of it, or moves on to the next file. False when
    /// it is still the log's current file (or there is no next one).
    fn next_file(&mut self) -> Result<bool> {
        let current = match fs::metadata(&self.path) {
            Ok(meta) => id_of(&meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(RuntimeError::io(&self.path, "stat CRI log")(e)),
        };
        if current == self.id {
            return Ok(false);
        }
        // The writer switched files after its last write to this one;
        // that write may have landed after our last read.
        if self.read_more()? > 0 {
            return Ok(true);
        }
        for _ in 0..MAX_RELISTS {
            let files = listed(&self.path)?;
            // After ours; all of them when ours is gone (deleted oldest
            // first, so whatever is left is newer).
            let start = files
                .iter()
                .position(|(_, id)| *id == Some(self.id))
                .map_or(0, |i| i + 1);
            match open_first(&files[start..], Some(self.id)) {
                Pick::Opened(file, id) => {
                    self.file = file;
                    self.id = id;
                    // A torn record (a failed write) cannot be completed.
                    self.buf.clear();
                    return Ok(true);
                }
                Pick::Changed => continue,
                Pick::Nothing => return Ok(false),
            }
        }
        // Rotating faster than we can list: looked at again next time.
        Ok(false)
    }
}

/// How often a reader lists the files again when they changed under it.
const MAX_RELISTS: usize = 100;

/// The log's files, oldest first, with their identities (`None`: gone
/// before it was looked at). The current file is looked at before the
/// directory is read: every file older than it has its rotated name by
/// then, so the listing misses none of them.
fn listed(log: &Path) -> Result<Vec<(PathBuf, Option<FileId>)>> {
    let current = fs::metadata(log).ok().map(|m| id_of(&m));
    let rotated = rotated_files(log).map_err(RuntimeError::io(log, "list CRI log files"))?;
    let mut files: Vec<(PathBuf, Option<FileId>)> = rotated
        .into_iter()
        .map(|(_, f)| {
            let id = fs::metadata(&f).ok().map(|m| id_of(&m));
            (f, id)
        })
        .collect();
    if current.is_some() {
        files.push((log.to_path_buf(), current));
    }
    Ok(files)
}

/// What [`open_first`] found.
enum Pick {
    Opened(File, FileId),
    /// A name no longer names the file listed (the log's own name, after a
    /// rotation): list again, or a file would be skipped.
    Changed,
    Nothing,
}

/// Opens the first of `files` that is not `skip` and is still what was
/// listed. A rotated file deleted since is passed over: it is gone. The
/// same inode can be listed twice for a moment (linked under its rotated
/// name before the new file replaces it), hence `skip`.
fn open_first(files: &[(PathBuf, Option<FileId>)], skip: Option<FileId>) -> Pick {
    for (path, listed_id) in files {
        let Some(listed_id) = *listed_id else {
            continue;
        };
        if Some(listed_id) == skip {
            continue;
        }
        let Ok(file) = File::open(path) else {
            continue;
        };
        let Ok(meta) = file.metadata() else {
            continue;
        };
        if id_of(&meta) != listed_id {
            return Pick::Changed;
        }
        return Pick::Opened(file, listed_id);
    }
    Pick::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn runtime_logs_timestamp_is_rfc3339_nano_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(format_timestamp(t), "2023-11-14T22:13:20.000000005Z");
    }

    #[test]
    fn runtime_logs_encode_and_parse_round_trip() {
        let line = CriLogLine {
            timestamp: "2023-11-14T22:13:20.000000005Z".into(),
            stream: LogStream::Stdout,
            partial: false,
            message: b"hello world".to_vec(),
        };
        let encoded = line.encode();
        assert_eq!(
            encoded,
            b"2023-11-14T22:13:20.000000005Z stdout F hello world\n"
        );
        assert_eq!(CriLogLine::parse(&encoded).expect("parse"), line);
        let empty = CriLogLine::parse(b"t stderr P \n").expect("empty message");
        assert!(empty.partial && empty.message.is_empty() && empty.stream == LogStream::Stderr);
        assert!(CriLogLine::parse(b"t stdin F x").is_err());
        assert!(CriLogLine::parse(b"t stdout X x").is_err());
        assert!(CriLogLine::parse(b"").is_err());
    }

    #[test]
    fn runtime_logs_splitter_lines_and_pieces() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\nb"), vec![(false, b"a".to_vec())]);
        assert_eq!(s.pending_len(), 1);
        assert_eq!(
            s.push(b"c\n\n"),
            vec![(false, b"bc".to_vec()), (false, Vec::new())]
        );
        // A line of exactly MAX bytes is one F record.
        let exact = vec![b'x'; MAX_LOG_LINE];
        let mut input = exact.clone();
        input.push(b'\n');
        assert_eq!(s.push(&input), vec![(false, exact.clone())]);
        // MAX + 1 bytes: a P piece of MAX and an F of 1.
        let mut long = vec![b'y'; MAX_LOG_LINE + 1];
        long.push(b'\n');
        let out = s.push(&long);
        assert_eq!(out.len(), 2);
        assert!(out[0].0 && out[0].1.len() == MAX_LOG_LINE);
        assert_eq!(out[1], (false, b"y".to_vec()));
        // 40 KiB without newline: two pieces now, the rest held back.
        let out = s.push(&vec![b'z'; 40 * 1024]);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(p, m)| *p && m.len() == MAX_LOG_LINE));
        assert_eq!(s.pending_len(), 40 * 1024 - 2 * MAX_LOG_LINE);
        assert_eq!(
            s.flush().map(|m| m.len()),
            Some(40 * 1024 - 2 * MAX_LOG_LINE)
        );
        assert_eq!(s.flush(), None);
    }

    #[test]
    fn runtime_logs_rotated_files_are_numbered_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("web.log");
        assert!(rotated_files(&log).expect("list").is_empty());
        for name in [
            "web.log",
            "web.log.10",
            "web.log.2",
            "web.log.9",
            ".web.log.next",
            "web.log.x",
            "web.log.",
            "web.log.3.gz",
            "webby.log.1",
            "db.log.1",
        ] {
            fs::write(dir.path().join(name), b"").expect("write");
        }
        let rotated = rotated_files(&log).expect("list");
        let numbers: Vec<u64> = rotated.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [2, 9, 10]);
        assert_eq!(rotated[2].1, rotated_path(&log, 10));
        assert_eq!(rotated_path(&log, 10), dir.path().join("web.log.10"));
        remove_log_files(&log).expect("remove");
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".web.log.next",
                "db.log.1",
                "web.log.",
                "web.log.3.gz",
                "web.log.x",
                "webby.log.1"
            ]
        );
        remove_log_files(&log).expect("nothing left to remove is no error");
    }

    #[tokio::test]
    async fn runtime_logs_follower_waits_while_a_writer_holds_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        fs::write(&path, b"t stdout F one\n").expect("write");
        // A writer's lock, as the log writer holds it.
        let held = OpenOptions::new().append(true).open(&path).expect("open");
        // SAFETY: flock on our own descriptor.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
        let mut follower = LogFollower::open(&path, true).expect("open");
        let first = follower.next().await.expect("next").expect("line");
        assert_eq!(first.message, b"one");
        let writer = tokio::spawn(async move {
            let mut held = held;
            tokio::time::sleep(Duration::from_millis(120)).await;
            held.write_all(b"t stderr F two\n").expect("write");
            drop(held); // the writer is done: its lock goes with it
        });
        let second = tokio::time::timeout(Duration::from_secs(5), follower.next())
            .await
            .expect("in time")
            .expect("next")
            .expect("line");
        assert_eq!(
            (second.stream, second.message.as_slice()),
            (LogStream::Stderr, &b"two"[..])
        );
        let end = tokio::time::timeout(Duration::from_secs(5), follower.next()).await;
        assert_eq!(
            end.expect("ends once the writer let go").expect("end"),
            None
        );
        writer.await.expect("writer");
        let mut unfollowed = LogFollower::open(&path, false).expect("open");
        assert!(unfollowed.next().await.expect("next").is_some());
        assert!(unfollowed.next().await.expect("next").is_some());
        assert_eq!(unfollowed.next().await.expect("end"), None);
    }
}
