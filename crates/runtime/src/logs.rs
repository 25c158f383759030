//! Container logs in the CRI log format, and following them.
//!
//! Format (kubelet's and containerd's): one line per record,
//! `<RFC3339Nano UTC timestamp> <stdout|stderr> <F|P> <message>\n`, where
//! `F` ends a line and `P` is a piece of a longer one: lines over 16 KiB
//! are split into `P` records followed by an `F`.
//!
//! Design choice: **the container writes plain files; the agent converts.**
//! The runtime gives the container `stdout.raw` and `stderr.raw` in its
//! directory, opened `O_APPEND`, as stdout/stderr. A [`LogPump`] task
//! tails both, splits lines, timestamps them and appends CRI records to
//! the container's log file, persisting how far it got (`log.offsets`).
//!
//! Why not pipes (or FIFOs) read by the agent: a pipe lives only as long as
//! its reader. After an agent `kill -9` a container writing to a pipe gets
//! `SIGPIPE`/`EPIPE` and usually dies, or — if something else keeps the
//! read end open — blocks once the 64 KiB buffer fills, until the agent is
//! back. With files nothing depends on the agent: the container writes at
//! disk speed and never blocks or dies because of logging; a restarted
//! agent resumes converting at the persisted offsets, so nothing is lost
//! (the one cost: records converted after a restart carry the conversion
//! time, not the write time). A per-container log shim (conmon's design)
//! would avoid that too, at the price of a process per container.
//!
//! Disk use: converted bytes of the raw files are released with
//! `fallocate(PUNCH_HOLE)`, so raw files stay sparse while the container
//! writes on at its growing offset. Stdout and stderr are converted in
//! passes; order within a stream is exact, across streams within a pass
//! it is not (as with containerd's two copy loops).
//!
//! [`LogFollower`] reads CRI records back, from the start, and with
//! `follow` waits for more until the pump says the container's output
//! ended.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::error::{Result, RuntimeError};

/// Longest message of one CRI record; longer lines become `P` records.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// How often the pump and a following reader look for new output.
pub const LOG_POLL: Duration = Duration::from_millis(50);

/// Most bytes one pump pass reads from one stream.
const PASS_LIMIT: u64 = 1 << 20;

/// Hole punching works in file system blocks.
const PUNCH_ALIGN: u64 = 4096;

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

/// The files of one container's logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPaths {
    /// What the container writes to stdout.
    pub stdout_raw: PathBuf,
    /// What the container writes to stderr.
    pub stderr_raw: PathBuf,
    /// Converted offsets (`<stdout> <stderr>`).
    pub offsets: PathBuf,
    /// The CRI log.
    pub cri_log: PathBuf,
}

impl LogPaths {
    /// Raw files and offsets in `container_dir`, CRI log at `cri_log`.
    pub fn new(container_dir: &Path, cri_log: &Path) -> LogPaths {
        LogPaths {
            stdout_raw: container_dir.join("stdout.raw"),
            stderr_raw: container_dir.join("stderr.raw"),
            offsets: container_dir.join("log.offsets"),
            cri_log: cri_log.to_path_buf(),
        }
    }

    /// Opens (creating) the raw files append-only, for the container.
    pub fn open_raw_for_container(&self) -> Result<(File, File)> {
        let open = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(RuntimeError::io(p, "open raw log"))
        };
        Ok((open(&self.stdout_raw)?, open(&self.stderr_raw)?))
    }
}

#[derive(Debug)]
struct StreamState {
    stream: LogStream,
    path: PathBuf,
    file: Option<File>,
    /// Bytes of the raw file read so far.
    consumed: u64,
    /// Raw bytes released by hole punching so far.
    punched: u64,
    splitter: LineSplitter,
}

impl StreamState {
    /// Raw bytes whose records are written (`consumed` minus held back).
    fn emitted(&self) -> u64 {
        self.consumed
            .saturating_sub(self.splitter.pending_len() as u64)
    }
}

/// Converts a container's raw output into its CRI log (see module docs).
#[derive(Debug)]
pub struct LogPump {
    paths: LogPaths,
    streams: [StreamState; 2],
    out: File,
}

