//! virtio-net backed by a host TAP device.
//!
//! Queue 0 receives (TAP → guest), queue 1 transmits (guest → TAP). Frames
//! carry the 12-byte virtio net header both ways, so no offloads are
//! translated: none are offered. The worker stops reading the TAP while the
//! guest has no receive buffers, and starts again at the guest's next
//! receive-queue notification, so a full queue neither spins nor drops.
//!
//! Receiving and transmitting each have a rate limiter (Firecracker's
//! `rx_rate_limiter` and `tx_rate_limiter`), charged per frame: one op and
//! the frame's length, its 12-byte virtio header included, as Firecracker
//! counts it. A sent frame the limiter holds back goes back to the
//! available ring; a received one stays pending (the TAP is not read
//! meanwhile, so the kernel queues or drops what arrives, as a busy link
//! would). Either queue resumes when its limiter's timer fires.
//!
//! An interface that serves the metadata service (`PUT /mmds/config`)
//! has an [`MmdsStack`]: frames the guest sends for MMDS go to it instead
//! of the TAP, and its replies are received by the guest before TAP
//! frames, alternating with them so neither starves the other. Its TCP
//! timers wake the worker through a timerfd of its own.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::vstate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::tap::{Tap, VNET_HDR_LEN};
use super::worker::{wait, Worker};
use super::{
    chain_is_well_formed, expect_queues, len_u32, read_config_bytes, signal_used, stop_worker,
    ActivateError, ActiveQueue, Interrupt, SharedMemory, VirtioDevice, TYPE_NET,
    VIRTIO_F_VERSION_1,
};
use crate::mmds::stack::MmdsStack;
use crate::rate_limiter::SharedRateLimiter;
use crate::seccomp::ThreadKind;

const QUEUE_SIZES: &[u16] = &[256, 256];
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// The largest frame: header + 64 KiB, what the TAP can hand over.
const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;

pub struct Net {
    tap: Option<Tap>,
    mac: [u8; 6],
    worker: Option<Worker>,
    /// Meter received and sent frames; shared with the controller, which
    /// updates them on `PATCH /network-interfaces/{id}`.
    limiters: NetLimiters,
    /// The metadata service, if this interface serves it.
    mmds: Option<Arc<Mutex<MmdsPort>>>,
}

/// An interface's MMDS stack and the timer of its TCP timers; kept by the
/// device across its workers (a reset and a new activation keep it).
pub struct MmdsPort {
    stack: MmdsStack,
    timer: TimerFd,
}

impl MmdsPort {
    /// The timer is made here, on the building thread: worker threads may
    /// not create descriptors.
    pub fn new(stack: MmdsStack) -> std::io::Result<Self> {
        let timer = TimerFd::new().map_err(std::io::Error::from)?;
        crate::rate_limiter::set_nonblocking(&timer)?;
        Ok(Self { stack, timer })
    }

    /// Runs the stack's timers and arms the timer for the next.
    fn poll(&mut self) {
        let _ = self.timer.wait();
        self.stack.poll();
        self.arm();
    }

    fn arm(&mut self) {
        // A zero duration would disarm the timer: at least 1 ms.
        let _ = match self.stack.poll_delay() {
            Some(delay) => self.timer.reset(delay.max(Duration::from_millis(1)), None),
            None => self.timer.clear(),
        };
    }
}

fn lock(port: &Mutex<MmdsPort>) -> MutexGuard<'_, MmdsPort> {
    port.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The two rate limiters of an interface.
#[derive(Clone, Debug)]
pub struct NetLimiters {
    pub rx: SharedRateLimiter,
    pub tx: SharedRateLimiter,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6], limiters: NetLimiters) -> Self {
        Self {
            tap: Some(tap),
            mac,
            worker: None,
            limiters,
            mmds: None,
        }
    }

    /// The interface serves the metadata service through `port`.
    pub fn with_mmds(mut self, port: MmdsPort) -> Self {
        self.mmds = Some(Arc::new(Mutex::new(port)));
        self
    }
}

