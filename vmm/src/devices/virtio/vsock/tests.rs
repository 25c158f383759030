//! The muxer against real Unix sockets, and the queue handling against
//! virtio-queue's mock queues.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use crate::vstate::memory::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::connection::BUF_ALLOC;
use super::muxer::{Muxer, Token};
use super::packet::{Header, Op, Packet, HDR_LEN, HOST_CID, SHUTDOWN_BOTH, TYPE_STREAM};
use super::{fill_rx, poll, process_tx};

const GUEST_CID: u64 = 3;

struct Fixture {
    dir: PathBuf,
    muxer: Muxer,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vsock-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let muxer = Muxer::new(GUEST_CID, path, listener);
        Self { dir, muxer }
    }

    fn uds(&self) -> PathBuf {
        self.dir.join("v.sock")
    }

    /// One round of the worker's poll over the muxer's sockets.
    fn pump(&mut self) {
        let mut set = Vec::new();
        self.muxer.poll_set(&mut set);
        let mut fds: Vec<libc::pollfd> = set
            .iter()
            .map(|&(fd, events, _)| libc::pollfd {
                fd,
                events,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 500) };
        let ready: Vec<(Token, i16)> = set
            .iter()
            .zip(&fds)
            .filter(|(_, p)| p.revents != 0)
            .map(|(&(_, _, t), p)| (t, p.revents))
            .collect();
        self.muxer.on_ready(&ready);
    }

    /// Pumps until the muxer owes the guest a packet.
    fn expect_packet(&mut self) -> Packet {
        for _ in 0..10 {
            if let Some(p) = self.muxer.next_packet(4096) {
                return p;
            }
            self.pump();
        }
        panic!("the muxer owes the guest nothing");
    }

    fn guest_sends(&mut self, op: Op, src_port: u32, dst_port: u32, payload: &[u8]) {
        let header = guest_header(op, src_port, dst_port, payload.len() as u32);
        self.muxer.on_guest_packet(&header, payload);
    }

    /// A host client that connected and asked for guest port `port`; the
    /// REQUEST the guest gets; returns (client, host-side port).
    fn host_connects(&mut self, port: u32, first_bytes: &[u8]) -> (UnixStream, u32) {
        let mut client = UnixStream::connect(self.uds()).unwrap();
        client
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        client.write_all(first_bytes).unwrap();
        let request = self.expect_packet();
        assert_eq!(request.header.op(), Some(Op::Request));
        assert_eq!(request.header.dst_port, port);
        assert_eq!(request.header.dst_cid, GUEST_CID);
        assert_eq!(request.header.src_cid, HOST_CID);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (client, request.header.src_port)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn guest_header(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        socket_type: TYPE_STREAM,
        op: op.to_u16(),
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

fn read_line(stream: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8(line).unwrap()
}

#[test]
fn host_initiated_stream_carries_data_both_ways_and_closes() {
    let mut f = Fixture::new("host");
    let (mut client, local) = f.host_connects(52, b"ping");
    f.guest_sends(Op::Response, 52, local, &[]);
    assert_eq!(read_line(&mut client), format!("OK {local}"));

    // Bytes sent right after the CONNECT line are the stream's first.
    let data = f.expect_packet();
    assert_eq!(data.header.op(), Some(Op::Rw));
    assert_eq!((data.header.src_port, data.header.dst_port), (local, 52));
    assert_eq!(data.payload, b"ping");
    assert_eq!(data.header.len, 4);

    f.guest_sends(Op::Rw, 52, local, b"pong");
    let mut reply = [0u8; 4];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong");

    drop(client);
    let shutdown = f.expect_packet();
    assert_eq!(shutdown.header.op(), Some(Op::Shutdown));
    assert_eq!(shutdown.header.flags, SHUTDOWN_BOTH);
    f.guest_sends(Op::Rst, 52, local, &[]);
    assert_eq!(f.muxer.connection_count(), 0);
}

#[test]
fn guest_initiated_stream_reaches_the_port_socket() {
    let mut f = Fixture::new("guest");
    let mut path = f.uds().into_os_string();
    path.push("_1234");
    let server = UnixListener::bind(&path).unwrap();
    f.guest_sends(Op::Request, 40_000, 1234, &[]);
    let response = f.expect_packet();
    assert_eq!(response.header.op(), Some(Op::Response));
    assert_eq!(
        (response.header.src_port, response.header.dst_port),
        (1234, 40_000)
    );
    let (mut accepted, _) = server.accept().unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();

    f.guest_sends(Op::Rw, 40_000, 1234, b"from guest");
    let mut got = [0u8; 10];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from guest");
    accepted.write_all(b"from host").unwrap();
    let data = f.expect_packet();
    assert_eq!(data.payload, b"from host");

    // The guest closes its socket: the host end sees EOF, the guest an RST.
    let mut shutdown = guest_header(Op::Shutdown, 40_000, 1234, 0);
    shutdown.flags = SHUTDOWN_BOTH;
    f.muxer.on_guest_packet(&shutdown, &[]);
    assert_eq!(accepted.read(&mut got).unwrap(), 0);
    assert_eq!(f.expect_packet().header.op(), Some(Op::Rst));
    assert_eq!(f.muxer.connection_count(), 0);
}

#[test]
fn guest_connection_to_a_port_nobody_serves_is_reset() {
    let mut f = Fixture::new("refused");
    f.guest_sends(Op::Request, 40_000, 77, &[]);
    let rst = f.expect_packet();
    assert_eq!(rst.header.op(), Some(Op::Rst));
    assert_eq!((rst.header.src_port, rst.header.dst_port), (77, 40_000));
    assert_eq!(f.muxer.connection_count(), 0);
}

#[test]
fn guest_connection_to_a_socket_that_never_accepts_is_reset_at_once() {
    let mut f = Fixture::new("backlog");
    let mut path = f.uds().into_os_string();
    path.push("_77");
    let server = UnixListener::bind(&path).unwrap();
    // SAFETY: a listening socket we own; listen(2) again only sets its
    // backlog, here to the least: one queued connection fills it.
    assert_eq!(unsafe { libc::listen(server.as_raw_fd(), 0) }, 0);
    let _queued = UnixStream::connect(&path).unwrap();
    // A blocking connect would wait for an accept that never comes: the
    // muxer runs on a thread the test can give up on.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f.guest_sends(Op::Request, 40_000, 77, &[]);
        let _ = tx.send(f.expect_packet().header.op());
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)),
        Ok(Some(Op::Rst)),
        "the vsock worker waited on a listener that never accepts"
    );
}

