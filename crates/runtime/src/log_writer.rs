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
//! It refuses nothing it reads (any bytes are a message) and never blocks
//! the container on the disk: a failed write drops those records and the
//! writer reads on.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::error::{Result, RuntimeError};
use super::logs::{format_timestamp, CriLogLine, LineSplitter, LogStream};
use super::reaper::ExitWatch;

/// The descriptors the writer process is given: the read ends of the
/// container's stdout and stderr pipes, and a pipe it signals readiness on.
pub const STDOUT_FD: i32 = 3;
/// See [`STDOUT_FD`].
pub const STDERR_FD: i32 = 4;
/// See [`STDOUT_FD`].
pub const READY_FD: i32 = 5;

/// How long a spawned writer may take to lock its log.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a container is given as stdout and stderr: pipe write ends.
#[derive(Debug)]
pub struct ContainerOutput {
    /// The stdout pipe's write end.
    pub stdout: File,
    /// The stderr pipe's write end.
    pub stderr: File,
}

/// Starts a writer (`program`, normally `stratum-log-writer`) for the CRI
/// log at `log`, and returns the pipe ends for the container once the
/// writer holds its lock. The writer ends on its own (see module docs).
pub fn spawn(program: &Path, log: &Path) -> Result<ContainerOutput> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)
            .map_err(RuntimeError::io(parent, "create log directory"))?;
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(program);
    cmd.arg("--log")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls: setsid,
    // fcntl and dup2. The sources are first copied above the targets, so
    // that one target number being another's source cannot clobber it;
    // dup2 leaves O_CLOEXEC off the copy it makes.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut high = [0; 3];
            for (slot, fd) in high.iter_mut().zip(fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (target, fd) in [STDOUT_FD, STDERR_FD, READY_FD].into_iter().zip(high) {
                if libc::dup2(fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(RuntimeError::io(program, "start the log writer"))?;
    drop((out_r, err_r, ready_w));
    let ready = wait_ready(ready_r);
    if let Err(e) = ready {
        let _ = child.kill();
        let _ = child.wait();
        return Err(RuntimeError::io(program, "start the log writer")(e));
    }
    reap_when_done(child);
    Ok(ContainerOutput {
        stdout: File::from(out_w),
        stderr: File::from(err_w),
    })
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
    let Ok(file) = File::open(log) else {
        return false;
    };
    // SAFETY: flock on our own descriptor; it is released when `file`
    // closes at the end of this function.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
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

/// The writer process's work: lock `log`, say ready, convert both pipes
/// until both are closed. Called by `stratum-log-writer` with the
/// descriptors it was given.
pub fn serve(log: &Path, stdout: OwnedFd, stderr: OwnedFd, ready: OwnedFd) -> io::Result<()> {
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(log)?;
    // SAFETY: flock on our own open descriptor; held until the process ends.
    if unsafe { libc::flock(out.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    File::from(ready).write_all(b"r")?;
    let mut streams = [
        Stream::new(LogStream::Stdout, stdout),
        Stream::new(LogStream::Stderr, stderr),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    while streams.iter().any(|s| s.pipe.is_some()) {
        wait_readable(&streams)?;
        let mut records = Vec::new();
        for stream in &mut streams {
            stream.read_into(&mut buf, &mut records)?;
        }
        if !records.is_empty() {
            // A full disk loses these records, never the container's time.
            let _ = out.write_all(&records);
        }
    }
    Ok(())
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
    /// records; at end of file the unfinished line becomes a record.
    fn read_into(&mut self, buf: &mut [u8], records: &mut Vec<u8>) -> io::Result<()> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(());
        };
        if !is_readable(pipe)? {
            return Ok(());
        }
        let n = match pipe.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        };
        let now = format_timestamp(SystemTime::now());
        let mut record = |partial, message| {
            records.extend(
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

/// Blocks until one of the open pipes is readable or hung up.
fn wait_readable(streams: &[Stream]) -> io::Result<()> {
    let mut fds: Vec<libc::pollfd> = streams
        .iter()
        .filter_map(|s| s.pipe.as_ref())
        .map(|p| libc::pollfd {
            fd: p.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let count = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    loop {
        // SAFETY: `fds` holds `count` valid pollfd entries.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), count, -1) };
        if rc >= 0 {
            return Ok(());
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
    exe.and_then(Path::parent)
        .map(|dir| dir.join("stratum-log-writer"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("stratum-log-writer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogFollower;

    /// `serve` in a thread, as the writer process runs it.
    fn serving(log: &Path) -> (File, File, std::thread::JoinHandle<io::Result<()>>) {
        let (out_r, out_w) = pipe().unwrap();
        let (err_r, err_w) = pipe().unwrap();
        let (ready_r, ready_w) = pipe().unwrap();
        let log = log.to_path_buf();
        let handle = std::thread::spawn(move || serve(&log, out_r, err_r, ready_w));
        wait_ready(ready_r).expect("ready");
        (File::from(out_w), File::from(err_w), handle)
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
