//! Interactive exec: a process started in a running container by
//! [`OciRuntime::spawn_exec`](crate::oci::OciRuntime::spawn_exec) and
//! handed back while it runs, for the CRI streaming server (`kubectl exec
//! -i -t`, `crictl exec -it`), which copies bytes between the client and
//! the process until it ends.
//!
//! This module owns the running exec ([`ExecChild`]: the runtime's
//! `exec` command, its private directory, the exec'd process's pid) and
//! the container side of a terminal ([`PtyMaster`]). It does no I/O
//! copying of its own and knows no streaming protocol.
//!
//! Two shapes, decided by the process spec's `terminal`:
//! - without a terminal the runtime hands its own stdin/stdout/stderr to
//!   the process (as for exec-sync), so they are pipes here;
//! - with a terminal the runtime makes a pseudo-terminal in the container
//!   and sends its master end over a *console socket* (a Unix socket we
//!   listen on; the fd travels as `SCM_RIGHTS`), as runc and crun do for
//!   containerd. The runtime's own stdio is then null; its error messages
//!   go to its JSON log in the exec's directory.
//!
//! Refused: a console peer that sends no fd, anything but a pty master,
//! or a truncated message (typed errors, never a panic), and waiting for
//! the terminal longer than the runtime's command time limit.
//!
//! Ownership: the handle owns the exec'd process. Dropping an
//! [`ExecChild`] that was not waited for kills the process (by the pid the
//! runtime wrote) and the runtime command, and removes the directory;
//! otherwise a shell would live on in the container with nobody to talk
//! to. The killed process is re-parented to the agent (a subreaper) and
//! collected by the orphan reaper. The runtime writes the pid file only
//! some time after the process has started (crun: possibly after its first
//! output); dropped before that, only the runtime is killed, and the
//! process ends by itself on hang-up (terminal) or stdin EOF (pipes).

use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use super::error::{Result, RuntimeError};
use super::oci::{exit_code, kill_pid, read_pid};

/// A process exec'd in a container, running. See the module docs.
#[derive(Debug)]
pub struct ExecChild {
    /// The process's stdin (no terminal); dropping it gives the process EOF.
    pub stdin: Option<ChildStdin>,
    /// The process's stdout (no terminal).
    pub stdout: Option<ChildStdout>,
    /// The process's stderr (no terminal), runtime errors included.
    pub stderr: Option<ChildStderr>,
    /// The terminal's master end (terminal mode): input, and the output
    /// of stdout and stderr together.
    pub terminal: Option<PtyMaster>,
    container: String,
    child: Child,
    dir: Option<ExecDir>,
    pid_file: PathBuf,
    exit_code: Option<i32>,
}

impl ExecChild {
    /// Wraps a spawned runtime `exec`; `exit_code` if the runtime already
    /// ended (a short command in terminal mode).
    pub(crate) fn new(
        container: &str,
        mut child: Child,
        dir: ExecDir,
        terminal: Option<PtyMaster>,
        exit_code: Option<i32>,
    ) -> ExecChild {
        let pid_file = dir.pid_file();
        ExecChild {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            terminal,
            container: container.to_string(),
            child,
            dir: Some(dir),
            pid_file,
            exit_code,
        }
    }

    /// The container the process runs in.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// The exec'd process's pid (host pid namespace) once the runtime has
    /// written it; `None` before, and after [`ExecChild::wait`].
    pub fn pid(&self) -> Option<u32> {
        if self.exit_code.is_some() {
            return None;
        }
        read_pid(&self.pid_file)
    }

    /// Waits for the process to end and returns its exit code (128 + n
    /// for signal n), as the runtime reports it. Closes a stdin still held
    /// here first (as tokio's `Child::wait` does: a process reading stdin
    /// would never end otherwise) and removes the exec's directory.
    /// Repeated calls return the same code.
    pub async fn wait(&mut self) -> Result<i32> {
        if let Some(code) = self.exit_code {
            return Ok(code);
        }
        drop(self.stdin.take());
        let status = self
            .child
            .wait()
            .await
            .map_err(RuntimeError::sys("wait for the runtime's exec"))?;
        let code = exit_code(&status);
        self.exit_code = Some(code);
        self.dir = None;
        Ok(code)
    }

