//! The per-container log writer: a small process (`stratum-log-writer`)
//! that owns a container's CRI log file and turns what the container
//! writes to its stdout and stderr pipes into CRI records.
//!
//! Why a process with pipes, as containerd's shim and conmon do: a
//! container's stdout must not be a file the container can reach. With a
//! file, the common entrypoint idiom `cmd > /dev/stdout` reopens it with
//! `O_TRUNC` and cuts away what was written; a pipe cannot be truncated or
//! seeked. Why not pipes read by the agent: the agent restarts, and a pipe
//! whose reader died gives the container `SIGPIPE`. The writer runs in a
//! session of its own, outlives an agent `kill -9`, and exits by itself
//! once every copy of the pipes' write ends is closed — the container and
//! anything it forked have exited — after writing the last unfinished
//! lines.
//!
//! The writer holds an exclusive `flock` on the log file from before the
//! container exists until it has written the last record; a reader that
//! can take a shared lock knows nothing more will be written by this run
//! ([`writer_active`]). No pid is kept, so nothing here can mistake a
//! recycled pid for the writer.
//!
//! **Rotation**, as the kubelet's `containerLogMaxSize` and
//! `containerLogMaxFiles` ([`LogRotation`]): before a record would take
//! the log past its max size, the writer puts a new file in its place and
//! keeps the old one as `<name>.log.<N>` (see `logs` for the names); the
//! oldest rotated files are deleted so that at most max-files files are
//! left, the current one included. The new file is created under a hidden
//! name and locked first, the current one is hard-linked to its rotated
//! name, and the new one is renamed over the log's name: the log's name
//! always names a file the writer holds, so a reader never finds it
//! missing or unlocked mid-rotation, and only records written after the
//! switch go to the new file. Unlike the kubelet's (which checks every
//! 10 s), a file never passes the max size, except by its one record when
//! a record is longer than the max size. Rotated files are not compressed.
//! A writer that takes the lock after another (a container's next run)
//! checks that the file it locked is still the log's, and locks the
//! current one if it was rotated meanwhile.
//!
//! **Rotation by someone else** (the kubelet's own log manager renames a
//! log and then asks for it to be reopened): at least once a second, and
//! before each batch of records, the writer checks that the log's name
//! still names the file it holds; when the file was renamed or removed it
//! makes and locks a new one under the name. Records written before it
//! noticed stay in the renamed file, where the kubelet expects them. A
//! file at the name that another writer holds is left alone (the writer
//! keeps its own) rather than waited for.
//!
//! It refuses nothing it reads (any bytes are a message) and never blocks
//! the container on the disk: a failed write drops those records and the
//! writer reads on; a failed rotation leaves the current file growing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::attach::{pollfd, set_nonblocking, AttachServer, ContainerInput};
use super::error::{Result, RuntimeError};
use super::logs::{
    format_timestamp, rotated_files, rotated_path, CriLogLine, LineSplitter, LogStream,
};
use super::oci::ContainerStdio;
use super::reaper::ExitWatch;

/// The descriptors the writer process is given: the read end of the
/// container's stdout pipe, or its terminal's master (`--terminal`).
pub const STDOUT_FD: i32 = 3;
/// The read end of the container's stderr pipe (none with a terminal).
pub const STDERR_FD: i32 = 4;
/// A pipe the writer signals readiness on.
pub const READY_FD: i32 = 5;
/// The write end of the container's stdin pipe (`--stdin`, no terminal).
pub const STDIN_FD: i32 = 6;
/// The attach socket's listener (`--attach`; see [`crate::attach`]).
pub const ATTACH_FD: i32 = 7;

/// How often an idle writer checks that its log was not renamed away.
pub const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// How long a spawned writer may take to lock its log.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// When a container's log is rotated and how many files are kept (the
/// kubelet's `containerLogMaxSize` and `containerLogMaxFiles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    /// A file is rotated before a record would take it past this size.
    pub max_size: u64,
    /// Files kept, the current one included.
    pub max_files: u32,
}

impl LogRotation {
    /// The kubelet's default max size: 10 MiB.
    pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
    /// The kubelet's default number of files: 5.
    pub const DEFAULT_MAX_FILES: u32 = 5;
    /// The smallest max size taken (smaller is a unit mistake).
    pub const MIN_MAX_SIZE: u64 = 1024;

