//! Container logs in the CRI log format, and following them.
//!
//! Format (kubelet's and containerd's): one line per record,
//! `<RFC3339Nano UTC timestamp> <stdout|stderr> <F|P> <message>\n`, where
//! `F` ends a line and `P` is a piece of a longer one: lines over 16 KiB
//! are split into `P` records followed by an `F`.
//!
//! The records are written by the container's log writer process (see
//! [`crate::log_writer`]), which owns the file; this module holds the
//! format and the reader.
//!
//! [`LogFollower`] reads CRI records back, from the start, and with
//! `follow` waits for more while a log writer still holds the file.

use std::fs::File;
use std::io::Read;
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

/// Reads CRI records back from a log file, optionally following it.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    follow: bool,
}

impl LogFollower {
    /// Reads `path` from the start. With `follow` it waits for more
    /// records at the end while a log writer holds the file (the
    /// container's run has output to come); without, it stops at the end.
    pub fn open(path: &Path, follow: bool) -> Result<LogFollower> {
        let file = File::open(path).map_err(RuntimeError::io(path, "open CRI log"))?;
        Ok(LogFollower {
            path: path.to_path_buf(),
            file,
            buf: Vec::new(),
            follow,
        })
    }

    /// The next record; `None` at the end (follow mode: at the end of the
    /// container's output).
    pub async fn next(&mut self) -> Result<Option<CriLogLine>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return CriLogLine::parse(&line).map(Some);
            }
            if self.read_more()? > 0 {
                continue;
            }
            if !self.follow {
                return Ok(None);
            }
            // Checked before the last read: records written just before
            // the writer let go are still read.
            if !writer_active(&self.path) {
                if self.read_more()? == 0 {
                    return Ok(None);
                }
                continue;
            }
            tokio::time::sleep(LOG_POLL).await;
        }
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