/// What the guest receives: TAP frames and the metadata service's replies,
/// alternately while both have some. A reply is framed with a zeroed
/// virtio header, as a TAP frame is.
struct RxSource<'a, R: Read> {
    tap: &'a mut R,
    mmds: Option<&'a mut MmdsStack>,
    last_was_mmds: bool,
}

impl<R: Read> RxSource<'_, R> {
    fn mmds_frame(&mut self, buf: &mut [u8]) -> Option<usize> {
        let stack = self.mmds.as_deref_mut()?;
        let frame = stack.next_frame()?;
        let len = VNET_HDR_LEN + frame.len();
        // Replies are at most an MTU, far below a TAP frame's buffer; one
        // that did not fit would be dropped.
        let out = buf.get_mut(..len)?;
        out[..VNET_HDR_LEN].fill(0);
        out[VNET_HDR_LEN..].copy_from_slice(&frame);
        self.last_was_mmds = true;
        Some(len)
    }
}

impl<R: Read> Read for RxSource<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.last_was_mmds {
            if let Some(len) = self.mmds_frame(buf) {
                return Ok(len);
            }
        }
        match self.tap.read(buf) {
            Ok(len) if len > 0 => {
                self.last_was_mmds = false;
                Ok(len)
            }
            dry => self.mmds_frame(buf).map_or(dry, Ok),
        }
    }
}

/// Why `receive` stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxStop {
    /// The TAP has nothing more (or failed).
    TapDry,
    /// The guest has no receive buffer for the pending frame.
    Starved,
    /// The rate limiter holds the pending frame back.
    Limited,
}

/// A frame read from the TAP that is waiting for a guest buffer.
struct RxState {
    frame: Vec<u8>,
    pending: usize,
}

/// Moves frames from the TAP into the guest's receive buffers until the
/// TAP runs dry, the guest runs out of buffers or `limiter` holds a frame
/// back. Returns whether any buffer was used, and why it stopped.
fn receive(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    tap: &mut impl Read,
    rx: &mut RxState,
    limiter: Option<&SharedRateLimiter>,
) -> (bool, RxStop) {
    let mut used = false;
    loop {
        if rx.pending == 0 {
            match tap.read(&mut rx.frame) {
                Ok(n) if n >= VNET_HDR_LEN => rx.pending = n,
                // A TAP at EOF (its interface gone) has nothing more to give.
                Ok(0) => return (used, RxStop::TapDry),
                // A runt without a complete header: dropped.
                Ok(_) => continue,
                Err(_) => return (used, RxStop::TapDry),
            }
            // One buffer per frame: tell the guest so (num_buffers = 1).
            rx.frame[10..12].copy_from_slice(&1u16.to_le_bytes());
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            return (used, RxStop::Starved);
        };
        if let Some(limiter) = limiter {
            // At most MAX_FRAME bytes.
            if !limiter.consume(1, rx.pending as u64) {
                queue.go_to_previous_position();
                return (used, RxStop::Limited);
            }
        }
        let head = chain.head_index();
        let written = if chain_is_well_formed(&chain) {
            chain
                .writer(mem)
                .ok()
                .filter(|w| w.available_bytes() >= rx.pending)
                .and_then(|mut w| {
                    w.write_all(&rx.frame[..rx.pending])
                        .ok()
                        .map(|_| rx.pending)
                })
                .unwrap_or(0)
        } else {
            0
        };
        // A frame that does not fit the guest's buffer is dropped, as a
        // NIC drops a frame larger than its receive buffer.
        rx.pending = 0;
        // At most MAX_FRAME bytes.
        if queue.add_used(mem, head, len_u32(written)).is_err() {
            return (used, RxStop::TapDry);
        }
        used = true;
    }
}

