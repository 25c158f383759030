//! The host side of the device in the hybrid-vsock convention of
//! Firecracker and Cloud Hypervisor: one listening Unix socket for
//! host-initiated streams, a Unix socket per port for guest-initiated ones.
//!
//! - The host connects to `uds_path` and writes `CONNECT <port>\n`; once
//!   the guest listening on `<port>` accepts, the host reads
//!   `OK <local port>\n` and the stream is the connection.
//! - A guest connecting to port P of the host (CID 2) is connected to the
//!   Unix socket `<uds_path>_P`; the guest gets a reset if nothing listens.
//!
//! The muxer turns guest packets into socket I/O and socket readiness into
//! packets for the guest; the device worker owns the queues and the poll.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsStr;
use std::io::{ErrorKind, Read};
use std::ops::Bound;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use super::connection::Connection;
use super::packet::{Header, Op, Packet, HOST_CID, TYPE_STREAM};

/// Most connections at once; more are refused (RST, or the host stream
/// closed), so a guest cannot exhaust the VMM's file descriptors.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host streams that have not finished their CONNECT line.
const MAX_HANDSHAKES: usize = 64;
/// `CONNECT 4294967295\n` is 19 bytes; anything longer is not a request.
const MAX_HANDSHAKE_LINE: usize = 32;
/// Most control packets owed for unknown connections; beyond, resets for
/// a guest flooding us with stray packets are dropped.
const MAX_STRAY_RESETS: usize = 256;
/// Host-side ports for host-initiated connections start here, clear of
/// the ports guests usually listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// (host-side port, guest port)
type ConnKey = (u32, u32);

/// What a polled fd belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    Listener,
    Handshake(usize),
    Connection(ConnKey),
}

struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    done: bool,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    handshakes: Vec<Handshake>,
    connections: BTreeMap<ConnKey, Connection>,
    stray_resets: VecDeque<Packet>,
    next_local_port: u32,
    /// The connection served last, so every connection gets its turn.
    cursor: Option<ConnKey>,
}

impl Muxer {
    /// `listener` must be non-blocking.
    pub fn new(guest_cid: u64, uds_path: PathBuf, listener: UnixListener) -> Self {
        Self {
            guest_cid,
            uds_path,
            listener,
            handshakes: Vec::new(),
            connections: BTreeMap::new(),
            stray_resets: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            cursor: None,
        }
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// The fds to poll, with the events wanted. Fds with nothing wanted
    /// are left out: poll reports a hang-up whether asked or not.
    pub fn poll_set(&self, out: &mut Vec<(RawFd, i16, Token)>) {
        out.push((self.listener.as_raw_fd(), libc::POLLIN, Token::Listener));
        for (i, handshake) in self.handshakes.iter().enumerate() {
            out.push((
                handshake.stream.as_raw_fd(),
                libc::POLLIN,
                Token::Handshake(i),
            ));
        }
        for (&key, conn) in &self.connections {
            let mut events = 0;
            if conn.wants_read() {
                events |= libc::POLLIN;
            }
            if conn.wants_write() {
                events |= libc::POLLOUT;
            }
            if events != 0 {
                out.push((conn.stream().as_raw_fd(), events, Token::Connection(key)));
            }
        }
    }

    /// Handles what poll reported, for the tokens of one `poll_set`.
    pub fn on_ready(&mut self, ready: &[(Token, i16)]) {
        for &(token, revents) in ready {
            match token {
                Token::Listener => self.accept_host_streams(),
                Token::Handshake(i) => self.read_handshake(i),
                Token::Connection(key) => self.on_connection_ready(key, revents),
            }
        }
        self.handshakes.retain(|h| !h.done);
    }

    /// Handles one packet from the guest's transmit queue.
    pub fn on_guest_packet(&mut self, header: &Header, payload: &[u8]) {
        let op = header.op();
        if op == Some(Op::Rst) && !self.is_ours(header) {
            return;
        }
        if !self.is_ours(header) || op.is_none() {
            return self.reset_stray(header);
        }
        let key = (header.dst_port, header.src_port);
        match self.connections.get_mut(&key) {
            Some(conn) => {
                if !conn.on_guest_packet(header, payload) {
                    self.connections.remove(&key);
                }
            }
            None if op == Some(Op::Request) => self.connect_to_host(header),
            None if op == Some(Op::Rst) => {}
            None => self.reset_stray(header),
        }
    }

    /// The next packet for the guest, with at most `max_payload` bytes of
    /// data; None when nothing is owed.
    pub fn next_packet(&mut self, max_payload: usize) -> Option<Packet> {
        if let Some(packet) = self.stray_resets.pop_front() {
            return Some(packet);
        }
        let keys: Vec<ConnKey> = self.round_robin_keys();
        for key in keys {
            let Some(conn) = self.connections.get_mut(&key) else {
                continue;
            };
            let packet = conn.next_packet(max_payload);
            if conn.is_done() {
                self.connections.remove(&key);
            }
            if packet.is_some() {
                self.cursor = Some(key);
                return packet;
            }
        }
        None
    }

    fn round_robin_keys(&self) -> Vec<ConnKey> {
        let Some(cursor) = self.cursor else {
            return self.connections.keys().copied().collect();
        };
        let after = self
            .connections
            .range((Bound::Excluded(cursor), Bound::Unbounded));
        let before = self.connections.range(..=cursor);
        after.chain(before).map(|(k, _)| *k).collect()
    }

    /// Whether a packet is a stream packet from our guest to the host.
    fn is_ours(&self, header: &Header) -> bool {
        header.src_cid == self.guest_cid
            && header.dst_cid == HOST_CID
            && header.socket_type == TYPE_STREAM
    }

    fn reset_stray(&mut self, header: &Header) {
        if self.stray_resets.len() >= MAX_STRAY_RESETS {
            return;
        }
        self.stray_resets.push_back(Packet {
            header: Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: header.dst_port,
                dst_port: header.src_port,
                socket_type: TYPE_STREAM,
                op: Op::Rst.to_u16(),
                ..Header::default()
            },
            payload: Vec::new(),
        });
    }