#[test]
fn stray_and_foreign_packets_are_reset_or_ignored() {
    let mut f = Fixture::new("stray");
    // Data for a connection that does not exist.
    f.guest_sends(Op::Rw, 1, 2, b"x");
    assert_eq!(f.expect_packet().header.op(), Some(Op::Rst));
    // A reset for one that does not exist: nothing to answer.
    f.guest_sends(Op::Rst, 1, 2, &[]);
    // A packet claiming another guest's CID, an unknown op, a datagram.
    let mut spoofed = guest_header(Op::Request, 1, 2, 0);
    spoofed.src_cid = 9;
    f.muxer.on_guest_packet(&spoofed, &[]);
    assert_eq!(f.expect_packet().header.dst_cid, GUEST_CID);
    let mut unknown = guest_header(Op::Rw, 1, 2, 0);
    unknown.op = 99;
    f.muxer.on_guest_packet(&unknown, &[]);
    assert_eq!(f.expect_packet().header.op(), Some(Op::Rst));
    let mut dgram = guest_header(Op::Request, 1, 2, 0);
    dgram.socket_type = 3;
    f.muxer.on_guest_packet(&dgram, &[]);
    assert_eq!(f.expect_packet().header.op(), Some(Op::Rst));
    assert!(f.muxer.next_packet(4096).is_none());
    assert_eq!(f.muxer.connection_count(), 0);
}

#[test]
fn guest_ignoring_credit_or_protocol_is_reset() {
    let mut f = Fixture::new("credit");
    let mut path = f.uds().into_os_string();
    path.push("_5");
    let server = UnixListener::bind(&path).unwrap();
    f.guest_sends(Op::Request, 9, 5, &[]);
    assert_eq!(f.expect_packet().header.op(), Some(Op::Response));
    let (_accepted, _) = server.accept().unwrap();
    // Nobody reads the host end: once the socket buffer is full, more
    // than BUF_ALLOC unforwarded bytes is a guest ignoring our credit.
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0;
    while f.muxer.connection_count() == 1 && sent < 64 * BUF_ALLOC as usize {
        f.guest_sends(Op::Rw, 9, 5, &chunk);
        sent += chunk.len();
        if let Some(p) = f.muxer.next_packet(4096) {
            if p.header.op() == Some(Op::Rst) {
                break;
            }
        }
    }
    assert_eq!(f.muxer.connection_count(), 0, "reset after {sent} bytes");

    // A host-initiated connection that gets data before its RESPONSE.
    let (mut client, local) = f.host_connects(6, b"");
    f.guest_sends(Op::Rw, 6, local, b"early");
    assert_eq!(f.expect_packet().header.op(), Some(Op::Rst));
    assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0, "host end closed");
}