/// Sends every frame the guest queued, until `limiter` holds one back
/// (it goes back to the queue). A malformed request is completed without
/// being sent, charged one op. Frames for the metadata service go to
/// `mmds` (charged as any other), never to the TAP.
fn transmit(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    tap: &mut impl Write,
    limiter: Option<&SharedRateLimiter>,
    mut mmds: Option<&mut MmdsStack>,
) -> bool {
    let mut used = false;
    let mut frame = Vec::with_capacity(MAX_FRAME);
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let reader = if chain_is_well_formed(&chain) {
            chain.reader(mem).ok()
        } else {
            None
        };
        if let Some(limiter) = limiter {
            let len = reader
                .as_ref()
                .map_or(0, |r| r.available_bytes().min(MAX_FRAME));
            // At most MAX_FRAME bytes.
            if !limiter.consume(1, len as u64) {
                queue.go_to_previous_position();
                break;
            }
        }
        if let Some(mut reader) = reader {
            frame.clear();
            let len = reader.available_bytes().min(MAX_FRAME);
            frame.resize(len, 0);
            if reader.read_exact(&mut frame).is_ok() && len > VNET_HDR_LEN {
                let ethernet = &frame[VNET_HDR_LEN..];
                match mmds.as_deref_mut() {
                    Some(stack) if stack.is_mmds_frame(ethernet) => stack.handle_frame(ethernet),
                    // A full TAP queue drops the frame, as a busy link would.
                    _ => {
                        let _ = tap.write(&frame);
                    }
                }
            }
        }
        if queue.add_used(mem, head, 0).is_err() {
            break;
        }
        used = true;
    }
    used
}

/// Fuzzing entry point (vmm/fuzz): `transmit` as the device's worker runs
/// it. Not part of the device's API: built only with the `fuzz-hooks`
/// feature, which vmm/fuzz enables.
#[cfg(feature = "fuzz-hooks")]
#[doc(hidden)]
pub fn fuzz_transmit(mem: &GuestMemoryMmap, queue: &mut Queue, tap: &mut impl Write) -> bool {
    transmit(mem, queue, tap, None, None)
}

/// Fuzzing entry point (vmm/fuzz): `receive` from a fresh state, as the
/// device's worker runs it. Not part of the device's API: built only with
/// the `fuzz-hooks` feature, which vmm/fuzz enables.
#[cfg(feature = "fuzz-hooks")]
#[doc(hidden)]
pub fn fuzz_receive(mem: &GuestMemoryMmap, queue: &mut Queue, tap: &mut impl Read) -> (bool, bool) {
    let mut rx = RxState {
        frame: vec![0; MAX_FRAME],
        pending: 0,
    };
    let (used, stop) = receive(mem, queue, tap, &mut rx, None);
    (used, stop == RxStop::Starved)
}

struct NetWorker {
    mem: SharedMemory,
    interrupt: Arc<Interrupt>,
    rx_queue: Queue,
    tx_queue: Queue,
    rx_notify: EventFd,
    tx_notify: EventFd,
    tap: std::fs::File,
    rx: RxState,
    /// The guest has no receive buffers: leave the TAP alone until it
    /// posts some.
    rx_starved: bool,
    limiters: NetLimiters,
    mmds: Option<Arc<Mutex<MmdsPort>>>,
    /// The MMDS timer's descriptor (the port keeps it open).
    mmds_timer: Option<RawFd>,
}