    /// The guest asked for host port `dst_port`: connect to `<uds>_<port>`.
    fn connect_to_host(&mut self, request: &Header) {
        if self.connections.len() >= MAX_CONNECTIONS {
            return self.reset_stray(request);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", request.dst_port));
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let key = (request.dst_port, request.src_port);
                self.connections
                    .insert(key, Connection::guest_initiated(stream, request));
            }
            Err(_) => self.reset_stray(request),
        }
    }

    fn accept_host_streams(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let full = self.handshakes.len() >= MAX_HANDSHAKES
                        || self.connections.len() >= MAX_CONNECTIONS;
                    // Refused by closing: the client sees EOF instead of OK.
                    if !full && stream.set_nonblocking(true).is_ok() {
                        self.handshakes.push(Handshake {
                            stream,
                            line: Vec::new(),
                            done: false,
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Reads the CONNECT line a byte at a time, so no byte of the data the
    /// host sends after it is taken from the stream.
    fn read_handshake(&mut self, index: usize) {
        let Some(handshake) = self.handshakes.get_mut(index) else {
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            match handshake.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) if handshake.line.len() < MAX_HANDSHAKE_LINE => handshake.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // EOF, an error, or a line too long: dropped.
                _ => {
                    handshake.done = true;
                    return;
                }
            }
        }
        handshake.done = true;
        let port = parse_connect(&handshake.line);
        let Ok(stream) = handshake.stream.try_clone() else {
            return;
        };
        if let Some(port) = port {
            self.start_host_connection(stream, port);
        }
    }

    fn start_host_connection(&mut self, stream: UnixStream, peer_port: u32) {
        let Some(local_port) = self.allocate_local_port() else {
            return;
        };
        let conn = Connection::host_initiated(stream, self.guest_cid, local_port, peer_port);
        self.connections.insert((local_port, peer_port), conn);
    }

    /// An ephemeral host-side port no connection uses.
    fn allocate_local_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.connections.keys().any(|&(local, _)| local == port) {
                return Some(port);
            }
        }
        None
    }

    fn on_connection_ready(&mut self, key: ConnKey, revents: i16) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        if revents & libc::POLLOUT != 0 {
            conn.on_host_writable();
        }
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            conn.on_host_readable();
        }
    }
}

/// The port of a `CONNECT <port>` line.
/// Connects to the Unix socket at `path` without ever waiting: a blocking
/// connect to a listener whose backlog is full (one that never accepts)
/// waits until it accepts, and with it the whole vsock worker; here that
/// is EAGAIN, and the guest gets a reset. A Unix stream connect that does
/// not fail at once is complete (there is no EINPROGRESS for AF_UNIX).
fn connect_nonblocking(path: &OsStr) -> std::io::Result<UnixStream> {
    let mut addr = libc::sockaddr_un {
        sun_family: libc::sa_family_t::try_from(libc::AF_UNIX)
            .map_err(|_| std::io::Error::from(ErrorKind::Unsupported))?,
        sun_path: [0; 108],
    };
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ErrorKind::InvalidInput.into());
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>())
        .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: socket(2) with constant arguments creates a new descriptor.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it; the stream
    // closes it on every path below.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid, NUL-terminated `sockaddr_un` of `len`
    // bytes that outlives the call; `fd` is a socket we own.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_parse_strictly() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT -1",
            b"CONNECT 4294967296",
            b"connect 5",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
