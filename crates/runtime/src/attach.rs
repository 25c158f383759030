//! Attaching to a container's own standard streams (`kubectl attach`,
//! `crictl attach`): the socket a container's log writer serves, the
//! frames spoken on it, and the agent's side of a connection.
//!
//! Why the log writer: it already holds the container's output for the
//! container's whole life, outlives an agent restart and ends with the
//! container, which is what an attach needs — as containerd's shim and
//! conmon hold a container's stdio. So the writer also holds the
//! container's input (the write end of its stdin pipe, or its terminal's
//! master) and listens on `attach.sock` in the container's directory
//! (mode 0600, bound by the agent and handed to the writer). Every
//! attached client gets the output from the moment it attached (what was
//! before is in the log); input from any client goes to the container.
//!
//! Frames, both ways: a kind byte, a big-endian u32 length, the payload
//! (at most [`MAX_PAYLOAD`]). The writer sends `Stdout` and `Stderr`
//! (a terminal's output is `Stdout`) and closes the connection when the
//! container's output has ended. A client sends `Stdin`, `CloseStdin`
//! (the container's stdin pipe is closed once what was sent is written;
//! a terminal stays open, its end of input is the user's ^D) and
//! `Resize`. A client that ends its sending side is taken as gone and
//! disconnected: one that wants output keeps the connection open.
//!
//! What the writer refuses: a client that sends an unknown kind, an
//! output kind, an oversized or malformed frame (disconnected); more than
//! [`MAX_CLIENTS`] at once (closed at once); a client whose unsent output
//! passes [`MAX_BACKLOG`] (disconnected: a slow client must not stall the
//! container's logging). Input waits while [`MAX_PENDING_INPUT`] bytes
//! are not yet taken by the container: clients are not read until it
//! reads.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{Result, RuntimeError};
use super::logs::LogStream;

/// The attach socket's name in the container's directory.
pub const SOCKET_NAME: &str = "attach.sock";
/// A frame's payload, at most.
pub const MAX_PAYLOAD: usize = 32 * 1024;
/// Clients attached at once, at most.
pub const MAX_CLIENTS: usize = 16;
/// A client's output not yet sent, at most.
pub const MAX_BACKLOG: usize = 1 << 20;
/// Input not yet taken by the container above which clients are not read.
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

const HEADER: usize = 5;
const KIND_STDOUT: u8 = 1;
const KIND_STDERR: u8 = 2;
const KIND_STDIN: u8 = 3;
const KIND_CLOSE_STDIN: u8 = 4;
const KIND_RESIZE: u8 = 5;

/// One message on an attach connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Writer to client: output of the container.
    Output(LogStream, Vec<u8>),
    /// Client to writer: input for the container.
    Stdin(Vec<u8>),
    /// Client to writer: close the container's stdin pipe.
    CloseStdin,
    /// Client to writer: the terminal's size, columns × rows.
    Resize { width: u16, height: u16 },
}

impl Frame {
    /// The frame on the wire. A payload over [`MAX_PAYLOAD`] is the
    /// caller's bug: callers split data into pieces of at most that.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, &[u8]) = match self {
            Frame::Output(LogStream::Stdout, data) => (KIND_STDOUT, data),
            Frame::Output(LogStream::Stderr, data) => (KIND_STDERR, data),
            Frame::Stdin(data) => (KIND_STDIN, data),
            Frame::CloseStdin => (KIND_CLOSE_STDIN, &[]),
            Frame::Resize { width, height } => {
                let mut out = frame_header(KIND_RESIZE, 4);
                out.extend_from_slice(&width.to_be_bytes());
                out.extend_from_slice(&height.to_be_bytes());
                return out;
            }
        };
        let mut out = frame_header(kind, payload.len());
        out.extend_from_slice(payload);
        out
    }
}

fn frame_header(kind: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + len);
    out.push(kind);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out
}

/// Why a peer's bytes are not frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A kind byte no frame has.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A length over [`MAX_PAYLOAD`].
    #[error("frame of {0} bytes is over the limit")]
    TooLong(u32),
    /// A resize or close frame of the wrong length.
    #[error("frame kind {kind} with {len} bytes")]
    BadLength { kind: u8, len: u32 },
}