impl NetWorker {
    fn run(&mut self, kill: RawFd) {
        loop {
            // While the receive limiter blocks, the TAP is left alone too:
            // its timer says when to go on.
            let read_tap = !self.rx_starved && !self.limiters.rx.is_blocked();
            let mut fds = vec![
                kill,
                self.rx_notify.as_raw_fd(),
                self.tx_notify.as_raw_fd(),
                self.limiters.rx.timer_fd(),
                self.limiters.tx.timer_fd(),
            ];
            // Index 5: the MMDS timer (a descriptor of -1 is never ready).
            fds.push(self.mmds_timer.unwrap_or(-1));
            if read_tap {
                fds.push(self.tap.as_raw_fd());
            }
            let Some(ready) = wait(&fds) else { return };
            if ready[0] {
                return;
            }
            let mut port = self.mmds.as_deref().map(lock);
            if ready[5] {
                if let Some(port) = port.as_deref_mut() {
                    port.poll();
                }
            }
            if ready[1] {
                let _ = self.rx_notify.read();
                self.rx_starved = false;
            }
            if ready[3] {
                self.limiters.rx.on_timer();
            }
            let mut send = false;
            if ready[2] {
                let _ = self.tx_notify.read();
                send = true;
            }
            if ready[4] {
                send |= self.limiters.tx.on_timer();
            }
            if send {
                let sent = transmit(
                    &self.mem,
                    &mut self.tx_queue,
                    &mut self.tap,
                    Some(&self.limiters.tx),
                    port.as_deref_mut().map(|p| &mut p.stack),
                );
                if sent {
                    signal_used(&self.mem, &mut self.tx_queue, &self.interrupt);
                }
                if let Some(port) = port.as_deref_mut() {
                    port.arm();
                }
            }
            if !self.rx_starved && !self.limiters.rx.is_blocked() {
                let mut source = RxSource {
                    tap: &mut self.tap,
                    mmds: port.as_deref_mut().map(|p| &mut p.stack),
                    last_was_mmds: false,
                };
                let (used, stop) = receive(
                    &self.mem,
                    &mut self.rx_queue,
                    &mut source,
                    &mut self.rx,
                    Some(&self.limiters.rx),
                );
                self.rx_starved = stop == RxStop::Starved;
                if used {
                    signal_used(&self.mem, &mut self.rx_queue, &self.interrupt);
                }
            }
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(
        &mut self,
        mem: SharedMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let [rx, tx] = expect_queues::<2>(queues)?;
        let tap = self
            .tap
            .as_ref()
            .ok_or_else(|| ActivateError::Worker(std::io::Error::other("TAP already closed")))?
            .file()
            .try_clone()
            .map_err(ActivateError::Worker)?;
        let limiters = self.limiters.clone();
        let mut worker = NetWorker {
            mem,
            interrupt,
            rx_queue: rx.queue,
            tx_queue: tx.queue,
            rx_notify: rx.notify,
            tx_notify: tx.notify,
            tap,
            rx: RxState {
                frame: vec![0; MAX_FRAME],
                pending: 0,
            },
            rx_starved: false,
            limiters,
            mmds_timer: self.mmds.as_deref().map(|p| lock(p).timer.as_raw_fd()),
            mmds: self.mmds.clone(),
        };
        self.worker = Some(
            Worker::spawn_loop("virtio-net", ThreadKind::Net, move |kill| worker.run(kill))
                .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) -> bool {
        stop_worker(&mut self.worker)
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data: small, known values
mod tests {
    use super::*;
    use std::io::Cursor;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use crate::rate_limiter::RateLimiterUpdate;
    use crate::vmm_config::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn transmit_sends_the_frame_and_skips_hostile_chains() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let data = frame(b"hello, tap");
        mem.write_slice(&data, GuestAddress(0x8000)).unwrap();
        vq.add_desc_chains(
            &[
                desc(0x8000, data.len() as u32, 0, 0),
                desc(0xffff_f000, 64, 0, 0),
                desc(0x9000, 64, NEXT, 2),
            ],
            0,
        )
        .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        let mut tap = Cursor::new(Vec::new());
        assert!(transmit(&mem, &mut queue, &mut tap, None, None));
        assert_eq!(tap.into_inner(), data, "only the good frame went out");
        assert_eq!(vq.used().idx().load(), 3);
    }

    /// Frames a TAP hands over, one per read, last first.
    struct Frames(Vec<Vec<u8>>);

    impl Read for Frames {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.pop() {
                Some(f) => {
                    buf[..f.len()].copy_from_slice(&f);
                    Ok(f.len())
                }
                None => Err(std::io::ErrorKind::WouldBlock.into()),
            }
        }
    }

    /// Limiters with these (size, refill_time) ops buckets.
    fn limiters(rx_ops: Option<(u64, u64)>, tx_ops: Option<(u64, u64)>) -> NetLimiters {
        let limiter = |ops: Option<(u64, u64)>| {
            let config = RateLimiterConfig {
                bandwidth: None,
                ops: ops.map(|(size, refill_time)| TokenBucketConfig {
                    size,
                    one_time_burst: None,
                    refill_time,
                }),
            };
            SharedRateLimiter::from_config(Some(&config)).unwrap()
        };
        NetLimiters {
            rx: limiter(rx_ops),
            tx: limiter(tx_ops),
        }
    }

    fn lift(limiter: &SharedRateLimiter) {
        let off = RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig::default()),
        };
        assert!(limiter.is_blocked());
        limiter.update(RateLimiterUpdate::from_config(&off).unwrap());
        // A blocked limiter's timer fires at once on an update.
        assert!(wait(&[limiter.timer_fd()]).is_some());
        assert!(limiter.on_timer());
    }

    #[test]
    fn transmit_stops_where_the_limiter_blocks_and_resumes_there() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let frames: Vec<Vec<u8>> = (0..3u8).map(|i| frame(&[b'a' + i; 8])).collect();
        for (i, f) in frames.iter().enumerate() {
            mem.write_slice(f, GuestAddress(0x8000 + 0x100 * i as u64))
                .unwrap();
        }
        let descs: Vec<_> = (0..3)
            .map(|i| desc(0x8000 + 0x100 * i, frames[0].len() as u32, 0, 0))
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        // Two frames per hour.
        let limiters = limiters(None, Some((2, 3_600_000)));
        let mut tap = Cursor::new(Vec::new());
        assert!(transmit(
            &mem,
            &mut queue,
            &mut tap,
            Some(&limiters.tx),
            None
        ));
        assert_eq!(vq.used().idx().load(), 2, "the third frame waits");
        assert!(limiters.tx.is_blocked());
        assert!(!transmit(
            &mem,
            &mut queue,
            &mut tap,
            Some(&limiters.tx),
            None
        ));
        lift(&limiters.tx);
        assert!(transmit(
            &mem,
            &mut queue,
            &mut tap,
            Some(&limiters.tx),
            None
        ));
        assert_eq!(vq.used().idx().load(), 3);
        assert_eq!(tap.into_inner(), frames.concat(), "all three, in order");
    }