    /// Kills the exec'd process (SIGKILL by its pid; the runtime then
    /// ends too, and [`ExecChild::wait`] reports the code). Before the
    /// runtime has written the pid, kills the runtime instead. Nothing to
    /// do once waited for.
    pub fn kill(&mut self) -> Result<()> {
        if self.exit_code.is_some() {
            return Ok(());
        }
        match read_pid(&self.pid_file) {
            Some(pid) => kill_pid(pid),
            None => match self.child.start_kill() {
                Ok(()) => {}
                // Already exited: wait collects it.
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
                Err(e) => return Err(RuntimeError::sys("kill the runtime's exec")(e)),
            },
        }
        Ok(())
    }
}

impl Drop for ExecChild {
    fn drop(&mut self) {
        if self.exit_code.is_some() {
            return;
        }
        // While the runtime runs, the pid in its file is its (live or
        // unreaped) child, not a recycled pid; once it has ended, leave it.
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Some(pid) = read_pid(&self.pid_file) {
                kill_pid(pid);
            }
        }
        // The runtime itself is killed by `kill_on_drop`; the directory
        // goes with `self.dir`.
    }
}

/// One exec's private directory below the runtime's state root (mode
/// 0700: it holds the console socket, which hands out a terminal to
/// whoever connects): the process spec, the pid file, the console socket
/// and the runtime's log. Removed on drop.
#[derive(Debug)]
pub(crate) struct ExecDir {
    path: PathBuf,
}

impl ExecDir {
    /// A fresh directory below `<root>/exec/`.
    pub(crate) fn create(root: &Path) -> Result<ExecDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = root.join("exec");
        std::fs::create_dir_all(&base).map_err(RuntimeError::io(&base, "create directory"))?;
        for attempt in 0..100u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = base.join(format!("{}-{nanos}-{attempt}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(ExecDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RuntimeError::io(&path, "create directory")(e)),
            }
        }
        Err(RuntimeError::invalid(
            "exec directory",
            base.to_string_lossy(),
            "no free name",
        ))
    }

    pub(crate) fn pid_file(&self) -> PathBuf {
        self.path.join("exec.pid")
    }

    pub(crate) fn process_file(&self) -> PathBuf {
        self.path.join("process.json")
    }

    pub(crate) fn console_socket(&self) -> PathBuf {
        self.path.join("console.sock")
    }

    pub(crate) fn log(&self) -> PathBuf {
        self.path.join("runtime.log")
    }
}

impl Drop for ExecDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Longest path a Unix socket address holds (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Listens on `path` for the runtime's console connection.
pub(crate) fn console_listener(path: &Path) -> Result<UnixListener> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(RuntimeError::invalid(
            "console socket path",
            path.to_string_lossy(),
            "longer than a Unix socket address holds; use a shorter runtime state root",
        ));
    }
    UnixListener::bind(path).map_err(RuntimeError::io(path, "listen on console socket"))
}

/// Accepts one connection on `listener` (bound at `socket`) and receives
/// the pty master the runtime sends over it, within `limit`.
pub(crate) async fn receive_pty_master(
    listener: &UnixListener,
    socket: &Path,
    limit: Duration,
) -> Result<PtyMaster> {
    PtyMaster::new(receive_pty_fd(listener, socket, limit).await?, socket)
}

/// As [`receive_pty_master`], the descriptor as it came (blocking), for
/// another process to hold.
pub(crate) async fn receive_pty_fd(
    listener: &UnixListener,
    socket: &Path,
    limit: Duration,
) -> Result<OwnedFd> {
    let fd = tokio::time::timeout(limit, receive_fd(listener, socket))
        .await
        .map_err(|_| RuntimeError::ConsoleTimeout {
            socket: socket.to_path_buf(),
            timeout: limit,
        })??;
    check_pty_master(&fd, socket)?;
    Ok(fd)
}