/// Turns a byte stream into frames, however it was cut.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Appends bytes read from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame; `None` until more bytes come.
    pub fn next_frame(&mut self) -> std::result::Result<Option<Frame>, FrameError> {
        let Some(header) = self.buf.get(..HEADER) else {
            return Ok(None);
        };
        let kind = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        if size > MAX_PAYLOAD {
            return Err(FrameError::TooLong(len));
        }
        let bad_length = || FrameError::BadLength { kind, len };
        match kind {
            KIND_CLOSE_STDIN if size != 0 => return Err(bad_length()),
            KIND_RESIZE if size != 4 => return Err(bad_length()),
            KIND_STDOUT | KIND_STDERR | KIND_STDIN | KIND_CLOSE_STDIN | KIND_RESIZE => {}
            other => return Err(FrameError::UnknownKind(other)),
        }
        let Some(payload) = self.buf.get(HEADER..HEADER + size) else {
            return Ok(None);
        };
        let frame = match kind {
            KIND_STDOUT => Frame::Output(LogStream::Stdout, payload.to_vec()),
            KIND_STDERR => Frame::Output(LogStream::Stderr, payload.to_vec()),
            KIND_STDIN => Frame::Stdin(payload.to_vec()),
            KIND_CLOSE_STDIN => Frame::CloseStdin,
            _ => Frame::Resize {
                width: u16::from_be_bytes([payload[0], payload[1]]),
                height: u16::from_be_bytes([payload[2], payload[3]]),
            },
        };
        self.buf.drain(..HEADER + size);
        Ok(Some(frame))
    }
}

/// `/proc/self/fd/N/attach.sock` for a descriptor on `dir`: a socket
/// address's path is at most 107 bytes, a container's directory may be
/// longer.
fn short_socket_path(dir: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{SOCKET_NAME}", dir.as_raw_fd()))
}

fn open_dir(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(RuntimeError::io(dir, "open container directory"))
}

/// Listens on the attach socket in the container directory `dir` (a
/// socket left there by an earlier run is replaced), mode 0600.
pub fn bind(dir: &Path) -> Result<UnixListener> {
    let handle = open_dir(dir)?;
    let path = dir.join(SOCKET_NAME);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(RuntimeError::io(&path, "remove old attach socket")(e))
        }
        _ => {}
    }
    let listener = UnixListener::bind(short_socket_path(&handle))
        .map_err(RuntimeError::io(&path, "listen on attach socket"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(RuntimeError::io(&path, "restrict attach socket"))?;
    Ok(listener)
}

/// A connection to a container's log writer (see the module docs).
#[derive(Debug)]
pub struct Attachment {
    stream: tokio::net::UnixStream,
}

impl Attachment {
    /// Connects to the writer of the container in `dir`; an error when
    /// the container's output has ended (nothing listens any more).
    pub async fn connect(dir: &Path) -> Result<Attachment> {
        let handle = open_dir(dir)?;
        let path = dir.join(SOCKET_NAME);
        let stream = tokio::net::UnixStream::connect(short_socket_path(&handle))
            .await
            .map_err(RuntimeError::io(&path, "connect to attach socket"))?;
        Ok(Attachment { stream })
    }

    /// Its output and input halves, to be used from two tasks.
    pub fn split(self) -> (AttachOutput, AttachInput) {
        let (read, write) = self.stream.into_split();
        (
            AttachOutput {
                read,
                decoder: FrameDecoder::default(),
                chunk: vec![0u8; 16 * 1024],
            },
            AttachInput { write },
        )
    }
}

/// What the container writes, from the moment of attaching.
#[derive(Debug)]
pub struct AttachOutput {
    read: tokio::net::unix::OwnedReadHalf,
    decoder: FrameDecoder,
    chunk: Vec<u8>,
}

impl AttachOutput {
    /// The next piece of output; `None` once the container's output has
    /// ended (or the writer went away). Cancel-safe: bytes are taken off
    /// the socket only by a read that completes.
    pub async fn next(&mut self) -> io::Result<Option<(LogStream, Vec<u8>)>> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(Frame::Output(stream, data))) => return Ok(Some((stream, data))),
                Ok(Some(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the log writer sent a client's frame",
                    ))
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let n = self.read.read(&mut self.chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.decoder.push(&self.chunk[..n]);
        }
    }
}

/// Input and terminal sizes for the container.
#[derive(Debug)]
pub struct AttachInput {
    write: tokio::net::unix::OwnedWriteHalf,
}

impl AttachInput {
    /// Sends `data` to the container's stdin (or terminal).
    pub async fn stdin(&mut self, data: &[u8]) -> io::Result<()> {
        for piece in data.chunks(MAX_PAYLOAD) {
            self.write
                .write_all(&Frame::Stdin(piece.to_vec()).encode())
                .await?;
        }
        Ok(())
    }

    /// Closes the container's stdin pipe once what was sent is written.
    pub async fn close_stdin(&mut self) -> io::Result<()> {
        self.write.write_all(&Frame::CloseStdin.encode()).await
    }