#[test]
fn bad_connect_lines_close_the_host_stream() {
    let mut f = Fixture::new("handshake");
    for line in [&b"HELLO 5\n"[..], b"CONNECT\n", &[b'9'; 100][..]] {
        let mut client = UnixStream::connect(f.uds()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(line).unwrap();
        f.pump();
        f.pump();
        // Closed with unread bytes, the stream may read as reset.
        let read = client.read(&mut [0u8; 8]);
        assert!(
            matches!(&read, Ok(0))
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{line:?}: {read:?}"
        );
    }
    assert!(f.muxer.next_packet(4096).is_none());
}

// Queue handling.

const WRITE: u16 = 2; // VRING_DESC_F_WRITE
const NEXT: u16 = 1; // VRING_DESC_F_NEXT

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
}

#[test]
fn a_request_through_the_queues_gets_its_reset_through_the_queues() {
    let mut f = Fixture::new("queues");
    let muxer = &mut f.muxer;
    let mem = memory();
    let tx = MockSplitQueue::new(&mem, 16);
    let request = guest_header(Op::Request, 40_000, 4321, 0);
    mem.write_slice(&request.to_bytes(), GuestAddress(0x8000))
        .unwrap();
    tx.build_desc_chain(&[desc(0x8000, HDR_LEN as u32, 0, 0)])
        .unwrap();
    let mut tx_queue: Queue = tx.create_queue().unwrap();
    assert!(process_tx(&mem, &mut tx_queue, muxer));

    let rx = MockSplitQueue::create(&mem, GuestAddress(0x20000), 16);
    rx.build_desc_chain(&[desc(0x9000, 4096, WRITE, 0)])
        .unwrap();
    let mut rx_queue: Queue = rx.create_queue().unwrap();
    assert!(fill_rx(&mem, &mut rx_queue, muxer));
    assert_eq!(
        rx.used().ring().ref_at(0).unwrap().load().len(),
        HDR_LEN as u32
    );
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(0x9000)).unwrap();
    let rst = Header::from_bytes(&raw);
    assert_eq!(rst.op(), Some(Op::Rst));
    assert_eq!((rst.src_port, rst.dst_port), (4321, 40_000));
    // Nothing more owed: the next buffer stays with the device.
    assert!(!fill_rx(&mem, &mut rx_queue, muxer));
}

#[test]
fn hostile_transmit_chains_complete_and_reach_nobody() {
    let mut f = Fixture::new("hostile");
    let muxer = &mut f.muxer;
    let mem = memory();
    let tx = MockSplitQueue::new(&mem, 16);
    // A payload length beyond the buffers, then a short header, a header
    // outside guest memory, a device-writable header, and a cycle.
    let mut lying = guest_header(Op::Rw, 1, 2, 60_000).to_bytes().to_vec();
    lying.extend_from_slice(b"only this");
    mem.write_slice(&lying, GuestAddress(0x8000)).unwrap();
    tx.add_desc_chains(
        &[
            desc(0x8000, lying.len() as u32, 0, 0),
            desc(0x8000, 20, 0, 0),
            desc(0xffff_0000, HDR_LEN as u32, 0, 0),
            desc(0x8000, HDR_LEN as u32, WRITE, 0),
            desc(0x8000, 8, NEXT, 4),
        ],
        0,
    )
    .unwrap();
    let mut tx_queue: Queue = tx.create_queue().unwrap();
    assert!(process_tx(&mem, &mut tx_queue, muxer));
    assert_eq!(tx.used().idx().load(), 5, "every request completed");
    assert!(muxer.next_packet(4096).is_none(), "no packet got through");
}

#[test]
fn unusable_receive_buffers_are_returned_empty() {
    let mut f = Fixture::new("rxbad");
    let muxer = &mut f.muxer;
    muxer.on_guest_packet(&guest_header(Op::Rw, 1, 2, 0), &[]);
    let mem = memory();
    let rx = MockSplitQueue::new(&mem, 16);
    // Too small for a header, read-only, then a good one.
    rx.add_desc_chains(
        &[
            desc(0x8000, 16, WRITE, 0),
            desc(0x9000, 4096, 0, 0),
            desc(0xa000, 4096, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    let mut rx_queue: Queue = rx.create_queue().unwrap();
    assert!(fill_rx(&mem, &mut rx_queue, muxer));
    let used = rx.used();
    assert_eq!(used.idx().load(), 3);
    let lens: Vec<u32> = (0..3)
        .map(|i| used.ring().ref_at(i).unwrap().load().len())
        .collect();
    assert_eq!(lens, [0, 0, HDR_LEN as u32]);
}

#[test]
fn poll_reports_fixed_and_set_fds() {
    let (a, mut b) = UnixStream::pair().unwrap();
    b.write_all(b"x").unwrap();
    let revents = poll(
        &[],
        &[(
            std::os::fd::AsRawFd::as_raw_fd(&a),
            libc::POLLIN,
            Token::Listener,
        )],
    )
    .unwrap();
    assert_ne!(revents[0] & libc::POLLIN, 0);
}