/// Refuses a descriptor that is not a pty master (what a runtime sends
/// over a console socket; `socket` names the source in errors).
fn check_pty_master(fd: &OwnedFd, socket: &Path) -> Result<()> {
    let mut number: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one c_uint into `number`; on anything but
    // a pty master it fails (ENOTTY/EINVAL) and writes nothing.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut number) } != 0 {
        return Err(RuntimeError::ConsoleSocket {
            socket: socket.to_path_buf(),
            reason: "the fd received is not a pseudo-terminal master",
        });
    }
    Ok(())
}

async fn receive_fd(listener: &UnixListener, socket: &Path) -> Result<OwnedFd> {
    let refused = |reason| RuntimeError::ConsoleSocket {
        socket: socket.to_path_buf(),
        reason,
    };
    let (stream, _) = listener
        .accept()
        .await
        .map_err(RuntimeError::io(socket, "accept on console socket"))?;
    let received = loop {
        stream
            .readable()
            .await
            .map_err(RuntimeError::io(socket, "read console socket"))?;
        match stream.try_io(Interest::READABLE, || recv_fds(&stream)) {
            Ok(r) => break r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(RuntimeError::io(socket, "receive from console socket")(e)),
        }
    };
    if received.truncated {
        return Err(refused("message truncated (too many fds or bytes)"));
    }
    let mut fds = received.fds.into_iter();
    match (fds.next(), received.bytes) {
        // Extra fds are closed as `fds` drops.
        (Some(fd), _) => Ok(fd),
        (None, 0) => Err(refused("peer closed without sending a terminal")),
        (None, _) => Err(refused("message carries no file descriptor")),
    }
}

struct Received {
    bytes: usize,
    fds: Vec<OwnedFd>,
    truncated: bool,
}