impl LogPump {
    /// Opens the CRI log for appending and resumes at the persisted
    /// offsets (zero for a new container).
    pub fn open(paths: LogPaths) -> Result<LogPump> {
        if let Some(parent) = paths.cri_log.parent() {
            fs::create_dir_all(parent).map_err(RuntimeError::io(parent, "create log directory"))?;
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&paths.cri_log)
            .map_err(RuntimeError::io(&paths.cri_log, "open CRI log"))?;
        let (stdout_off, stderr_off) = read_offsets(&paths.offsets)?;
        let state = |stream, path: &Path, offset| StreamState {
            stream,
            path: path.to_path_buf(),
            file: None,
            consumed: offset,
            punched: 0,
            splitter: LineSplitter::default(),
        };
        Ok(LogPump {
            streams: [
                state(LogStream::Stdout, &paths.stdout_raw, stdout_off),
                state(LogStream::Stderr, &paths.stderr_raw, stderr_off),
            ],
            paths,
            out,
        })
    }

    /// One pass: converts what is new in both raw files. Returns the
    /// number of raw bytes consumed.
    pub fn pump(&mut self) -> Result<u64> {
        let mut total = 0;
        let mut records = Vec::new();
        for state in &mut self.streams {
            let data = read_new(state)?;
            total += data.len() as u64;
            let now = format_timestamp(SystemTime::now());
            for (partial, message) in state.splitter.push(&data) {
                records.extend(
                    CriLogLine {
                        timestamp: now.clone(),
                        stream: state.stream,
                        partial,
                        message,
                    }
                    .encode(),
                );
            }
        }
        if !records.is_empty() {
            self.write_and_commit(&records)?;
        }
        Ok(total)
    }

    /// The output ended (the container exited): converts the rest and
    /// writes unfinished lines as final `F` records.
    pub fn finish(&mut self) -> Result<()> {
        while self.pump()? > 0 {}
        let now = format_timestamp(SystemTime::now());
        let mut records = Vec::new();
        for state in &mut self.streams {
            if let Some(message) = state.splitter.flush() {
                records.extend(
                    CriLogLine {
                        timestamp: now.clone(),
                        stream: state.stream,
                        partial: false,
                        message,
                    }
                    .encode(),
                );
            }
        }
        if !records.is_empty() {
            self.write_and_commit(&records)?;
        }
        Ok(())
    }

    /// Pumps every [`LOG_POLL`] until `stop` turns true (or its sender is
    /// dropped), then finishes.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            while self.pump()? >= PASS_LIMIT {}
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                () = tokio::time::sleep(LOG_POLL) => {}
            }
        }
        self.finish()
    }

    /// The paths this pump works on.
    pub fn paths(&self) -> &LogPaths {
        &self.paths
    }

    fn write_and_commit(&mut self, records: &[u8]) -> Result<()> {
        self.out
            .write_all(records)
            .map_err(RuntimeError::io(&self.paths.cri_log, "append"))?;
        // Offsets after the records: a crash in between repeats records
        // (at least once) rather than losing them.
        write_offsets(
            &self.paths.offsets,
            self.streams[0].emitted(),
            self.streams[1].emitted(),
        )?;
        for state in &mut self.streams {
            punch_consumed(state);
        }
        Ok(())
    }
}

fn read_new(state: &mut StreamState) -> Result<Vec<u8>> {
    if state.file.is_none() {
        match OpenOptions::new().read(true).write(true).open(&state.path) {
            Ok(file) => state.file = Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuntimeError::io(&state.path, "open raw log")(e)),
        }
    }
    let Some(file) = state.file.as_mut() else {
        return Ok(Vec::new());
    };
    file.seek(SeekFrom::Start(state.consumed))
        .map_err(RuntimeError::io(&state.path, "seek"))?;
    let mut data = Vec::new();
    file.take(PASS_LIMIT)
        .read_to_end(&mut data)
        .map_err(RuntimeError::io(&state.path, "read"))?;
    state.consumed += data.len() as u64;
    Ok(data)
}

/// Releases converted raw bytes (best effort: file systems without hole
/// punching just keep them).
fn punch_consumed(state: &mut StreamState) {
    let upto = state.emitted() / PUNCH_ALIGN * PUNCH_ALIGN;
    let Some(file) = &state.file else {
        return;
    };
    if upto <= state.punched {
        return;
    }
    let (Ok(offset), Ok(len)) = (
        libc::off_t::try_from(state.punched),
        libc::off_t::try_from(upto - state.punched),
    ) else {
        return;
    };
    // SAFETY: fallocate on our open descriptor; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if rc == 0 {
        state.punched = upto;
    }
}