    /// Sets the container's terminal size.
    pub async fn resize(&mut self, width: u16, height: u16) -> io::Result<()> {
        self.write
            .write_all(&Frame::Resize { width, height }.encode())
            .await
    }
}

/// The writer's side: the listener and the attached clients, driven by
/// the writer's poll loop (all sockets non-blocking).
pub(crate) struct AttachServer {
    listener: UnixListener,
    clients: Vec<Client>,
}

struct Client {
    socket: UnixStream,
    decoder: FrameDecoder,
    /// Output not yet sent.
    backlog: Vec<u8>,
}

impl AttachServer {
    pub(crate) fn new(listener: OwnedFd) -> io::Result<AttachServer> {
        let listener = UnixListener::from(listener);
        listener.set_nonblocking(true)?;
        Ok(AttachServer {
            listener,
            clients: Vec::new(),
        })
    }

    /// What to wait for: new clients, clients' frames when `read_input`,
    /// and room to send output where some is waiting.
    pub(crate) fn poll_fds(&self, read_input: bool, fds: &mut Vec<libc::pollfd>) {
        fds.push(pollfd(self.listener.as_raw_fd(), libc::POLLIN));
        for client in &self.clients {
            let mut events = 0;
            if read_input {
                events |= libc::POLLIN;
            }
            if !client.backlog.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(pollfd(client.socket.as_raw_fd(), events));
        }
    }

