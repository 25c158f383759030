//! One stream between a guest port and a host Unix socket: the
//! connection's state, the credit accounting both ways, and what it owes
//! the guest.
//!
//! Flow control is the virtio-vsock credit scheme: each side advertises
//! how many bytes it can buffer (`buf_alloc`) and how many it has passed
//! on (`fwd_cnt`); a sender keeps what it has sent but the peer has not
//! passed on below the peer's `buf_alloc`. We buffer at most [`BUF_ALLOC`]
//! guest bytes the host socket has not taken yet, so a guest that honours
//! our credit never finds the buffer full, and one that ignores it gets
//! its connection reset.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::packet::{
    Header, Op, Packet, HOST_CID, MAX_PAYLOAD, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
    TYPE_STREAM,
};
use crate::devices::virtio::len_u32;

/// Bytes of guest data we buffer per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Passed-on bytes after which we tell the guest, unasked, that it has
/// credit again: a quarter of the buffer keeps a streaming guest busy.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST owed or sent, waiting for the RESPONSE.
    Connecting,
    Established,
}

/// Control packets owed to the guest.
#[derive(Default)]
struct Owed {
    request: bool,
    response: bool,
    credit_update: bool,
    shutdown: bool,
    rst: bool,
}

pub struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    /// Our end's port as the guest sees it.
    local_port: u32,
    /// The guest's port.
    peer_port: u32,
    state: State,
    owed: Owed,
    /// Guest bytes the host socket has not taken yet.
    to_host: Vec<u8>,
    /// Guest bytes written to the host socket (wrapping, as on the wire).
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Host bytes sent to the guest (wrapping).
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The guest's SHUTDOWN flags.
    peer_shutdown: u32,
    /// Poll said the host socket has data (or EOF) we have not read.
    host_readable: bool,
    host_eof: bool,
    /// RST sent: the muxer drops the connection.
    done: bool,
}

impl Connection {
    /// The host connected and asked for guest port `peer_port`; we owe
    /// the guest a REQUEST.
    pub fn host_initiated(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
    ) -> Self {
        let mut conn = Self::new(stream, guest_cid, local_port, peer_port, State::Connecting);
        conn.owed.request = true;
        conn
    }

    /// The guest asked for host port `local_port` and the host socket
    /// answered; we owe the guest a RESPONSE.
    pub fn guest_initiated(stream: UnixStream, request: &Header) -> Self {
        let mut conn = Self::new(
            stream,
            request.src_cid,
            request.dst_port,
            request.src_port,
            State::Established,
        );
        conn.update_peer_credit(request);
        conn.owed.response = true;
        conn
    }

