//! One interface's MMDS network stack: the guest's frames for MMDS in, the
//! service's frames for the guest out, through smoltcp.
//!
//! The interface's worker asks [`MmdsStack::is_mmds_frame`] of each frame
//! the guest transmits; those it claims (ARP for the MMDS address, IPv4 to
//! it) go to [`MmdsStack::handle_frame`] instead of the TAP, and
//! [`MmdsStack::next_frame`] hands the replies over for the guest's
//! receive queue. [`MmdsStack::poll_delay`] says when the stack's TCP
//! timers (retransmission, closing) next need a [`MmdsStack::poll`].
//!
//! Ethernet and ARP are answered here, with smoltcp's wire types, as
//! Firecracker's stack does: the service's MAC is Firecracker's
//! (06:01:23:45:67:01) and its replies go to the MAC the guest sent from,
//! whatever the guest's address. smoltcp sees IP packets only (its
//! IP medium, the MMDS address as a /32 with a default route through it),
//! so it answers any guest address without routing or neighbour lookups.
//!
//! What reaches smoltcp is checked first: a well-formed IPv4 header with
//! a good checksum and a unicast source, carrying TCP with a good checksum
//! from a non-zero port. Everything else claimed is dropped and counted.
//! Bounds: [`MAX_CONNECTIONS`] sockets listening on port 80 (when all are
//! busy, a new connection evicts one idle for [`EVICTION_IDLE`]), a request
//! head of at most [`MAX_REQUEST`] bytes per connection (beyond, the
//! connection is reset), one answer being sent per connection, and at most
//! [`MAX_PENDING_FRAMES`] frames waiting for the guest (beyond, replies are
//! dropped and TCP sends them again).

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet, TcpPacket,
};

use super::http;
use super::metrics::METRICS;
use super::Mmds;

/// Firecracker's MMDS MAC address.
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// The MMDS address unless configured.
pub const DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The service's TCP port.
pub const PORT: u16 = 80;
/// Connections at once (Firecracker's number).
pub const MAX_CONNECTIONS: usize = 30;
/// The largest request head (Firecracker's receive buffer).
pub const MAX_REQUEST: usize = 2500;
/// Frames waiting for the guest's receive queue.
pub const MAX_PENDING_FRAMES: usize = 64;
/// How long a connection must have been idle to be evicted for a new one.
pub const EVICTION_IDLE: Duration = Duration::from_secs(10);
/// An IP packet's largest size, the guest's MTU.
const MTU: usize = 1500;
const ETHERNET_HEADER: usize = 14;
/// Each socket's buffers: a request head fits the receive buffer; answers
/// larger than the send buffer are fed to it as it drains.
const SOCKET_RX_BUFFER: usize = 4096;
const SOCKET_TX_BUFFER: usize = 16 * 1024;
/// ARP replies waiting (a burst of requests needs only the last).
const MAX_PENDING_ARP: usize = 4;
/// Poll rounds per event: each lets answers written after the previous
/// round go out.
const POLL_ROUNDS: usize = 4;

/// smoltcp's view of the link: IP packets the guest sent (one at a time)
/// and packets for the guest (bounded).
struct Link {
    inbound: Option<Vec<u8>>,
    outbound: VecDeque<Vec<u8>>,
}

struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let result = f(&mut packet);
        if self.0.len() < MAX_PENDING_FRAMES {
            self.0.push_back(packet);
        } else {
            // Only the reply to an incoming segment gets here with the
            // queue full (`transmit` refuses otherwise); TCP resends.
            METRICS.tx_errors.inc();
        }
        result
    }
}

impl Device for Link {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.inbound.take()?;
        Some((RxToken(packet), TxToken(&mut self.outbound)))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        (self.outbound.len() < MAX_PENDING_FRAMES).then_some(TxToken(&mut self.outbound))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps
    }
}

/// One connection's HTTP state, beside its socket.
struct Connection {
    socket: SocketHandle,
    /// Request bytes received and not yet answered.
    request: Vec<u8>,
    /// The answer being sent, and how much of it the socket took.
    answer: Vec<u8>,
    sent: usize,
    /// The guest asked to close after this answer.
    close_after: bool,
    /// Counted as created (it left LISTEN).
    open: bool,
    last_active: Instant,
}