fn read_offsets(path: &Path) -> Result<(u64, u64)> {
    let content = match fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(RuntimeError::io(path, "read")(e)),
    };
    let mut fields = content.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(out)), Some(Ok(err))) => Ok((out, err)),
        _ => Err(RuntimeError::invalid(
            "log offsets",
            content.trim(),
            "not two numbers",
        )),
    }
}

fn write_offsets(path: &Path, stdout: u64, stderr: u64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{stdout} {stderr}\n")).map_err(RuntimeError::io(&tmp, "write"))?;
    fs::rename(&tmp, path).map_err(RuntimeError::io(path, "rename into place"))
}

/// Reads CRI records back from a log file, optionally following it.
#[derive(Debug)]
pub struct LogFollower {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    done: Option<watch::Receiver<bool>>,
}

impl LogFollower {
    /// Reads `path` from the start. With `done` (follow mode) it waits for
    /// more records at the end until `done` is true (or its sender gone)
    /// and everything was read; without, it stops at the end.
    pub fn open(path: &Path, done: Option<watch::Receiver<bool>>) -> Result<LogFollower> {
        let file = File::open(path).map_err(RuntimeError::io(path, "open CRI log"))?;
        Ok(LogFollower {
            path: path.to_path_buf(),
            file,
            buf: Vec::new(),
            done,
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
            let Some(done) = self.done.as_mut() else {
                return Ok(None);
            };
            let finished = *done.borrow_and_update();
            if finished {
                // The pump finished before we looked: one last read.
                if self.read_more()? == 0 {
                    return Ok(None);
                }
                continue;
            }
            tokio::select! {
                changed = done.changed() => {
                    if changed.is_err() {
                        // Sender gone: treat as finished after a last read.
                        self.done = None;
                    }
                }
                () = tokio::time::sleep(LOG_POLL) => {}
            }
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
    fn runtime_logs_pump_converts_and_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = LogPaths::new(dir.path(), &dir.path().join("logs/0.log"));
        let (mut out, mut err) = paths.open_raw_for_container().expect("raw");
        out.write_all(b"hello\npart").expect("write");
        err.write_all(b"oops\n").expect("write");
        let mut pump = LogPump::open(paths.clone()).expect("pump");
        pump.pump().expect("pump");
        drop(pump); // "agent killed": the held-back "part" is not committed
        out.write_all(b"ial\n").expect("write");
        let mut pump = LogPump::open(paths.clone()).expect("resume");
        pump.pump().expect("pump");
        out.write_all(b"tail without newline").expect("write");
        pump.finish().expect("finish");
        let log = fs::read(&paths.cri_log).expect("read log");
        let lines: Vec<CriLogLine> = log
            .split_inclusive(|&b| b == b'\n')
            .map(|l| CriLogLine::parse(l).expect("record"))
            .collect();
        let text: Vec<(LogStream, bool, String)> = lines
            .iter()
            .map(|l| {
                (
                    l.stream,
                    l.partial,
                    String::from_utf8_lossy(&l.message).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            text,
            vec![
                (LogStream::Stdout, false, "hello".to_string()),
                (LogStream::Stderr, false, "oops".to_string()),
                (LogStream::Stdout, false, "partial".to_string()),
                (LogStream::Stdout, false, "tail without newline".to_string()),
            ]
        );
    }

    #[tokio::test]
    async fn runtime_logs_follower_waits_until_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        fs::write(&path, b"t stdout F one\n").expect("write");
        let (tx, rx) = watch::channel(false);
        let mut follower = LogFollower::open(&path, Some(rx)).expect("open");
        let first = follower.next().await.expect("next").expect("line");
        assert_eq!(first.message, b"one");
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(120)).await;
                let mut f = OpenOptions::new().append(true).open(&path).expect("append");
                f.write_all(b"t stderr F two\n").expect("write");
                tx.send(true).expect("send");
            })
        };
        let second = follower.next().await.expect("next").expect("line");
        assert_eq!(
            (second.stream, second.message.as_slice()),
            (LogStream::Stderr, &b"two"[..])
        );
        assert_eq!(follower.next().await.expect("end"), None);
        writer.await.expect("writer");
        let mut plain = LogFollower::open(&path, None).expect("open");
        assert!(plain.next().await.expect("next").is_some());
        assert!(plain.next().await.expect("next").is_some());
        assert_eq!(plain.next().await.expect("end"), None);
    }
}