    /// Checked limits: a max size of at least [`Self::MIN_MAX_SIZE`], and
    /// at least 2 files (the current one and one rotated, as the kubelet
    /// requires: with one, rotating would be truncating).
    pub fn new(max_size: u64, max_files: u32) -> Result<LogRotation> {
        if max_size < Self::MIN_MAX_SIZE {
            return Err(RuntimeError::invalid(
                "container log max size",
                max_size.to_string(),
                "below 1 KiB",
            ));
        }
        if max_files < 2 {
            return Err(RuntimeError::invalid(
                "container log max files",
                max_files.to_string(),
                "fewer than 2",
            ));
        }
        Ok(LogRotation {
            max_size,
            max_files,
        })
    }
}

impl Default for LogRotation {
    fn default() -> Self {
        LogRotation {
            max_size: Self::DEFAULT_MAX_SIZE,
            max_files: Self::DEFAULT_MAX_FILES,
        }
    }
}

/// A size as the kubelet writes it (`10Mi`, `16Ki`, `1Gi`), with `KiB`,
/// `MiB`, `GiB` or `K`/`M`/`G` (binary too), or bytes.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let shift = match unit.trim() {
        "" => 0,
        "Ki" | "KiB" | "K" | "k" => 10,
        "Mi" | "MiB" | "M" => 20,
        "Gi" | "GiB" | "G" => 30,
        _ => return Err(format!("{s:?}: a size (10Mi, 16Ki, 1Gi) or bytes")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{s:?}: a size (10Mi, 16Ki, 1Gi) or bytes"))
}

/// Where a container's output comes from and its input goes.
#[derive(Debug)]
pub enum WriterSource {
    /// Pipes made by [`spawn`]: stdout and stderr, and stdin when `stdin`.
    Pipes {
        /// Give the container a stdin pipe whose write end the writer
        /// holds for attached clients.
        stdin: bool,
    },
    /// The master of the container's terminal, which the runtime made;
    /// `stdin`: clients' input is written to it.
    Terminal {
        /// The pty master.
        master: OwnedFd,
        /// Whether attached clients' input goes to the terminal.
        stdin: bool,
    },
}