impl Connection {
    fn reset(&mut self, now: Instant) {
        self.request.clear();
        self.answer.clear();
        self.sent = 0;
        self.close_after = false;
        self.open = false;
        self.last_active = now;
    }
}

pub struct MmdsStack {
    mmds: Mmds,
    address: Ipv4Addr,
    iface: Interface,
    link: Link,
    sockets: SocketSet<'static>,
    connections: Vec<Connection>,
    /// Where replies go: the MAC the guest last sent from.
    guest_mac: EthernetAddress,
    arp_replies: VecDeque<Vec<u8>>,
    /// smoltcp's clock starts here.
    epoch: Instant,
}

impl std::fmt::Debug for MmdsStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmdsStack")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl MmdsStack {
    /// A stack answering at `address` from `mmds`; `seed` varies smoltcp's
    /// initial sequence numbers and ports.
    pub fn new(mmds: Mmds, address: Ipv4Addr, seed: u64) -> Self {
        let epoch = Instant::now();
        let mut link = Link {
            inbound: None,
            outbound: VecDeque::new(),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut link, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // A new interface has room for its one address.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(address), 32));
        });
        // Replies to any guest address leave through the link itself.
        let _ = iface.routes_mut().add_default_ipv4_route(address);
        let mut sockets = SocketSet::new(Vec::new());
        let connections = (0..MAX_CONNECTIONS)
            .map(|_| {
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; SOCKET_RX_BUFFER]),
                    tcp::SocketBuffer::new(vec![0; SOCKET_TX_BUFFER]),
                );
                socket.set_ack_delay(None);
                socket.set_nagle_enabled(false);
                // A fresh socket listens on a non-zero port.
                let _ = socket.listen(PORT);
                Connection {
                    socket: sockets.add(socket),
                    request: Vec::new(),
                    answer: Vec::new(),
                    sent: 0,
                    close_after: false,
                    open: false,
                    last_active: epoch,
                }
            })
            .collect();
        Self {
            mmds,
            address,
            iface,
            link,
            sockets,
            connections,
            guest_mac: EthernetAddress(MMDS_MAC),
            arp_replies: VecDeque::new(),
            epoch,
        }
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// Whether the guest's `frame` (Ethernet, no virtio header) is for
    /// MMDS: ARP whose target is its address, or IPv4 to it. Such a frame
    /// never reaches the TAP, even if malformed.
    pub fn is_mmds_frame(&self, frame: &[u8]) -> bool {
        let target = match frame.get(12..14) {
            Some([0x08, 0x06]) => frame.get(ETHERNET_HEADER + 24..ETHERNET_HEADER + 28),
            Some([0x08, 0x00]) => frame.get(ETHERNET_HEADER + 16..ETHERNET_HEADER + 20),
            _ => None,
        };
        target == Some(&self.address.octets()[..])
    }

    /// Takes in a frame [`Self::is_mmds_frame`] claimed, and runs the
    /// stack on it.
    pub fn handle_frame(&mut self, frame: &[u8]) {
        METRICS.rx_accepted.inc();
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            METRICS.rx_bad_eth.inc();
            return;
        };
        match eth.ethertype() {
            EthernetProtocol::Arp => self.handle_arp(eth.payload()),
            EthernetProtocol::Ipv4 => {
                if let Some(packet) = self.checked_tcp(eth.payload()) {
                    if opens_connection(&packet) {
                        self.evict_idle(Instant::now());
                    }
                    if eth.src_addr().is_unicast() {
                        self.guest_mac = eth.src_addr();
                    }
                    METRICS.rx_count.inc();
                    self.link.inbound = Some(packet);
                    self.poll();
                    // The link takes one packet per poll: one not taken
                    // (cannot happen) is dropped, not kept.
                    self.link.inbound = None;
                }
            }
            _ => METRICS.rx_accepted_unusual.inc(),
        }
    }

    /// An ARP request for the MMDS address: its reply is queued.
    fn handle_arp(&mut self, payload: &[u8]) {
        let Some(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpPacket::new_checked(payload)
            .ok()
            .and_then(|p| ArpRepr::parse(&p).ok())
        else {
            METRICS.rx_accepted_unusual.inc();
            return;
        };
        if target_protocol_addr != self.address || !source_hardware_addr.is_unicast() {
            METRICS.rx_accepted_unusual.inc();
            return;
        }
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(MMDS_MAC),
            source_protocol_addr: self.address,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(MMDS_MAC),
            dst_addr: source_hardware_addr,
            ethertype: EthernetProtocol::Arp,
        };
        let mut frame = vec![0u8; eth.buffer_len() + reply.buffer_len()];
        let mut out = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.emit(&mut out);
        reply.emit(&mut ArpPacket::new_unchecked(out.payload_mut()));
        if self.arp_replies.len() >= MAX_PENDING_ARP {
            self.arp_replies.pop_front();
            METRICS.tx_errors.inc();
        }
        self.arp_replies.push_back(frame);
    }

    /// The IP packet in `payload` (trimmed to its length) if it is one
    /// smoltcp should see: IPv4 TCP to the MMDS address, both checksums
    /// good, from a unicast address and a non-zero port.
    fn checked_tcp(&self, payload: &[u8]) -> Option<Vec<u8>> {
        let Ok(ip) = Ipv4Packet::new_checked(payload) else {
            METRICS.rx_accepted_err.inc();
            return None;
        };
        let src = ip.src_addr();
        let dst = ip.dst_addr();
        if ip.next_header() != IpProtocol::Tcp {
            METRICS.rx_accepted_unusual.inc();
            return None;
        }
        let unicast = !(src.is_unspecified()
            || src.is_broadcast()
            || src.is_multicast()
            || src.octets()[0] >= 240);
        if !ip.verify_checksum()
            || dst != self.address
            || !unicast
            || ip.more_frags()
            || ip.frag_offset() != 0
        {
            METRICS.rx_accepted_err.inc();
            return None;
        }
        let tcp_ok = TcpPacket::new_checked(ip.payload()).is_ok_and(|tcp| {
            tcp.src_port() != 0 && tcp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst))
        });
        if !tcp_ok {
            METRICS.rx_accepted_err.inc();
            return None;
        }
        let len = usize::from(ip.total_len());
        payload.get(..len).map(<[u8]>::to_vec)
    }

    /// Runs the stack: takes in what the link holds, answers the requests
    /// it completes, sends what is due.
    pub fn poll(&mut self) {
        for _ in 0..POLL_ROUNDS {
            let now = self.now();
            self.iface.poll(now, &mut self.link, &mut self.sockets);
            if !self.serve() {
                break;
            }
        }
    }

    /// How long until the stack needs [`Self::poll`] for its timers, if
    /// it has any running.
    pub fn poll_delay(&mut self) -> Option<Duration> {
        let now = self.now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    /// The next frame for the guest (Ethernet, no virtio header): ARP
    /// replies first.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        if let Some(frame) = self.arp_replies.pop_front() {
            METRICS.tx_frames.inc();
            METRICS.tx_bytes.add(frame.len() as u64);
            return Some(frame);
        }
        let packet = self.link.outbound.pop_front()?;
        let eth = EthernetRepr {
            src_addr: EthernetAddress(MMDS_MAC),
            dst_addr: self.guest_mac,
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut frame = vec![0u8; eth.buffer_len() + packet.len()];
        let mut out = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.emit(&mut out);
        out.payload_mut().copy_from_slice(&packet);
        METRICS.tx_count.inc();
        METRICS.tx_frames.inc();
        METRICS.tx_bytes.add(frame.len() as u64);
        Some(frame)
    }

    /// Whether a frame for the guest is waiting.
    pub fn has_frames(&self) -> bool {
        !self.arp_replies.is_empty() || !self.link.outbound.is_empty()
    }

    fn now(&self) -> smoltcp::time::Instant {
        let micros = i64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(i64::MAX);
        smoltcp::time::Instant::from_micros(micros)
    }

    /// With no socket listening, frees one so that a new connection can
    /// be accepted: one in TIME-WAIT (its connection is over: the service
    /// closed first, after a `Connection: close` answer), else the longest
    /// idle if it has been idle for [`EVICTION_IDLE`] (the guest learns of
    /// it at its next segment, with a reset).
    fn evict_idle(&mut self, now: Instant) {
        let state = |c: &Connection| self.sockets.get::<tcp::Socket>(c.socket).state();
        if self
            .connections
            .iter()
            .any(|c| state(c) == tcp::State::Listen)
        {
            return;
        }
        let time_wait = self
            .connections
            .iter()
            .position(|c| state(c) == tcp::State::TimeWait);
        let idle = || {
            self.connections
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.last_active)
                .filter(|(_, c)| now.duration_since(c.last_active) >= EVICTION_IDLE)
                .map(|(index, _)| index)
        };
        let Some(conn) = time_wait
            .or_else(idle)
            .and_then(|index| self.connections.get_mut(index))
        else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(conn.socket);
        socket.abort();
        if conn.open {
            METRICS.connections_destroyed.inc();
        }
        conn.reset(now);
        let _ = socket.listen(PORT);
    }

    /// Answers what the connections received and feeds their answers to
    /// the sockets. Returns whether anything was written that a poll
    /// should send.
    fn serve(&mut self) -> bool {
        let now = Instant::now();
        let mut wrote = false;
        for conn in &mut self.connections {
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.socket);
            wrote |= serve_connection(&self.mmds, conn, socket, now);
        }
        wrote
    }
}