/// One `recvmsg` on `stream`, its `SCM_RIGHTS` fds taken into ownership.
fn recv_fds(stream: &UnixStream) -> io::Result<Received> {
    // runc sends the pty's name as data, crun a short name too; any
    // length is accepted, a longer one is truncated (and refused).
    let mut data = [0u8; 4096];
    // Room for 16 fds, aligned for `cmsghdr` (u64 elements).
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain old data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov`/`data` and `control`, live locals of
    // the sizes given; CLOEXEC so a received fd never leaks into children.
    let n = unsafe {
        libc::recvmsg(
            stream.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    let bytes = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; the CMSG_* macros walk its
    // control buffer within `msg_controllen`, and every fd of an
    // SCM_RIGHTS message is a new descriptor this process now owns
    // (read unaligned: CMSG_DATA need not be aligned for c_int).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                let payload = (header.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let first = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..payload / size_of::<libc::c_int>() {
                    let raw: RawFd = std::ptr::read_unaligned(first.add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        bytes,
        fds,
        truncated: msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0,
    })
}

/// The master end of an exec's pseudo-terminal: reading gives the
/// process's output (stdout and stderr, as the terminal shows them),
/// writing is its input. Non-blocking, driven by tokio. End of file once
/// the process (every holder of the terminal's other end) is gone.
/// Dropping it hangs the terminal up (the process's session gets SIGHUP).
#[derive(Debug)]
pub struct PtyMaster {
    fd: Arc<AsyncFd<File>>,
}

impl PtyMaster {
    /// Takes `fd` if it is a pty master (what a runtime sends; `socket`
    /// names the source in errors); sets it non-blocking.
    pub(crate) fn new(fd: OwnedFd, socket: &Path) -> Result<PtyMaster> {
        check_pty_master(&fd, socket)?;
        let file = File::from(fd);
        super::attach::set_nonblocking(&file)
            .map_err(RuntimeError::sys("set the pty master non-blocking"))?;
        let interest = Interest::READABLE | Interest::WRITABLE;
        // SAFETY: the File owns the open master fd; the AsyncFd owns the
        // File until it drops, and nothing else closes or replaces the fd.
        let fd = unsafe { AsyncFd::register_with_interest(file, interest) }
            .map_err(|e| RuntimeError::sys("register the pty master")(e.into()))?;
        Ok(PtyMaster { fd: Arc::new(fd) })
    }

    /// Sets the terminal's size (columns × rows, TIOCSWINSZ); the process
    /// group in the foreground gets SIGWINCH.
    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        set_window_size(self.fd.get_ref(), width, height)
    }

    /// A handle that resizes this terminal from elsewhere (a resize
    /// channel's task) while the master is read and written, or split.
    /// It does not keep the terminal open.
    pub fn resizer(&self) -> PtyResizer {
        PtyResizer {
            fd: Arc::downgrade(&self.fd),
        }
    }
}

/// Resizes a [`PtyMaster`] while it lives; see [`PtyMaster::resizer`].
#[derive(Debug, Clone)]
pub struct PtyResizer {
    fd: Weak<AsyncFd<File>>,
}

impl PtyResizer {
    /// As [`PtyMaster::resize`]; an error once the master was dropped.
    pub fn resize(&self, width: u16, height: u16) -> Result<()> {
        let fd = self.fd.upgrade().ok_or_else(|| {
            RuntimeError::sys("resize terminal")(io::Error::new(
                io::ErrorKind::NotConnected,
                "the terminal is closed",
            ))
        })?;
        set_window_size(fd.get_ref(), width, height)
    }
}

pub(crate) fn set_window_size(master: &File, width: u16, height: u16) -> Result<()> {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the live local `size`.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(RuntimeError::sys("resize terminal (TIOCSWINSZ)")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| (&mut fd.get_ref()).read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Linux reports a hung-up terminal (no slave left) as EIO
                // on the master: that is the end of the output.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| (&mut fd.get_ref()).write(buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the terminal.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A terminal has no half-close; the process sees the end only when
        // the master is dropped (hang-up), or reads ^D in canonical mode.
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A socket path in a fresh directory, and a listener on it.
    fn listen() -> (tempfile::TempDir, PathBuf, UnixListener) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.sock");
        let listener = console_listener(&path).expect("listen");
        (dir, path, listener)
    }

    /// Sends `data` with `fds` as SCM_RIGHTS, as a runtime does.
    fn send_fds(stream: &std::os::unix::net::UnixStream, data: &[u8], fds: &[RawFd]) {
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: plain old data, zero is an empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let payload = std::mem::size_of_val(fds) as u32;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            // SAFETY: pure size computation.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
            // SAFETY: the control buffer (128 bytes) holds one header with
            // up to 16 fds; the fds are copied into it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr().cast::<u8>(),
                    libc::CMSG_DATA(cmsg),
                    payload as usize,
                );
            }
        }
        // SAFETY: `msg` points at live locals of the sizes given.
        let n = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, 0) };
        assert!(n >= 0, "sendmsg: {}", io::Error::last_os_error());
    }

    /// A peer connecting to `path` from a thread, doing `then` with it.
    fn peer(
        path: &Path,
        then: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
            then(stream);
        })
    }

    /// A new pty: (master, slave).
    fn open_pty() -> (OwnedFd, File) {
        // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on a fresh fd we
        // own; ptsname_r writes into the local buffer of the size given.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(master >= 0);
            let master = OwnedFd::from_raw_fd(master);
            assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
            assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
            let mut name = [0 as libc::c_char; 64];
            assert_eq!(
                libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()),
                0
            );
            let name = std::ffi::CStr::from_ptr(name.as_ptr())
                .to_str()
                .expect("utf-8")
                .to_string();
            let slave = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(name)
                .expect("open slave");
            (master, slave)
        }
    }

    #[tokio::test]
    async fn runtime_exec_console_peer_that_never_connects_times_out() {
        let (_dir, path, listener) = listen();
        let started = Instant::now();
        let err = receive_pty_master(&listener, &path, Duration::from_millis(200))
            .await
            .expect_err("nobody connects");
        assert!(matches!(err, RuntimeError::ConsoleTimeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn runtime_exec_console_peer_that_sends_nothing_times_out() {
        let (_dir, path, listener) = listen();
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let t = peer(&path, move |_stream| {
            // Connected, silent, until the test is done.
            let _ = hold_rx.recv();
        });
        let err = receive_pty_master(&listener, &path, Duration::from_millis(300))
            .await
            .expect_err("nothing sent");
        assert!(matches!(err, RuntimeError::ConsoleTimeout { .. }), "{err}");
        drop(hold_tx);
        t.join().unwrap();
    }

    #[tokio::test]
    async fn runtime_exec_console_refuses_garbage() {
        let limit = Duration::from_secs(5);
        // Closes at once.
        let (_dir, path, listener) = listen();
        let t = peer(&path, drop);
        let err = receive_pty_master(&listener, &path, limit)
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::ConsoleSocket { .. }), "{err}");
        t.join().unwrap();
        // Bytes, no fd.
        let (_dir, path, listener) = listen();
        let t = peer(&path, |s| send_fds(&s, b"/dev/pts/3", &[]));
        let err = receive_pty_master(&listener, &path, limit)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RuntimeError::ConsoleSocket { reason, .. } if reason.contains("no file")),
            "{err}"
        );
        t.join().unwrap();
        // An fd that is no pty master: a file, and the slave end of a pty.
        for which in ["file", "slave"] {
            let (_dir, path, listener) = listen();
            let t = peer(&path, move |s| {
                let (_master, slave) = open_pty();
                let file = File::open("/dev/null").unwrap();
                let fd = if which == "file" { &file } else { &slave };
                send_fds(&s, b"x", &[fd.as_raw_fd()]);
            });
            let err = receive_pty_master(&listener, &path, limit)
                .await
                .unwrap_err();
            assert!(
                matches!(err, RuntimeError::ConsoleSocket { reason, .. } if reason.contains("not a pseudo")),
                "{which}: {err}"
            );
            t.join().unwrap();
        }
    }

    #[tokio::test]
    async fn runtime_exec_console_receives_a_working_pty_master() {
        let (_dir, path, listener) = listen();
        let (master, slave) = open_pty();
        let raw = master.as_fd().as_raw_fd();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        let t = peer(&path, move |s| {
            // Two fds: the second is closed by the receiver.
            send_fds(&s, b"/dev/pts/x", &[raw, raw]);
            sent_tx.send(()).unwrap();
        });
        let mut pty = receive_pty_master(&listener, &path, Duration::from_secs(5))
            .await
            .expect("pty master");
        sent_rx.recv().unwrap();
        t.join().unwrap();
        drop(master);

        // Resizing is seen on the slave.
        pty.resizer().resize(100, 40).expect("resize");
        let mut size: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into the local.
        let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
        assert_eq!(rc, 0);
        assert_eq!((size.ws_col, size.ws_row), (100, 40));

        // Output of the slave side reads from the master; end of file once
        // the slave is closed (EIO on Linux).
        (&slave).write_all(b"out\n").unwrap();
        pty.write_all(b"in\n").await.unwrap();
        drop(slave);
        let mut text = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), pty.read_to_end(&mut text))
            .await
            .expect("EOF in time")
            .expect("read");
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains("out\r\n"), "{text:?}");
        let resizer = pty.resizer();
        drop(pty);
        assert!(resizer.resize(80, 24).is_err());
    }

    #[test]
    fn runtime_exec_console_socket_path_length_is_checked() {
        let long = PathBuf::from(format!("/tmp/{}/console.sock", "x".repeat(120)));
        let err = console_listener(&long).unwrap_err();
        assert!(matches!(err, RuntimeError::Invalid { .. }), "{err}");
    }
}