/// Starts a writer (`program`, normally `stratum-log-writer`) for the CRI
/// log at `log`, serving attach clients on `attach` if given, and returns
/// the pipe ends for the container once the writer holds its lock. The
/// writer ends on its own (see module docs).
pub fn spawn(
    program: &Path,
    log: &Path,
    rotation: LogRotation,
    source: WriterSource,
    attach: Option<UnixListener>,
) -> Result<ContainerStdio> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)
            .map_err(RuntimeError::io(parent, "create log directory"))?;
    }
    // (descriptor number in the writer, our descriptor)
    let mut given: Vec<(i32, OwnedFd)> = Vec::new();
    let mut cmd = Command::new(program);
    let stdio = match source {
        WriterSource::Pipes { stdin } => {
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            given.push((STDOUT_FD, out_r));
            given.push((STDERR_FD, err_r));
            let stdin = if stdin {
                let (in_r, in_w) = pipe()?;
                given.push((STDIN_FD, in_w));
                cmd.arg("--stdin");
                Some(File::from(in_r))
            } else {
                None
            };
            ContainerStdio::Files {
                stdin,
                stdout: File::from(out_w),
                stderr: File::from(err_w),
            }
        }
        WriterSource::Terminal { master, stdin } => {
            given.push((STDOUT_FD, master));
            cmd.arg("--terminal");
            if stdin {
                cmd.arg("--stdin");
            }
            ContainerStdio::Terminal
        }
    };
    if let Some(listener) = attach {
        given.push((ATTACH_FD, OwnedFd::from(listener)));
        cmd.arg("--attach");
    }
    let (ready_r, ready_w) = pipe()?;
    given.push((READY_FD, ready_w));
    cmd.arg("--log")
        .arg(log)
        .arg("--max-size")
        .arg(rotation.max_size.to_string())
        .arg("--max-files")
        .arg(rotation.max_files.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pairs: Vec<(i32, i32)> = given.iter().map(|(n, fd)| (*n, fd.as_raw_fd())).collect();
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // fcntl and dup2, on a vector allocated before the fork. The sources
    // are first copied above the targets, so that one target number being
    // another's source cannot clobber it; dup2 leaves O_CLOEXEC off the
    // copy it makes.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut high = [0; 8];
            for (slot, (_, fd)) in high.iter_mut().zip(&pairs) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for ((target, _), fd) in pairs.iter().zip(high) {
                if libc::dup2(fd, *target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(RuntimeError::io(program, "start the log writer"))?;
    drop(given);
    let ready = wait_ready(ready_r);
    if let Err(e) = ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(RuntimeError::io(program, "start the log writer")(e));
    }
    reap_when_done(child);
    Ok(stdio)
}

/// The writer is our child until an agent restart: its status is
/// collected when it ends, or it would stay a zombie. After a restart it
/// belongs to init (or the nearest subreaper above the old agent).
fn reap_when_done(child: std::process::Child) {
    // The pid cannot be reused before the watch is open: `child` is not
    // reaped yet.
    match ExitWatch::open(child.id()) {
        Ok(watch) => {
            tokio::spawn(async move {
                let _ = watch.wait().await;
            });
        }
        Err(_) => {
            let mut child = child;
            std::thread::spawn(move || child.wait());
        }
    }
}

/// Waits for the writer's one byte on the ready pipe (EOF: it died).
fn wait_ready(ready: OwnedFd) -> io::Result<()> {
    let mut pollfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(READY_TIMEOUT.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd and its count.
    let rc = unsafe { libc::poll(&mut pollfd, 1, millis) };
    if rc == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the log writer never got ready",
        ));
    }
    let mut byte = [0u8; 1];
    match File::from(ready).read(&mut byte)? {
        1 => Ok(()),
        _ => Err(io::Error::other(
            "the log writer exited before it was ready",
        )),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(RuntimeError::sys("pipe2")(io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether a writer still holds the log at `log` (more records may come).
/// A missing log has no writer.
pub fn writer_active(log: &Path) -> bool {
    // A file the writer has just rotated away may be unlocked already:
    // a lock taken is only conclusive on the file still at `log`.
    for _ in 0..16 {
        let Ok(file) = File::open(log) else {
            return false;
        };
        // SAFETY: flock on our own descriptor; it is released when `file`
        // closes at the end of this iteration.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        if rc != 0 {
            return io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK);
        }
        match (file.metadata(), fs::metadata(log)) {
            (Ok(ours), Ok(now)) if same_file(&ours, &now) => return false,
            (_, Err(_)) => return false,
            _ => continue,
        }
    }
    // Rotating faster than we can look: something is writing.
    true
}

fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Waits until no writer holds `log` (at most `timeout`): everything the
/// container wrote is in the log.
pub async fn wait_finished(log: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while writer_active(log) {
        if Instant::now() >= deadline {
            return Err(RuntimeError::sys("wait for the log writer")(
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} is still being written", log.display()),
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The descriptors a writer process was given (see [`spawn`]).
#[derive(Debug)]
pub struct WriterIo {
    /// Where the container's output comes from and its input goes.
    pub output: WriterOutput,
    /// The attach socket's listener, if clients may attach.
    pub attach: Option<OwnedFd>,
    /// The readiness pipe.
    pub ready: OwnedFd,
}

/// The container's side of a writer.
#[derive(Debug)]
pub enum WriterOutput {
    /// Pipes: stdout's and stderr's read ends, stdin's write end.
    Pipes {
        /// Read end of the stdout pipe.
        stdout: OwnedFd,
        /// Read end of the stderr pipe.
        stderr: OwnedFd,
        /// Write end of the stdin pipe, if the container has one.
        stdin: Option<OwnedFd>,
    },
    /// A terminal's master: output (logged as stdout) and input.
    Terminal {
        /// The pty master.
        master: OwnedFd,
        /// Whether clients' input is written to it.
        stdin: bool,
    },
}

/// The writer process's work: lock `log`, say ready, convert the
/// container's output into records until it has ended, rotating the log
/// by `rotation`, and serve attached clients meanwhile (see
/// [`crate::attach`]). Called by `stratum-log-writer` with the
/// descriptors it was given.
pub fn serve(log: &Path, rotation: LogRotation, io: WriterIo) -> io::Result<()> {
    let mut out = RotatingLog::open(log, rotation)?;
    let (mut streams, mut input) = match io.output {
        WriterOutput::Pipes {
            stdout,
            stderr,
            stdin,
        } => (
            vec![
                Stream::new(LogStream::Stdout, stdout),
                Stream::new(LogStream::Stderr, stderr),
            ],
            stdin.map(ContainerInput::pipe).transpose()?,
        ),
        WriterOutput::Terminal { master, stdin } => {
            let master = File::from(master);
            let copy = master.try_clone()?;
            // Shared by both copies: reads and writes never block the loop.
            set_nonblocking(&master)?;
            (
                vec![Stream::new(LogStream::Stdout, OwnedFd::from(master))],
                Some(ContainerInput::terminal(copy, stdin)),
            )
        }
    };
    let mut attach = io.attach.map(AttachServer::new).transpose()?;
    File::from(io.ready).write_all(b"r")?;
    let mut buf = vec![0u8; 64 * 1024];
    while streams.iter().any(|s| s.pipe.is_some()) {
        // Clients are read (for their frames, and to see them go) unless
        // the container has not taken what they sent.
        let read_input = input.as_ref().is_none_or(ContainerInput::has_room);
        let polled = wait_ready_fds(&streams, attach.as_ref(), input.as_ref(), read_input)?;
        if let (Some(attach), Some((fds, at))) = (attach.as_mut(), polled) {
            attach.drop_hung_up(&fds[at..]);
        }
        out.follow_rename();
        let mut records = Vec::new();
        let mut chunks = Vec::new();
        for stream in &mut streams {
            stream.read_into(&mut buf, &mut records, &mut chunks)?;
        }
        out.append(&records);
        if let Some(attach) = attach.as_mut() {
            for (stream, data) in &chunks {
                attach.broadcast(*stream, data);
            }
            // Clients that went away leave before new ones are counted.
            let frames = if read_input {
                attach.read_frames()
            } else {
                Vec::new()
            };
            if let Some(input) = input.as_mut() {
                frames.into_iter().for_each(|f| input.apply(f));
            }
            attach.accept();
            attach.flush();
        }
        if let Some(sink) = input.as_mut() {
            sink.flush();
        }
    }
    if let Some(attach) = attach {
        attach.finish(ATTACH_DRAIN);
    }
    Ok(())
}

/// How long attached clients may take to receive the last output.
const ATTACH_DRAIN: Duration = Duration::from_secs(1);

/// The log's current file, held under an exclusive lock, and its
/// rotation (see the module docs).
struct RotatingLog {
    path: PathBuf,
    file: File,
    /// Bytes in `file`.
    size: u64,
    rotation: LogRotation,
    /// The number the next rotated file gets.
    next_number: u64,
}

impl RotatingLog {
    fn open(path: &Path, rotation: LogRotation) -> io::Result<RotatingLog> {
        let file = lock_current(path)?;
        let meta = file.metadata()?;
        let _ = fs::remove_file(staging_path(path));
        // A writer that died between linking the current file to its
        // rotated name and putting the new one in place: that rotation did
        // not happen (else its records would count, and be kept, twice).
        if meta.nlink() > 1 {
            for (_, rotated) in rotated_files(path)? {
                if fs::metadata(&rotated).is_ok_and(|m| same_file(&m, &meta)) {
                    let _ = fs::remove_file(rotated);
                }
            }
        }
        let size = meta.len();
        let next_number = rotated_files(path)?.last().map_or(1, |(n, _)| n + 1);
        let log = RotatingLog {
            path: path.to_path_buf(),
            file,
            size,
            rotation,
            next_number,
        };
        // Fewer files may be kept now than when they were written.
        log.prune(log.keep_rotated());
        Ok(log)
    }

    /// Puts a new file under the log's name when the one held was renamed
    /// or removed by someone else (see the module docs).
    fn follow_rename(&mut self) {
        let held = self.file.metadata();
        let named = fs::metadata(&self.path);
        if let (Ok(held), Ok(named)) = (&held, &named) {
            if same_file(held, named) {
                return;
            }
        }
        let Ok(file) = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)
        else {
            return;
        };
        // SAFETY: flock on a descriptor `file` owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return;
        }
        self.size = file.metadata().map_or(0, |m| m.len());
        self.file = file;
    }

    /// Rotated files kept besides the current one.
    fn keep_rotated(&self) -> usize {
        usize::try_from(self.rotation.max_files.saturating_sub(1)).unwrap_or(usize::MAX)
    }

    /// Appends whole records, rotating before one would take the file
    /// past the max size. A failed write loses its records.
    fn append(&mut self, records: &[Vec<u8>]) {
        let mut chunk: Vec<u8> = Vec::new();
        for record in records {
            let pending = self.size + chunk.len() as u64;
            if pending > 0 && pending + record.len() as u64 > self.rotation.max_size {
                self.write(&chunk);
                chunk.clear();
                if self.size > 0 {
                    // A failed rotation (a full disk) keeps the file growing
                    // rather than losing records.
                    let _ = self.rotate();
                }
            }
            chunk.extend_from_slice(record);
        }
        self.write(&chunk);
    }

    fn write(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match self.file.write_all(data) {
            Ok(()) => self.size += data.len() as u64,
            Err(_) => {
                if let Ok(meta) = self.file.metadata() {
                    self.size = meta.len();
                }
            }
        }
    }

    /// Puts a new, locked file in place of the current one, which keeps
    /// its records as the next rotated file; deletes the oldest rotated
    /// files beyond max-files first.
    fn rotate(&mut self) -> io::Result<()> {
        let staging = staging_path(&self.path);
        let _ = fs::remove_file(&staging);
        let new = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o640)
            .open(&staging)?;
        if let Err(e) = lock(&new) {
            let _ = fs::remove_file(&staging);
            return Err(e);
        }
        // With the one rotated below, max-files files in all.
        self.prune(self.keep_rotated().saturating_sub(1));
        let rotated = rotated_path(&self.path, self.next_number);
        if let Err(e) = fs::hard_link(&self.path, &rotated) {
            let _ = fs::remove_file(&staging);
            return Err(e);
        }
        if let Err(e) = fs::rename(&staging, &self.path) {
            // Else the records would be found twice.
            let _ = fs::remove_file(&rotated);
            let _ = fs::remove_file(&staging);
            return Err(e);
        }
        self.next_number += 1;
        // The old file's lock goes with it: it is complete.
        self.file = new;
        self.size = 0;
        Ok(())
    }

    /// Deletes the oldest rotated files until `keep` are left.
    fn prune(&self, keep: usize) {
        let Ok(rotated) = rotated_files(&self.path) else {
            return;
        };
        let surplus = rotated.len().saturating_sub(keep);
        for (_, file) in rotated.into_iter().take(surplus) {
            let _ = fs::remove_file(file);
        }
    }
}

/// The hidden name a new file is made under: `.<name>.next`.
fn staging_path(log: &Path) -> PathBuf {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    log.with_file_name(format!(".{name}.next"))
}

/// Opens the log's current file (made if missing) and locks it, waiting
/// for a writer before us to finish; when the file locked is no longer
/// the log's (that writer rotated it), the current one is locked instead.
fn lock_current(path: &Path) -> io::Result<File> {
    loop {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        lock(&file)?;
        match fs::metadata(path) {
            Ok(now) if same_file(&file.metadata()?, &now) => return Ok(file),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

/// An exclusive lock on `file`, held until it is closed.
fn lock(file: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor `file` owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// One of the container's output pipes and its unfinished line.
struct Stream {
    kind: LogStream,
    pipe: Option<File>,
    splitter: LineSplitter,
}

impl Stream {
    fn new(kind: LogStream, fd: OwnedFd) -> Stream {
        Stream {
            kind,
            pipe: Some(File::from(fd)),
            splitter: LineSplitter::default(),
        }
    }

    /// Reads what is there (the pipe was readable) and appends its
    /// records, and the bytes as read to `chunks`; at end of file the
    /// unfinished line becomes a record.
    fn read_into(
        &mut self,
        buf: &mut [u8],
        records: &mut Vec<Vec<u8>>,
        chunks: &mut Vec<(LogStream, Vec<u8>)>,
    ) -> io::Result<()> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(());
        };
        if !is_readable(pipe)? {
            return Ok(());
        }
        let n = match pipe.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // A terminal's master once no process holds the terminal.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
            Err(e) => return Err(e),
        };
        if n > 0 {
            chunks.push((self.kind, buf[..n].to_vec()));
        }
        let now = format_timestamp(SystemTime::now());
        let mut record = |partial, message| {
            records.push(
                CriLogLine {
                    timestamp: now.clone(),
                    stream: self.kind,
                    partial,
                    message,
                }
                .encode(),
            )
        };
        if n == 0 {
            if let Some(rest) = self.splitter.flush() {
                record(false, rest);
            }
            self.pipe = None;
            return Ok(());
        }
        for (partial, message) in self.splitter.push(&buf[..n]) {
            record(partial, message);
        }
        Ok(())
    }
}

/// Blocks until one of the open pipes is readable or hung up, or an
/// attach client or the container's input wants attention, at most
/// [`FOLLOW_INTERVAL`]. With an attach server, returns what was polled
/// and where its entries start.
fn wait_ready_fds(
    streams: &[Stream],
    attach: Option<&AttachServer>,
    input: Option<&ContainerInput>,
    read_input: bool,
) -> io::Result<Option<(Vec<libc::pollfd>, usize)>> {
    let mut fds: Vec<libc::pollfd> = streams
        .iter()
        .filter_map(|s| s.pipe.as_ref())
        .map(|p| pollfd(p.as_raw_fd(), libc::POLLIN))
        .collect();
    let attach_at = fds.len();
    if let Some(attach) = attach {
        attach.poll_fds(read_input, &mut fds);
    }
    fds.extend(input.and_then(ContainerInput::poll_fd));
    let count = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    let timeout_ms = i32::try_from(FOLLOW_INTERVAL.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: `fds` holds `count` valid pollfd entries.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_ms) };
        if rc >= 0 {
            return Ok(attach.map(|_| (fds, attach_at)));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether a read on `pipe` returns at once (data or end of file).
fn is_readable(pipe: &File) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut pollfd, 1, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc > 0 && pollfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
}

/// The log writer program next to `exe` (as cargo and packages lay them
/// out), else `stratum-log-writer` on PATH.
pub fn default_program(exe: Option<&Path>) -> PathBuf {
    crate::sibling_program(exe, "stratum-log-writer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogFollower;

    type Serving = (File, File, std::thread::JoinHandle<io::Result<()>>);

    /// `serve` in a thread, as the writer process runs it.
    fn serving(log: &Path) -> Serving {
        serving_with(log, LogRotation::default())
    }

    fn serving_with(log: &Path, rotation: LogRotation) -> Serving {
        let (out, err, ready, handle) = start_serving(log, rotation);
        wait_ready(ready).expect("ready");
        (out, err, handle)
    }

    /// `serve` in a thread; its ready pipe is the caller's to wait on.
    fn start_serving(
        log: &Path,
        rotation: LogRotation,
    ) -> (File, File, OwnedFd, std::thread::JoinHandle<io::Result<()>>) {
        let (out_r, out_w) = pipe().unwrap();
        let (err_r, err_w) = pipe().unwrap();
        let (ready_r, ready_w) = pipe().unwrap();
        let log = log.to_path_buf();
        let io = WriterIo {
            output: WriterOutput::Pipes {
                stdout: out_r,
                stderr: err_r,
                stdin: None,
            },
            attach: None,
            ready: ready_w,
        };
        let handle = std::thread::spawn(move || serve(&log, rotation, io));
        (File::from(out_w), File::from(err_w), ready_r, handle)
    }

    /// The names of the log's files in `dir` (the writer's hidden staging
    /// file included, should it be there), sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The messages of every record in the log's files, oldest first.
    async fn messages(log: &Path) -> Vec<String> {
        let mut follower = LogFollower::open(log, false).expect("open");
        let mut got = Vec::new();
        while let Some(line) = follower.next().await.expect("record") {
            got.push(String::from_utf8_lossy(&line.message).into_owned());
        }
        got
    }

    fn line(i: usize) -> String {
        format!("line {i:05} of a chatty container")
    }

    /// Numbered lines from `from` on, each one consecutive.
    fn assert_consecutive(got: &[String], from: usize) {
        for (k, message) in got.iter().enumerate() {
            assert_eq!(*message, line(from + k), "record {k} of {}", got.len());
        }
    }

    #[tokio::test]
    async fn rotation_bounds_file_sizes_and_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        let rotation = LogRotation::new(1024, 3).expect("rotation");
        let (mut out, err, handle) = serving_with(&log, rotation);
        // Watch the directory while the writer rotates: never more than
        // three log files, the staging file aside.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (dir, done) = (dir.path().to_path_buf(), done.clone());
            std::thread::spawn(move || {
                let mut most = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let count = names(&dir).iter().filter(|n| !n.starts_with('.')).count();
                    most = most.max(count);
                }
                most
            })
        };
        let total = 600;
        for i in 0..total {
            writeln!(out, "{}", line(i)).unwrap();
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        drop((out, err));
        handle.join().unwrap().expect("serve");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            watcher.join().unwrap() <= 3,
            "more than three files at once"
        );
        let files = names(dir.path());
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files[0], "c.log", "{files:?}");
        let mut numbers: Vec<u64> = files[1..]
            .iter()
            .map(|n| n.strip_prefix("c.log.").unwrap().parse().unwrap())
            .collect();
        numbers.sort_unstable();
        // Each record is ~75 bytes: 13 to a file, about 46 rotations.
        assert!(numbers[0] > 30 && numbers[1] == numbers[0] + 1, "{files:?}");
        for name in &files {
            let size = fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(size <= 1024 && size > 0, "{name}: {size} bytes");
        }
        for (_, rotated) in rotated_files(&log).unwrap() {
            let size = fs::metadata(&rotated).unwrap().len();
            assert!(size > 1024 - 100, "a rotated file is about full: {size}");
        }
        // The files read in order hold the last records, nothing missing
        // between them.
        let got = messages(&log).await;
        assert!(got.len() > 26, "{}", got.len());
        assert_consecutive(&got, total - got.len());
    }

    /// The kubelet's rotation: rename the log, ask for a reopen. The
    /// writer puts a new file under the name by itself, even while the
    /// container is silent, and new records go there.
    #[test]
    fn a_log_renamed_away_is_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        let (mut out, err, handle) = serving(&log);
        writeln!(out, "before").unwrap();
        let wait_for = |path: &Path, text: &str| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !fs::read_to_string(path).unwrap_or_default().contains(text) {
                assert!(
                    Instant::now() < deadline,
                    "{} never had {text:?}",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for(&log, "before");
        let renamed = dir.path().join("c.log.20261206-160000");
        fs::rename(&log, &renamed).unwrap();
        let deadline = Instant::now() + FOLLOW_INTERVAL * 3;
        while !writer_active(&log) {
            assert!(Instant::now() < deadline, "no new log under the name");
            std::thread::sleep(Duration::from_millis(20));
        }
        writeln!(out, "after").unwrap();
        wait_for(&log, "after");
        drop((out, err));
        handle.join().unwrap().expect("serve");
        let old = fs::read_to_string(&renamed).unwrap();
        let new = fs::read_to_string(&log).unwrap();
        assert!(old.contains("before") && !old.contains("after"), "{old}");
        assert!(new.contains("after") && !new.contains("before"), "{new}");
    }

    #[tokio::test]
    async fn a_follower_reads_across_rotations_without_loss_or_repeats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        // Enough files that none is deleted before the follower reads it.
        let rotation = LogRotation::new(1024, 10_000).expect("rotation");
        let (mut out, err, handle) = serving_with(&log, rotation);
        let mut follower = LogFollower::open(&log, true).expect("open");
        let total = 3000;
        let writer = std::thread::spawn(move || {
            for i in 0..total {
                writeln!(out, "{}", line(i)).unwrap();
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            drop((out, err));
            handle.join().unwrap()
        });
        let mut got = Vec::new();
        let followed = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(record) = follower.next().await.expect("record") {
                got.push(String::from_utf8_lossy(&record.message).into_owned());
            }
        })
        .await;
        assert!(followed.is_ok(), "the follower ends with the writer");
        writer.join().unwrap().expect("serve");
        assert!(rotated_files(&log).unwrap().len() > 100, "it did rotate");
        assert_eq!(got.len(), total);
        assert_consecutive(&got, 0);
        // Non-follow reads and tails go across the files too.
        let all = messages(&log).await;
        assert_eq!(all.len(), total);
        let mut tail = LogFollower::open(&log, false).expect("open");
        tail.keep_last(3).await.expect("tail");
        let mut last = Vec::new();
        while let Some(record) = tail.next().await.expect("record") {
            last.push(String::from_utf8_lossy(&record.message).into_owned());
        }
        assert_consecutive(&last, total - 3);
        assert_eq!(last.len(), 3);
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_goes_on_with_what_is_left() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        let rotation = LogRotation::new(1024, 2).expect("rotation");
        let (mut out, err, handle) = serving_with(&log, rotation);
        writeln!(out, "{}", line(0)).unwrap();
        let mut follower = LogFollower::open(&log, true).expect("open");
        let first = follower.next().await.expect("next").expect("line");
        assert_eq!(first.message, line(0).as_bytes());
        // Many rotations while the follower does not read: the file it
        // holds is deleted, as are the ones after it.
        for i in 1..400 {
            writeln!(out, "{}", line(i)).unwrap();
        }
        drop((out, err));
        handle.join().unwrap().expect("serve");
        let mut got = Vec::new();
        while let Some(record) = follower.next().await.expect("record") {
            got.push(String::from_utf8_lossy(&record.message).into_owned());
        }
        // The rest of the file it held (open, so still readable), then
        // the two files left; what was deleted in between is lost.
        let from_files = messages(&log).await;
        let k = got.len() - from_files.len();
        assert!(k > 0, "the held file is read to its end");
        assert_consecutive(&got[..k], 1);
        assert_eq!(&got[k..], from_files.as_slice());
        assert_consecutive(&from_files, 400 - from_files.len());
        assert!(got.len() < 399, "files were deleted unread");
    }

    #[tokio::test]
    async fn a_later_writer_takes_the_current_file_after_a_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        let rotation = LogRotation::new(1024, 5).expect("rotation");
        let (mut out, err, handle) = serving_with(&log, rotation);
        // The next run's writer waits for the lock on today's file.
        let (mut out2, err2, ready2, handle2) = start_serving(&log, rotation);
        std::thread::sleep(Duration::from_millis(50));
        for i in 0..40 {
            writeln!(out, "{}", line(i)).unwrap();
        }
        drop((out, err));
        handle.join().unwrap().expect("serve");
        wait_ready(ready2).expect("the second writer got the lock");
        assert!(writer_active(&log), "it holds the log's current file");
        writeln!(out2, "second run").unwrap();
        drop((out2, err2));
        handle2.join().unwrap().expect("serve");
        let current = fs::read_to_string(&log).unwrap();
        assert!(current.ends_with(" stdout F second run\n"), "{current}");
        let got = messages(&log).await;
        assert_eq!(got.last().map(String::as_str), Some("second run"));
        assert_consecutive(&got[..got.len() - 1], 0);
        assert_eq!(got.len(), 41);
        assert!(!names(dir.path()).iter().any(|n| n.starts_with('.')));
    }

    #[tokio::test]
    async fn a_rotation_cut_short_by_a_crash_is_undone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        fs::write(rotated_path(&log, 1), "t stdout F old\n").unwrap();
        fs::write(&log, "t stdout F current\n").unwrap();
        // Linked to its rotated name, never replaced: the writer died.
        fs::hard_link(&log, rotated_path(&log, 2)).unwrap();
        fs::write(staging_path(&log), b"").unwrap();
        let (mut out, err, handle) = serving_with(&log, LogRotation::new(1024, 5).unwrap());
        assert_eq!(names(dir.path()), ["c.log", "c.log.1"]);
        writeln!(out, "new").unwrap();
        drop((out, err));
        handle.join().unwrap().expect("serve");
        assert_eq!(messages(&log).await, ["old", "current", "new"]);
    }

    #[test]
    fn log_rotation_limits_and_sizes() {
        assert_eq!(parse_size("10Mi"), Ok(10 << 20));
        assert_eq!(parse_size("16Ki"), Ok(16 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("10MB").is_err() && parse_size("Mi").is_err());
        assert!(parse_size("99999999999999Gi").is_err());
        assert_eq!(
            LogRotation::default(),
            LogRotation::new(10 << 20, 5).expect("the kubelet's defaults")
        );
        assert!(LogRotation::new(1000, 5).is_err());
        assert!(LogRotation::new(16 << 10, 1).is_err());
    }

    #[tokio::test]
    async fn records_both_streams_until_both_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("c.log");
        let (mut out, mut err, handle) = serving(&log);
        assert!(writer_active(&log), "the writer holds its log");
        out.write_all(b"hello\npart").unwrap();
        err.write_all(b"oops\n").unwrap();
        out.write_all(b"ial\ntail without newline").unwrap();
        drop(out);
        assert!(writer_active(&log), "stderr is still open");
        drop(err);
        handle.join().unwrap().expect("serve");
        assert!(!writer_active(&log));
        let mut follower = LogFollower::open(&log, true).expect("open");
        let mut got = Vec::new();
        while let Some(line) = follower.next().await.expect("record") {
            got.push((
                line.stream,
                String::from_utf8_lossy(&line.message).into_owned(),
            ));
        }
        got.sort_by_key(|(s, _)| *s == LogStream::Stderr);
        assert_eq!(
            got,
            vec![
                (LogStream::Stdout, "hello".to_string()),
                (LogStream::Stdout, "partial".to_string()),
                (LogStream::Stdout, "tail without newline".to_string()),
                (LogStream::Stderr, "oops".to_string()),
            ]
        );
    }

    #[test]
    fn a_missing_log_has_no_writer() {
        assert!(!writer_active(Path::new("/nonexistent/c.log")));
    }
}