/// Whether the IP packet `packet` (checked) opens a connection: a SYN
/// without ACK.
fn opens_connection(packet: &[u8]) -> bool {
    Ipv4Packet::new_checked(packet)
        .ok()
        .and_then(|ip| {
            TcpPacket::new_checked(ip.payload())
                .ok()
                .map(|t| t.syn() && !t.ack())
        })
        .unwrap_or(false)
}

/// One connection's turn: relisten once closed, read the request, answer
/// it, send the answer, close when asked or when the guest closed.
fn serve_connection(
    mmds: &Mmds,
    conn: &mut Connection,
    socket: &mut tcp::Socket<'_>,
    now: Instant,
) -> bool {
    match socket.state() {
        tcp::State::Closed => {
            if conn.open {
                METRICS.connections_destroyed.inc();
            }
            conn.reset(now);
            // Closed sockets listen again, on a port that is not zero.
            let _ = socket.listen(PORT);
            return false;
        }
        tcp::State::Listen | tcp::State::SynReceived => return false,
        _ => {}
    }
    if !conn.open {
        conn.open = true;
        conn.last_active = now;
        METRICS.connections_created.inc();
    }
    if !read_request(conn, socket, now) {
        // Over the bound without a complete head: reset, as Firecracker.
        socket.abort();
        return true;
    }
    let mut wrote = false;
    loop {
        if conn.answer.is_empty() {
            let Some(end) = http::request_end(&conn.request) else {
                break;
            };
            let answer = http::answer(mmds, &conn.request[..end]);
            conn.request.drain(..end);
            conn.close_after = answer.close;
            conn.answer = answer.to_bytes();
            conn.sent = 0;
        }
        if let Ok(n) = socket.send_slice(&conn.answer[conn.sent..]) {
            wrote |= n > 0;
            conn.sent += n;
        }
        if conn.sent < conn.answer.len() {
            break;
        }
        conn.answer.clear();
        conn.sent = 0;
        if conn.close_after {
            socket.close();
            return true;
        }
    }
    // The guest closed its side and everything asked is answered.
    if socket.state() == tcp::State::CloseWait && conn.answer.is_empty() {
        socket.close();
        wrote = true;
    }
    wrote
}