    fn new(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        state: State,
    ) -> Self {
        Self {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state,
            owed: Owed::default(),
            to_host: Vec::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            peer_shutdown: 0,
            host_readable: false,
            host_eof: false,
            done: false,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// The connection ended and owes the guest nothing more.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether to wait for the host socket to become readable: only while
    /// the guest can take what it would deliver.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_readable
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
            && !self.owed.rst
    }

    pub fn wants_write(&self) -> bool {
        !self.to_host.is_empty() && !self.owed.rst
    }

    pub fn on_host_readable(&mut self) {
        self.host_readable = true;
    }

    pub fn on_host_writable(&mut self) {
        self.flush_to_host();
    }

    /// Handles a packet the guest sent on this connection. Returns false
    /// when the connection is gone (the guest reset it).
    pub fn on_guest_packet(&mut self, header: &Header, payload: &[u8]) -> bool {
        self.update_peer_credit(header);
        match header.op() {
            Some(Op::Rst) => return false,
            Some(Op::Response) if self.state == State::Connecting => self.establish(),
            Some(Op::Rw) if self.state == State::Established => self.accept_data(payload),
            Some(Op::CreditUpdate) => {}
            Some(Op::CreditRequest) => self.owed.credit_update = true,
            Some(Op::Shutdown) => self.on_peer_shutdown(header.flags),
            // A REQUEST on a live connection, a RESPONSE we did not ask
            // for, data before the handshake: a confused peer.
            _ => self.reset(),
        }
        true
    }

    /// The next packet owed to the guest, with at most `max_payload`
    /// bytes of data.
    pub fn next_packet(&mut self, max_payload: usize) -> Option<Packet> {
        if self.done {
            return None;
        }
        if self.owed.rst {
            self.done = true;
            return Some(self.control(Op::Rst, 0));
        }
        if std::mem::take(&mut self.owed.request) {
            return Some(self.control(Op::Request, 0));
        }
        if std::mem::take(&mut self.owed.response) {
            return Some(self.control(Op::Response, 0));
        }
        if std::mem::take(&mut self.owed.credit_update) {
            return Some(self.control(Op::CreditUpdate, 0));
        }
        if let Some(packet) = self.read_host_data(max_payload) {
            return Some(packet);
        }
        if std::mem::take(&mut self.owed.shutdown) {
            return Some(self.control(Op::Shutdown, SHUTDOWN_BOTH));
        }
        // A reset raised while reading the host socket.
        if self.owed.rst {
            return self.next_packet(max_payload);
        }
        None
    }

    fn establish(&mut self) {
        self.state = State::Established;
        // The socket has nothing queued yet, so this short write completes.
        let ack = format!("OK {}\n", self.local_port);
        if self.stream.write_all(ack.as_bytes()).is_err() {
            self.reset();
        }
    }

    fn accept_data(&mut self, payload: &[u8]) {
        if self.peer_shutdown & SHUTDOWN_SEND != 0
            || self.to_host.len() + payload.len() > BUF_ALLOC as usize
        {
            // Data after the guest said it sends no more, or beyond the
            // credit we gave it.
            self.reset();
            return;
        }
        self.to_host.extend_from_slice(payload);
        self.flush_to_host();
    }

    fn on_peer_shutdown(&mut self, flags: u32) {
        self.peer_shutdown |= flags & SHUTDOWN_BOTH;
        self.flush_to_host();
    }

    /// Writes buffered guest data to the host socket as far as it takes
    /// it, then passes the guest's shutdown on once everything is out.
    fn flush_to_host(&mut self) {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => return self.reset(),
                Ok(n) => {
                    self.to_host.drain(..n);
                    // At most the buffered guest data (BUF_ALLOC bytes).
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(len_u32(n));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.reset(),
            }
        }
        if self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.owed.credit_update = true;
        }
        if !self.to_host.is_empty() {
            return;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            // The guest closed its socket: Linux waits for our RST.
            self.reset();
        }
    }

    /// Reads host data the guest has credit and a buffer for.
    fn read_host_data(&mut self, max_payload: usize) -> Option<Packet> {
        if !self.host_readable || self.host_eof || self.state != State::Established {
            return None;
        }
        let room = (self.peer_credit() as usize)
            .min(max_payload)
            .min(MAX_PAYLOAD);
        if room == 0 || self.peer_shutdown & SHUTDOWN_RCV != 0 {
            return None;
        }
        let mut data = vec![0u8; room];
        loop {
            match self.stream.read(&mut data) {
                Ok(0) => {
                    self.host_eof = true;
                    self.owed.shutdown = true;
                    return None;
                }
                Ok(n) => {
                    data.truncate(n);
                    // At most `room`, which is at most MAX_PAYLOAD.
                    let len = len_u32(n);
                    self.rx_cnt = self.rx_cnt.wrapping_add(len);
                    let mut packet = self.control(Op::Rw, 0);
                    packet.header.len = len;
                    packet.payload = data;
                    return Some(packet);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return None;
                }
                Err(_) => {
                    self.reset();
                    return None;
                }
            }
        }
    }

    /// Bytes the guest can still take: its buffer minus what we sent that
    /// it has not passed on.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// Ends the connection: only the RST is owed now.
    fn reset(&mut self) {
        self.owed = Owed {
            rst: true,
            ..Owed::default()
        };
        self.to_host.clear();
    }

    fn control(&mut self, op: Op, flags: u32) -> Packet {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Packet {
            header: Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: self.local_port,
                dst_port: self.peer_port,
                len: 0,
                socket_type: TYPE_STREAM,
                op: op.to_u16(),
                flags,
                buf_alloc: BUF_ALLOC,
                fwd_cnt: self.fwd_cnt,
            },
            payload: Vec::new(),
        }
    }
}