    #[test]
    fn a_received_frame_the_limiter_holds_back_stays_pending() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(
            &[desc(0x8000, 2048, WRITE, 0), desc(0x9000, 2048, WRITE, 0)],
            0,
        )
        .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        let mut tap = Frames(vec![frame(b"second"), frame(b"first")]);
        let mut rx = RxState {
            frame: vec![0; MAX_FRAME],
            pending: 0,
        };
        // One frame per hour.
        let limiters = limiters(Some((1, 3_600_000)), None);
        let (used, stop) = receive(&mem, &mut queue, &mut tap, &mut rx, Some(&limiters.rx));
        assert!(used);
        assert_eq!(stop, RxStop::Limited);
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(rx.pending, frame(b"second").len(), "held, not dropped");
        lift(&limiters.rx);
        let (used, stop) = receive(&mem, &mut queue, &mut tap, &mut rx, Some(&limiters.rx));
        assert!(used);
        assert_eq!(stop, RxStop::TapDry);
        assert_eq!(vq.used().idx().load(), 2);
        let mut got = vec![0u8; VNET_HDR_LEN + 6];
        mem.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        assert_eq!(&got[VNET_HDR_LEN..], b"second");
    }

    #[test]
    fn receive_fills_guest_buffers_and_reports_starvation() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(&[desc(0x8000, 2048, WRITE, 0)], 0)
            .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        // Two frames arrive (one per read, as a TAP delivers them).
        let mut tap = Frames(vec![frame(b"second"), frame(b"first")]);
        let mut rx = RxState {
            frame: vec![0; MAX_FRAME],
            pending: 0,
        };
        let (used, stop) = receive(&mem, &mut queue, &mut tap, &mut rx, None);
        assert!(used);
        assert_eq!(stop, RxStop::Starved, "one buffer for two frames");
        assert_eq!(rx.pending, frame(b"second").len(), "the second frame waits");
        let mut got = vec![0u8; VNET_HDR_LEN + 5];
        mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        assert_eq!(&got[VNET_HDR_LEN..], b"first");
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    }

    /// An ARP request for the MMDS address, as the guest sends it.
    fn arp_for_mmds() -> Vec<u8> {
        use smoltcp::wire::{
            ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
            EthernetRepr,
        };
        let guest = EthernetAddress([2, 0, 0, 0, 0, 9]);
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: guest,
            source_protocol_addr: std::net::Ipv4Addr::new(169, 254, 169, 2),
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: crate::mmds::stack::DEFAULT_IPV4,
        };
        let eth = EthernetRepr {
            src_addr: guest,
            dst_addr: EthernetAddress::BROADCAST,
            ethertype: EthernetProtocol::Arp,
        };
        let mut bytes = vec![0u8; eth.buffer_len() + arp.buffer_len()];
        let mut out = EthernetFrame::new_unchecked(&mut bytes[..]);
        eth.emit(&mut out);
        arp.emit(&mut ArpPacket::new_unchecked(out.payload_mut()));
        frame(&bytes)
    }

    #[test]
    fn mmds_frames_skip_the_tap_and_their_replies_come_first() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let arp = arp_for_mmds();
        let other = frame(b"\xff\xff\xff\xff\xff\xff\x02\0\0\0\0\x09\x08\x06 not for mmds");
        mem.write_slice(&arp, GuestAddress(0x8000)).unwrap();
        mem.write_slice(&other, GuestAddress(0x9000)).unwrap();
        vq.add_desc_chains(
            &[
                desc(0x8000, arp.len() as u32, 0, 0),
                desc(0x9000, other.len() as u32, 0, 0),
            ],
            0,
        )
        .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        let mut stack = MmdsStack::new(
            crate::mmds::Mmds::new(1024),
            crate::mmds::stack::DEFAULT_IPV4,
            1,
        );
        let mut tap = Cursor::new(Vec::new());
        assert!(transmit(&mem, &mut queue, &mut tap, None, Some(&mut stack)));
        assert_eq!(tap.into_inner(), other, "only the other frame went out");
        assert!(stack.has_frames(), "the ARP reply waits for the guest");

        // The guest then receives the reply before the TAP's frames, and
        // the TAP's after it.
        let rx_vq = MockSplitQueue::new(&mem, 16);
        rx_vq
            .add_desc_chains(
                &[desc(0xa000, 2048, WRITE, 0), desc(0xb000, 2048, WRITE, 0)],
                0,
            )
            .unwrap();
        let mut rx_queue: Queue = rx_vq.create_queue().unwrap();
        let mut frames = Frames(vec![frame(b"from the tap")]);
        let mut source = RxSource {
            tap: &mut frames,
            mmds: Some(&mut stack),
            last_was_mmds: false,
        };
        let mut rx = RxState {
            frame: vec![0; MAX_FRAME],
            pending: 0,
        };
        let (used, stop) = receive(&mem, &mut rx_queue, &mut source, &mut rx, None);
        assert!(used);
        assert_eq!(stop, RxStop::TapDry);
        assert_eq!(rx_vq.used().idx().load(), 2);
        let mut reply = vec![0u8; VNET_HDR_LEN + 42];
        mem.read_slice(&mut reply, GuestAddress(0xa000)).unwrap();
        assert_eq!(&reply[VNET_HDR_LEN..VNET_HDR_LEN + 6], &[2, 0, 0, 0, 0, 9]);
        assert_eq!(&reply[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14], &[0x08, 0x06]);
        let mut second = vec![0u8; VNET_HDR_LEN + 12];
        mem.read_slice(&mut second, GuestAddress(0xb000)).unwrap();
        assert_eq!(&second[VNET_HDR_LEN..], b"from the tap");
    }

    #[test]
    fn config_space_holds_the_mac() {
        let mac = [0x02, 0, 0, 0, 0, 0x42];
        let net = Net {
            tap: None,
            mac,
            worker: None,
            limiters: limiters(None, None),
            mmds: None,
        };
        let mut data = [0u8; 6];
        net.read_config(0, &mut data);
        assert_eq!(data, mac);
        assert_ne!(net.features() & VIRTIO_NET_F_MAC, 0);
    }
}