/// Moves received bytes into the connection's request buffer, at most
/// [`MAX_REQUEST`]. False if the buffer is full and holds no complete head.
fn read_request(conn: &mut Connection, socket: &mut tcp::Socket<'_>, now: Instant) -> bool {
    while socket.can_recv() && conn.request.len() < MAX_REQUEST {
        let room = MAX_REQUEST - conn.request.len();
        let taken = socket.recv(|data| {
            let n = data.len().min(room);
            (n, data[..n].to_vec())
        });
        match taken {
            Ok(bytes) if !bytes.is_empty() => {
                conn.request.extend_from_slice(&bytes);
                conn.last_active = now;
            }
            _ => break,
        }
    }
    conn.request.len() < MAX_REQUEST || http::request_end(&conn.request).is_some()
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data: small, known values
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber};

    const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    // Not link-local: replies go back whatever the guest's address.
    const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    thread_local! {
        /// The guest's port: each exchange opens a new connection.
        static GUEST_PORT: std::cell::Cell<u16> = const { std::cell::Cell::new(40_000) };
    }

    fn guest_port() -> u16 {
        GUEST_PORT.with(std::cell::Cell::get)
    }

    fn stack(version: super::super::MmdsVersion) -> MmdsStack {
        let mmds = Mmds::new(51_200);
        {
            let mut store = mmds.lock();
            store.configure(version, false);
            store
                .put(json!({"latest": {"meta-data": {"ami-id": "ami-12345678"}}}))
                .unwrap();
        }
        MmdsStack::new(mmds, DEFAULT_IPV4, 7)
    }

    fn arp_request(target: Ipv4Addr) -> Vec<u8> {
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(GUEST_MAC),
            source_protocol_addr: GUEST_IP,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(GUEST_MAC),
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let mut frame = vec![0u8; eth.buffer_len() + arp.buffer_len()];
        let mut out = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.emit(&mut out);
        arp.emit(&mut ArpPacket::new_unchecked(out.payload_mut()));
        frame
    }

    fn segment<'a>(
        control: TcpControl,
        seq: u32,
        ack: Option<u32>,
        payload: &'a [u8],
    ) -> TcpRepr<'a> {
        TcpRepr {
            src_port: guest_port(),
            dst_port: PORT,
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: 64_000,
            window_scale: None,
            max_seg_size: (control == TcpControl::Syn).then_some(1460),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        }
    }

    /// A frame from the guest carrying `tcp` to the MMDS address.
    fn tcp_frame(tcp: &TcpRepr<'_>) -> Vec<u8> {
        let ip = Ipv4Repr {
            src_addr: GUEST_IP,
            dst_addr: DEFAULT_IPV4,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(GUEST_MAC),
            dst_addr: EthernetAddress(MMDS_MAC),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut frame = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut out = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.emit(&mut out);
        let mut packet = Ipv4Packet::new_unchecked(out.payload_mut());
        ip.emit(&mut packet, &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(packet.payload_mut()),
            &IpAddress::Ipv4(GUEST_IP),
            &IpAddress::Ipv4(DEFAULT_IPV4),
            &caps,
        );
        frame
    }

    /// A segment the stack sent the guest: checked as the guest would.
    struct Reply {
        control: TcpControl,
        seq: u32,
        ack: Option<u32>,
        payload: Vec<u8>,
    }

    fn parse_reply(frame: &[u8]) -> Reply {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress(GUEST_MAC));
        assert_eq!(eth.src_addr(), EthernetAddress(MMDS_MAC));
        assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (DEFAULT_IPV4, GUEST_IP));
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let repr = TcpRepr::parse(
            &tcp,
            &IpAddress::Ipv4(DEFAULT_IPV4),
            &IpAddress::Ipv4(GUEST_IP),
            &ChecksumCapabilities::default(),
        )
        .unwrap();
        assert_eq!((repr.src_port, repr.dst_port), (PORT, guest_port()));
        Reply {
            control: repr.control,
            seq: repr.seq_number.0 as u32,
            ack: repr.ack_number.map(|a| a.0 as u32),
            payload: repr.payload.to_vec(),
        }
    }

    /// Opens a connection; returns the stack's next sequence number.
    fn handshake(stack: &mut MmdsStack, isn: u32) -> u32 {
        stack.handle_frame(&tcp_frame(&segment(TcpControl::Syn, isn, None, b"")));
        let syn_ack = parse_reply(&stack.next_frame().expect("a SYN-ACK"));
        assert_eq!(syn_ack.control, TcpControl::Syn);
        assert_eq!(syn_ack.ack, Some(isn + 1));
        let ours = syn_ack.seq + 1;
        stack.handle_frame(&tcp_frame(&segment(
            TcpControl::None,
            isn + 1,
            Some(ours),
            b"",
        )));
        ours
    }

    /// Sends `request` on a fresh connection; returns the answer's bytes.
    fn exchange(stack: &mut MmdsStack, request: &[u8]) -> String {
        GUEST_PORT.with(|port| port.set(port.get() + 1));
        let isn = 1000;
        let ours = handshake(stack, isn);
        stack.handle_frame(&tcp_frame(&segment(
            TcpControl::Psh,
            isn + 1,
            Some(ours),
            request,
        )));
        let mut answer = Vec::new();
        while let Some(frame) = stack.next_frame() {
            let reply = parse_reply(&frame);
            assert_eq!(reply.ack, Some(isn + 1 + request.len() as u32));
            answer.extend_from_slice(&reply.payload);
        }
        String::from_utf8(answer).unwrap()
    }

    #[test]
    fn answers_arp_for_its_address_only() {
        let mut stack = stack(super::super::MmdsVersion::V1);
        let request = arp_request(DEFAULT_IPV4);
        assert!(stack.is_mmds_frame(&request));
        stack.handle_frame(&request);
        let reply = stack.next_frame().expect("an ARP reply");
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.dst_addr(), EthernetAddress(GUEST_MAC));
        assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(
            arp,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: EthernetAddress(MMDS_MAC),
                source_protocol_addr: DEFAULT_IPV4,
                target_hardware_addr: EthernetAddress(GUEST_MAC),
                target_protocol_addr: GUEST_IP,
            }
        );
        assert!(stack.next_frame().is_none());
        assert!(!stack.is_mmds_frame(&arp_request(Ipv4Addr::new(169, 254, 169, 1))));
    }

    #[test]
    fn syn_gets_syn_ack_and_get_gets_the_value() {
        let mut stack = stack(super::super::MmdsVersion::V1);
        let syn = tcp_frame(&segment(TcpControl::Syn, 1000, None, b""));
        assert!(stack.is_mmds_frame(&syn));
        let answer = exchange(
            &mut stack,
            b"GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200 \r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nami-12345678"), "{answer}");
        assert!(answer.contains("Content-Length: 12\r\n"), "{answer}");
    }

    #[test]
    fn v2_through_the_stack_token_then_get() {
        let mut stack = stack(super::super::MmdsVersion::V2);
        let answer = exchange(&mut stack, b"GET /latest HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 401 \r\n"), "{answer}");
        let answer = exchange(
            &mut stack,
            b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200 \r\n"), "{answer}");
        let token = answer.rsplit("\r\n").next().unwrap().to_string();
        let request = format!(
            "GET /latest/meta-data HTTP/1.1\r\nX-metadata-token: {token}\r\nAccept: application/json\r\n\r\n"
        );
        let answer = exchange(&mut stack, request.as_bytes());
        assert!(answer.ends_with(r#"{"ami-id":"ami-12345678"}"#), "{answer}");
    }

    #[test]
    fn a_large_answer_spans_segments() {
        let mut stack = stack(super::super::MmdsVersion::V1);
        let big = "x".repeat(20_000);
        stack.mmds.lock().put(json!({ "big": big })).unwrap();
        let isn = 5000;
        let ours = handshake(&mut stack, isn);
        let request = b"GET /big HTTP/1.1\r\n\r\n";
        stack.handle_frame(&tcp_frame(&segment(
            TcpControl::Psh,
            isn + 1,
            Some(ours),
            request,
        )));
        let acked = isn + 1 + request.len() as u32;
        let mut answer = Vec::new();
        for _ in 0..100 {
            let mut got = false;
            while let Some(frame) = stack.next_frame() {
                let reply = parse_reply(&frame);
                assert!(reply.payload.len() <= 1460);
                answer.extend_from_slice(&reply.payload);
                got = true;
            }
            if !got {
                break;
            }
            // The guest acknowledges all it has, which lets more out.
            let ack = ours.wrapping_add(answer.len() as u32);
            stack.handle_frame(&tcp_frame(&segment(
                TcpControl::None,
                acked,
                Some(ack),
                b"",
            )));
        }
        let text = String::from_utf8(answer).unwrap();
        assert!(text.ends_with(&big), "{} bytes", text.len());
    }

    #[test]
    fn an_oversize_request_resets_the_connection() {
        let mut stack = stack(super::super::MmdsVersion::V1);
        let isn = 1;
        let ours = handshake(&mut stack, isn);
        let junk = vec![b'a'; MAX_REQUEST + 10];
        stack.handle_frame(&tcp_frame(&segment(
            TcpControl::Psh,
            isn + 1,
            Some(ours),
            &junk,
        )));
        let mut reset = false;
        while let Some(frame) = stack.next_frame() {
            reset |= parse_reply(&frame).control == TcpControl::Rst;
        }
        assert!(reset);
    }

    #[test]
    fn malformed_frames_are_dropped() {
        let mut stack = stack(super::super::MmdsVersion::V1);
        let good = tcp_frame(&segment(TcpControl::Syn, 1000, None, b""));
        // Truncated at every length.
        for len in 0..good.len() {
            stack.handle_frame(&good[..len]);
        }
        // Bad IP checksum, bad TCP checksum.
        let mut bad_ip = good.clone();
        bad_ip[ETHERNET_HEADER + 10] ^= 0xff;
        stack.handle_frame(&bad_ip);
        let mut bad_tcp = good.clone();
        let last = bad_tcp.len() - 1;
        bad_tcp[last] ^= 0x55;
        bad_tcp[ETHERNET_HEADER + 20 + 16] ^= 0xff;
        stack.handle_frame(&bad_tcp);
        // UDP to the address, and a source address of 0.0.0.0.
        let mut udp = good.clone();
        udp[ETHERNET_HEADER + 9] = 17;
        stack.handle_frame(&udp);
        let mut unspecified = good.clone();
        unspecified[ETHERNET_HEADER + 12..ETHERNET_HEADER + 16].fill(0);
        stack.handle_frame(&unspecified);
        // An ARP reply, not a request.
        let mut arp = arp_request(DEFAULT_IPV4);
        arp[ETHERNET_HEADER + 7] = 2;
        stack.handle_frame(&arp);
        assert!(stack.next_frame().is_none(), "nothing answered");
        // The stack still works.
        let answer = exchange(&mut stack, b"GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
        assert!(answer.ends_with("ami-12345678"));
    }

    #[test]
    fn connections_closed_on_request_free_their_socket_for_new_ones() {
        let mut stack = stack(super::super::MmdsVersion::V1);
        // More connections than sockets, each asking to close: the
        // service closes first, and its sockets in TIME-WAIT are reused.
        for _ in 0..MAX_CONNECTIONS * 2 {
            GUEST_PORT.with(|port| port.set(port.get() + 1));
            let isn = 7000;
            let ours = handshake(&mut stack, isn);
            let request = b"GET /latest/meta-data/ami-id HTTP/1.1\r\nConnection: close\r\n\r\n";
            stack.handle_frame(&tcp_frame(&segment(
                TcpControl::Psh,
                isn + 1,
                Some(ours),
                request,
            )));
            let mut answer = Vec::new();
            let mut fin = None;
            while let Some(frame) = stack.next_frame() {
                let reply = parse_reply(&frame);
                answer.extend_from_slice(&reply.payload);
                if reply.control == TcpControl::Fin {
                    fin = Some(reply.seq + reply.payload.len() as u32);
                }
            }
            let text = String::from_utf8(answer).unwrap();
            assert!(text.contains("Connection: close\r\n"), "{text}");
            assert!(text.ends_with("ami-12345678"), "{text}");
            let fin = fin.expect("the service closes");
            // The guest acknowledges the FIN and closes its side.
            let next = isn + 1 + request.len() as u32;
            stack.handle_frame(&tcp_frame(&segment(
                TcpControl::Fin,
                next,
                Some(fin + 1),
                b"",
            )));
            while stack.next_frame().is_some() {}
        }
    }

    #[test]
    fn pending_frames_are_bounded() {
        let mut stack = stack(super::super::MmdsVersion::V1);
        for i in 0..(MAX_CONNECTIONS as u16 * 4) {
            let mut syn = segment(TcpControl::Syn, 1000, None, b"");
            syn.src_port = 1000 + i;
            stack.handle_frame(&tcp_frame(&syn));
            stack.handle_frame(&arp_request(DEFAULT_IPV4));
        }
        let mut frames = 0;
        while stack.next_frame().is_some() {
            frames += 1;
        }
        assert!(frames <= MAX_PENDING_FRAMES + MAX_PENDING_ARP, "{frames}");
        assert!(stack.poll_delay().is_some(), "handshakes' timers run");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_frames_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..200),
                                     cut in 0usize..120) {
            let mut stack = stack(super::super::MmdsVersion::V2);
            // A header that claims the frame for MMDS, then noise.
            let mut frame = tcp_frame(&segment(TcpControl::Syn, 1, None, b""));
            frame.truncate(ETHERNET_HEADER + 20);
            frame.extend_from_slice(&tail);
            stack.handle_frame(&frame[..frame.len().min(cut + ETHERNET_HEADER)]);
            stack.handle_frame(&frame);
            stack.handle_frame(&tail);
            while stack.next_frame().is_some() {}
            stack.poll();
        }
    }
}