    /// Drops the clients whose connection `polled` (what
    /// [`Self::poll_fds`] made, after `poll`) says is hung up or broken:
    /// a client that is not being read shows it no other way, and would
    /// wake every poll.
    pub(crate) fn drop_hung_up(&mut self, polled: &[libc::pollfd]) {
        // polled[0] is the listener; the clients follow in order.
        let mut states = polled.iter().skip(1);
        self.clients.retain(|_| {
            states
                .next()
                .is_none_or(|p| p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) == 0)
        });
    }

    /// Takes the clients waiting to connect, closing those over the limit.
    pub(crate) fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((socket, _)) => {
                    if self.clients.len() >= MAX_CLIENTS || socket.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.clients.push(Client {
                        socket,
                        decoder: FrameDecoder::default(),
                        backlog: Vec::new(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Queues output for every client; drops those too far behind.
    pub(crate) fn broadcast(&mut self, stream: LogStream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        for piece in data.chunks(MAX_PAYLOAD) {
            let frame = Frame::Output(stream, piece.to_vec()).encode();
            for client in &mut self.clients {
                client.backlog.extend_from_slice(&frame);
            }
        }
        self.clients.retain(|c| c.backlog.len() <= MAX_BACKLOG);
    }

    /// Reads what clients sent: their input frames, in order; a client
    /// that ended or sent anything else is dropped.
    pub(crate) fn read_frames(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        self.clients.retain_mut(|client| loop {
            match client.socket.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => client.decoder.push(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return take_client_frames(&mut client.decoder, &mut frames)
                }
                Err(_) => return false,
            }
            if !take_client_frames(&mut client.decoder, &mut frames) {
                return false;
            }
        });
        frames
    }

    /// Sends what the sockets take now; drops clients that went away.
    pub(crate) fn flush(&mut self) {
        self.clients.retain_mut(|client| {
            while !client.backlog.is_empty() {
                match client.socket.write(&client.backlog) {
                    Ok(n) => {
                        client.backlog.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
            true
        });
    }

    /// Sends what is left to the clients for at most `limit`, then
    /// disconnects them all (the container's output has ended).
    pub(crate) fn finish(mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.flush();
            let waiting: Vec<libc::pollfd> = self
                .clients
                .iter()
                .filter(|c| !c.backlog.is_empty())
                .map(|c| pollfd(c.socket.as_raw_fd(), libc::POLLOUT))
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if waiting.is_empty() || left.is_zero() {
                return;
            }
            let mut waiting = waiting;
            let count = libc::nfds_t::try_from(waiting.len()).unwrap_or(0);
            let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            // SAFETY: `waiting` holds `count` valid pollfd entries.
            unsafe { libc::poll(waiting.as_mut_ptr(), count, millis) };
        }
    }
}

/// Moves a client's complete frames to `frames`; false if it sent
/// something a client may not send.
fn take_client_frames(decoder: &mut FrameDecoder, frames: &mut Vec<Frame>) -> bool {
    loop {
        match decoder.next_frame() {
            Ok(None) => return true,
            Ok(Some(Frame::Output(..))) | Err(_) => return false,
            Ok(Some(frame)) => frames.push(frame),
        }
    }
}

pub(crate) fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Where the writer puts what clients send: the container's stdin pipe
/// or its terminal's master (non-blocking), with what it has not taken.
pub(crate) struct ContainerInput {
    sink: Option<File>,
    pending: Vec<u8>,
    /// A terminal: resizable, never closed by `CloseStdin`.
    terminal: bool,
    /// Whether input is taken at all (a terminal without stdin is only
    /// resized).
    accepts_data: bool,
    close_when_written: bool,
}

impl ContainerInput {
    /// The write end of the container's stdin pipe.
    pub(crate) fn pipe(fd: OwnedFd) -> io::Result<ContainerInput> {
        let sink = File::from(fd);
        set_nonblocking(&sink)?;
        Ok(ContainerInput {
            sink: Some(sink),
            pending: Vec::new(),
            terminal: false,
            accepts_data: true,
            close_when_written: false,
        })
    }

    /// The terminal's master (a copy of it; already non-blocking for
    /// the reader); `stdin` says whether clients' input is written to it.
    pub(crate) fn terminal(master: File, stdin: bool) -> ContainerInput {
        ContainerInput {
            sink: Some(master),
            pending: Vec::new(),
            terminal: true,
            accepts_data: stdin,
            close_when_written: false,
        }
    }

    /// Whether more input may be read from clients.
    pub(crate) fn has_room(&self) -> bool {
        self.pending.len() < MAX_PENDING_INPUT
    }

    /// Acts on one client frame.
    pub(crate) fn apply(&mut self, frame: Frame) {
        match frame {
            Frame::Stdin(data) if self.accepts_data && !self.close_when_written => {
                self.pending.extend_from_slice(&data)
            }
            Frame::CloseStdin if !self.terminal => self.close_when_written = true,
            Frame::Resize { width, height } if self.terminal => {
                if let Some(master) = &self.sink {
                    let _ = super::exec::set_window_size(master, width, height);
                }
            }
            _ => {}
        }
    }

    /// The descriptor to wait on when input is waiting to be written.
    pub(crate) fn poll_fd(&self) -> Option<libc::pollfd> {
        let sink = self.sink.as_ref()?;
        (!self.pending.is_empty()).then(|| pollfd(sink.as_raw_fd(), libc::POLLOUT))
    }

    /// Writes what the container takes now; closes the pipe when asked
    /// and everything is written, or when the container closed its end.
    pub(crate) fn flush(&mut self) {
        let Some(sink) = self.sink.as_mut() else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match sink.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    // EPIPE: nobody reads the container's stdin any more.
                    self.pending.clear();
                    if !self.terminal {
                        self.sink = None;
                    }
                    return;
                }
            }
        }
        if self.close_when_written {
            self.sink = None;
        }
    }
}

pub(crate) fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor `file` owns, integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn frames_decode_however_the_bytes_are_cut() {
        let frames = vec![
            Frame::Output(LogStream::Stdout, b"out".to_vec()),
            Frame::Output(LogStream::Stderr, Vec::new()),
            Frame::Stdin(vec![0xff; MAX_PAYLOAD]),
            Frame::CloseStdin,
            Frame::Resize {
                width: 80,
                height: 24,
            },
        ];
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        for cut in [1, 3, 5, 7, 4096, wire.len()] {
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                decoder.push(piece);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, frames, "cut into pieces of {cut}");
        }
    }

    #[test]
    fn garbage_is_refused_before_its_payload_is_waited_for() {
        let refused = |bytes: &[u8]| {
            let mut decoder = FrameDecoder::default();
            decoder.push(bytes);
            decoder.next_frame().unwrap_err()
        };
        assert_eq!(refused(&[9, 0, 0, 0, 0]), FrameError::UnknownKind(9));
        assert_eq!(
            refused(&[KIND_STDIN, 0xff, 0xff, 0xff, 0xff]),
            FrameError::TooLong(u32::MAX)
        );
        assert_eq!(
            refused(&[KIND_RESIZE, 0, 0, 0, 3, 1, 2, 3]),
            FrameError::BadLength {
                kind: KIND_RESIZE,
                len: 3
            }
        );
        assert_eq!(
            refused(&[KIND_CLOSE_STDIN, 0, 0, 0, 1]),
            FrameError::BadLength {
                kind: KIND_CLOSE_STDIN,
                len: 1
            }
        );
    }

    #[test]
    fn a_client_may_not_send_output_frames() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&Frame::Stdin(b"a".to_vec()).encode());
        decoder.push(&Frame::Output(LogStream::Stdout, b"b".to_vec()).encode());
        let mut frames = Vec::new();
        assert!(!take_client_frames(&mut decoder, &mut frames));
        assert_eq!(frames, vec![Frame::Stdin(b"a".to_vec())]);
    }
}
