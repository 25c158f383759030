//! Fuzz harnesses for the vmm's virtio devices and the virtio-mmio transport,
//! and for the guest agent protocol's decoder: everything that parses what
//! a guest sends.
//!
//! Each harness takes raw fuzzer bytes, decodes them with `arbitrary` into
//! what a hostile guest controls (descriptor table, available ring, buffer
//! contents, register accesses), runs the device code the worker threads
//! run, and checks that it returns without panicking and that the device
//! completed no more requests than the driver made available.
//!
//! The same harnesses are driven by libFuzzer (`cargo fuzz run <target>`,
//! see fuzz_targets/) and by `cargo test` over seeded random inputs
//! (tests/random_inputs.rs), so they also run on stable in CI.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::{self, balloon, block, mmio, net, rng, vsock};
use vmm::devices::{BusDevice, IrqLine};
use vmm::vstate::memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

/// Guest memory: 4 MiB in three regions, with a seam between two adjacent
/// regions at 2 MiB and a 64 KiB hole at 3 MiB, so buffers can straddle
/// regions or run into unmapped guest-physical space, as they can on a
/// real VM (e.g. around the 32-bit MMIO gap).
pub const MEM_END: u64 = 4 << 20;
const SEAM: u64 = 2 << 20;
const HOLE_START: u64 = 3 << 20;
const HOLE_END: u64 = HOLE_START + 0x1_0000;

/// Where the queue's rings live (any queue size up to 256 fits).
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;

const NET_HDR_LEN: usize = 12;
/// net.rs `MAX_FRAME`: header + 65550 bytes.
const NET_MAX_FRAME: usize = NET_HDR_LEN + 65_550;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), SEAM as usize),
        (GuestAddress(SEAM), (HOLE_START - SEAM) as usize),
        (GuestAddress(HOLE_END), (MEM_END - HOLE_END) as usize),
    ])
    .expect("guest memory")
}

/// A guest-physical address: usually inside guest memory (including the
/// hole), sometimes anything at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Addr {
    Mem(u32),
    Raw(u64),
}

impl Addr {
    fn get(self) -> u64 {
        match self {
            Addr::Mem(x) => u64::from(x) % (MEM_END + 0x1000),
            Addr::Raw(x) => x,
        }
    }
}

/// A descriptor length: small (headers, status bytes), whole sectors, or
/// anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Len {
    Small(u8),
    Sectors(u8),
    Raw(u32),
}

impl Len {
    fn get(self) -> u32 {
        match self {
            Len::Small(x) => u32::from(x),
            Len::Sectors(x) => u32::from(x) * 512,
            Len::Raw(x) => x,
        }
    }
}

/// A split-queue descriptor (flags: 1 NEXT, 2 WRITE, 4 INDIRECT).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Desc {
    addr: Addr,
    len: Len,
    flags: u8,
    next: u8,
}

impl Desc {
    fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.get().to_le_bytes());
        b[8..12].copy_from_slice(&self.len.get().to_le_bytes());
        b[12..14].copy_from_slice(&u16::from(self.flags).to_le_bytes());
        b[14..16].copy_from_slice(&u16::from(self.next).to_le_bytes());
        b
    }
}

/// What the guest writes into its memory besides the rings.
#[derive(Arbitrary, Debug)]
pub enum MemWrite {
    Bytes {
        addr: Addr,
        bytes: Vec<u8>,
    },
    /// A virtio-blk request header: le32 type, le32 reserved, le64 sector.
    BlkHeader {
        addr: Addr,
        kind: BlkKind,
        sector: u64,
    },
    /// virtio-blk discard/write-zeroes ranges: le64 sector, le32
    /// num_sectors, le32 flags each, mostly small enough to fit the image.
    BlkRanges {
        addr: Addr,
        ranges: Vec<(u8, u8, u8)>,
    },
    /// A table for an INDIRECT descriptor.
    Indirect {
        addr: Addr,
        descs: Vec<Desc>,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum BlkKind {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Raw(u32),
}

impl MemWrite {
    fn apply(&self, mem: &GuestMemoryMmap) {
        // Writes into the hole or past the end fail: the guest cannot
        // write there either.
        match self {
            MemWrite::Bytes { addr, bytes } => {
                let _ = mem.write_slice(bytes, GuestAddress(addr.get()));
            }
            MemWrite::BlkHeader { addr, kind, sector } => {
                let kind = match kind {
                    BlkKind::In => 0,
                    BlkKind::Out => 1,
                    BlkKind::Flush => 4,
                    BlkKind::GetId => 8,
                    BlkKind::Discard => 11,
                    BlkKind::WriteZeroes => 13,
                    BlkKind::Raw(x) => *x,
                };
                let mut h = [0u8; 16];
                h[..4].copy_from_slice(&kind.to_le_bytes());
                h[8..].copy_from_slice(&sector.to_le_bytes());
                let _ = mem.write_slice(&h, GuestAddress(addr.get()));
            }
            MemWrite::BlkRanges { addr, ranges } => {
                let bytes: Vec<u8> = ranges
                    .iter()
                    .flat_map(|&(sector, num_sectors, flags)| {
                        let mut r = [0u8; 16];
                        r[..8].copy_from_slice(&u64::from(sector).to_le_bytes());
                        r[8..12].copy_from_slice(&u32::from(num_sectors).to_le_bytes());
                        r[12..].copy_from_slice(&u32::from(flags).to_le_bytes());
                        r
                    })
                    .collect();
                let _ = mem.write_slice(&bytes, GuestAddress(addr.get()));
            }
            MemWrite::Indirect { addr, descs } => {
                let table: Vec<u8> = descs.iter().flat_map(|d| d.bytes()).collect();
                let _ = mem.write_slice(&table, GuestAddress(addr.get()));
            }
        }
    }
}

/// The available index the driver publishes.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum AvailIdx {
    /// next_avail + n.
    Entries(u8),
    Raw(u16),
}

/// Everything a driver controls about one split queue.
#[derive(Arbitrary, Debug)]
pub struct Driver {
    /// Queue size 1 << (size_log2 % 9): 1 to 256.
    size_log2: u8,
    next_avail: u16,
    next_used: u16,
    avail_idx: AvailIdx,
    event_idx: bool,
    used_event: u16,
    descriptors: Vec<Desc>,
    /// Avail ring entries from slot next_avail % size on; unset slots hold
    /// their own index.
    ring: Vec<u8>,
    writes: Vec<MemWrite>,
}

/// A queue set up as the transport hands it to a device, and what the
/// harness needs to check the device's work.
pub struct Setup {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    avail_before: u16,
    ring_header_before: [u8; 4],
}

impl Driver {
    pub fn setup(&self) -> Setup {
        let mem = guest_memory();
        let size: u16 = 1 << (self.size_log2 % 9);
        for (i, d) in self.descriptors.iter().take(size.into()).enumerate() {
            mem.write_slice(&d.bytes(), GuestAddress(DESC_TABLE + 16 * i as u64))
                .unwrap();
        }
        let avail_idx = match self.avail_idx {
            AvailIdx::Entries(n) => self.next_avail.wrapping_add(n.into()),
            AvailIdx::Raw(x) => x,
        };
        let mut avail = vec![0u8; 4 + 2 * usize::from(size) + 2];
        avail[2..4].copy_from_slice(&avail_idx.to_le_bytes());
        for slot in 0..size {
            let k = usize::from(slot.wrapping_sub(self.next_avail) % size);
            let head = self.ring.get(k).map_or(slot, |&h| h.into());
            let at = 4 + 2 * usize::from(slot);
            avail[at..at + 2].copy_from_slice(&head.to_le_bytes());
        }
        let at = 4 + 2 * usize::from(size);
        avail[at..].copy_from_slice(&self.used_event.to_le_bytes());
        mem.write_slice(&avail, GuestAddress(AVAIL_RING)).unwrap();
        mem.write_obj(self.next_used.to_le(), GuestAddress(USED_RING + 2))
            .unwrap();
        for w in &self.writes {
            w.apply(&mem);
        }

        let mut queue = Queue::new(256).unwrap();
        queue.set_size(size);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_event_idx(self.event_idx);
        queue.set_next_avail(self.next_avail);
        queue.set_next_used(self.next_used);
        queue.set_ready(true);
        assert!(queue.is_valid(&mem), "the harness's own queue is valid");
        let mut ring_header_before = [0u8; 4];
        mem.read_slice(&mut ring_header_before, GuestAddress(AVAIL_RING))
            .unwrap();
        // The guest's other writes may have overwritten the ring.
        let avail_before = u16::from_le_bytes([ring_header_before[2], ring_header_before[3]]);
        Setup {
            mem,
            queue,
            avail_before,
            ring_header_before,
        }
    }
}

impl Setup {
    /// Runs `process` (a device's queue processing function, which returns
    /// whether it used any buffer) and checks what it did to the queue.
    pub fn run(&mut self, process: impl FnOnce(&GuestMemoryMmap, &mut Queue) -> bool) {
        let next_avail = self.queue.next_avail();
        let next_used = self.queue.next_used();
        let used_any = process(&self.mem, &mut self.queue);
        let popped = self.queue.next_avail().wrapping_sub(next_avail);
        let completed = self.queue.next_used().wrapping_sub(next_used);
        assert_eq!(used_any, completed > 0, "return value vs used ring");
        COMPLETED.set(COMPLETED.get() + u64::from(completed));
        // Every request taken is completed, except one whose completion
        // failed (then the device stops).
        assert!(
            completed == popped || completed + 1 == popped,
            "popped {popped}, completed {completed}"
        );
        // The bound only holds if the device's own writes did not land on
        // the available ring's index (a guest may hand out its own ring as
        // a buffer).
        let mut header = [0u8; 4];
        self.mem
            .read_slice(&mut header, GuestAddress(AVAIL_RING))
            .unwrap();
        if header == self.ring_header_before {
            let available = self.avail_before.wrapping_sub(next_avail);
            let size = self.queue.size();
            if available > size {
                assert_eq!(
                    popped, 0,
                    "avail idx {available} ahead of a queue of {size}"
                );
            } else {
                assert!(popped <= available, "popped {popped} of {available}");
            }
        }
        // What the worker does after processing.
        let _ = self.queue.needs_notification(&self.mem);
    }
}

thread_local! {
    static DECODED: Cell<u64> = const { Cell::new(0) };
    static COMPLETED: Cell<u64> = const { Cell::new(0) };
}

/// How much work the harnesses did on this thread: inputs that decoded,
/// and requests the devices completed. The random-input tests check that
/// they are not just skipping their inputs.
pub fn counters() -> (u64, u64) {
    (DECODED.get(), COMPLETED.get())
}

/// Runs `f` on the decoded input; inputs that do not decode are skipped.
fn decode<'a, T: Arbitrary<'a>>(data: &'a [u8], f: impl FnOnce(T)) {
    if let Ok(input) = T::arbitrary_take_rest(Unstructured::new(data)) {
        DECODED.set(DECODED.get() + 1);
        f(input);
    }
}

// ---------------------------------------------------------------- rng

/// virtio-rng: `rng::process_queue`.
pub fn rng(data: &[u8]) {
    decode(data, |driver: Driver| {
        let mut setup = driver.setup();
        setup.run(rng::process_queue);
    });
}

// ---------------------------------------------------------------- balloon

/// A page frame number: mostly one of guest memory's pages (or a few
/// beyond), sometimes anything at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Pfn {
    Mem(u16),
    Raw(u32),
}

impl Pfn {
    fn get(self) -> u32 {
        match self {
            Pfn::Mem(x) => u32::from(x) % ((MEM_END >> 12) as u32 + 16),
            Pfn::Raw(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum BalloonQueue {
    Inflate,
    Deflate,
    Stats,
}

#[derive(Arbitrary, Debug)]
pub struct BalloonInput {
    queue: BalloonQueue,
    /// PFN arrays the guest writes (little-endian u32s) for its inflate
    /// requests to point at.
    pfn_arrays: Vec<(Addr, Vec<Pfn>)>,
    driver: Driver,
}

/// The balloon's state for the statistics harness (statistics on).
fn balloon_state() -> &'static balloon::SharedBalloon {
    static SHARED: OnceLock<balloon::SharedBalloon> = OnceLock::new();
    SHARED.get_or_init(|| {
        let config = vmm::config::BalloonConfig {
            amount_mib: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: 1,
        };
        balloon::SharedBalloon::new(&config, MEM_END >> 20).expect("balloon state")
    })
}

/// virtio-balloon: the inflate queue (`balloon::process_inflate`, which
/// gives the pages it is told of back with MADV_DONTNEED: here the
/// harness's own guest memory), the deflate queue, and the statistics
/// queue (`balloon::take_stats`, then the held buffer handed back as the
/// timer would).
pub fn balloon(data: &[u8]) {
    decode(data, |input: BalloonInput| {
        let mut setup = input.driver.setup();
        for (addr, pfns) in &input.pfn_arrays {
            let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.get().to_le_bytes()).collect();
            let _ = setup.mem.write_slice(&bytes, GuestAddress(addr.get()));
        }
        match input.queue {
            BalloonQueue::Inflate => {
                setup.run(|mem, queue| balloon::process_inflate(mem, queue, true))
            }
            BalloonQueue::Deflate => setup.run(balloon::complete_all),
            BalloonQueue::Stats => setup.run(|mem, queue| {
                let mut held = None;
                let returned = balloon::take_stats(mem, queue, &mut held, balloon_state());
                balloon::return_held_stats(mem, queue, &mut held) | returned
            }),
        }
        let _ = balloon_state().stats();
    });
}

// ---------------------------------------------------------------- block

#[derive(Arbitrary, Debug)]
pub struct BlockInput {
    read_only: bool,
    flush_acked: bool,
    /// Image size in bytes: image_len % (16 sectors + 1), so partial last
    /// sectors and empty images occur.
    image_len: u16,
    driver: Driver,
}

const IMAGE_SECTORS: u64 = 16;

/// One temp file (on tmpfs when there is one, so fdatasync is cheap),
/// unlinked at once, truncated and regrown for each input.
fn image() -> &'static Mutex<File> {
    static IMAGE: OnceLock<Mutex<File>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let temp = if shm.is_dir() {
            TempFile::new_in(shm).or_else(|_| TempFile::new())
        } else {
            TempFile::new()
        }
        .expect("temp file for the block image");
        Mutex::new(temp.into_file())
    })
}

/// virtio-blk: the worker's request processing (`Processor::process_queue`).
pub fn block(data: &[u8]) {
    decode(data, |input: BlockInput| {
        let image = image().lock().unwrap_or_else(|e| e.into_inner());
        let len = u64::from(input.image_len) % (IMAGE_SECTORS * 512 + 1);
        image.set_len(0).unwrap();
        image.set_len(len).unwrap();
        let disk = block::Disk::from_file(
            image.try_clone().unwrap(),
            input.read_only,
            Some("fuzz-serial"),
        )
        .unwrap();
        assert_eq!(disk.capacity(), len / 512);
        // VIRTIO_BLK_F_FLUSH is bit 9.
        let features = if input.flush_acked { 1 << 9 } else { 0 };
        let disk = Arc::new(disk);
        let mut setup = input.driver.setup();
        setup.run(|mem, queue| block::fuzz_process_queue(disk, features, mem, queue));
        drop(image);
    });
}

// ---------------------------------------------------------------- net

#[derive(Arbitrary, Debug)]
pub struct NetTxInput {
    /// The TAP refuses frames (a full queue, ENOBUFS).
    tap_full: bool,
    driver: Driver,
}

/// A TAP that takes frames and checks them.
struct TapSink {
    full: bool,
}

impl Write for TapSink {
    fn write(&mut self, frame: &[u8]) -> io::Result<usize> {
        assert!(
            frame.len() > NET_HDR_LEN,
            "a frame of {} bytes",
            frame.len()
        );
        assert!(
            frame.len() <= NET_MAX_FRAME,
            "a frame of {} bytes",
            frame.len()
        );
        if self.full {
            Err(io::Error::from_raw_os_error(libc::ENOBUFS))
        } else {
            Ok(frame.len())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// virtio-net transmit queue: `net::transmit`.
pub fn net_tx(data: &[u8]) {
    decode(data, |input: NetTxInput| {
        let mut setup = input.driver.setup();
        let mut tap = TapSink {
            full: input.tap_full,
        };
        setup.run(|mem, queue| net::fuzz_transmit(mem, queue, &mut tap));
    });
}

#[derive(Arbitrary, Debug)]
pub enum Frame {
    Bytes(Vec<u8>),
    /// A frame of `len` bytes (up to the TAP's 64 KiB), filled with `fill`.
    Sized {
        len: u16,
        extra: u8,
        fill: u8,
    },
    /// The read fails with something other than EAGAIN.
    Error,
}

#[derive(Arbitrary, Debug)]
pub struct NetRxInput {
    frames: Vec<Frame>,
    driver: Driver,
}

/// A TAP that hands out the input's frames, one per read, then EAGAIN.
struct TapSource {
    frames: std::vec::IntoIter<Frame>,
}

impl Read for TapSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = match self.frames.next() {
            None => return Err(io::ErrorKind::WouldBlock.into()),
            Some(Frame::Error) => return Err(io::Error::from_raw_os_error(libc::EBADFD)),
            Some(Frame::Bytes(b)) => b,
            Some(Frame::Sized { len, extra, fill }) => {
                vec![fill; usize::from(len) + usize::from(extra)]
            }
        };
        // A TAP truncates a frame to the read buffer.
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Ok(n)
    }
}

/// virtio-net receive queue: `net::receive`.
pub fn net_rx(data: &[u8]) {
    decode(data, |input: NetRxInput| {
        let mut setup = input.driver.setup();
        let mut tap = TapSource {
            frames: input.frames.into_iter(),
        };
        setup.run(|mem, queue| net::fuzz_receive(mem, queue, &mut tap).0);
    });
}

// ---------------------------------------------------------------- vsock

/// A virtio-vsock packet header, with small values common so that
/// packets address the guest's CID, the host and existing ports.
#[derive(Arbitrary, Debug)]
pub struct VsockHeader {
    addr: Addr,
    guest_cid: bool,
    src_port: u8,
    dst_port: u8,
    len: Len,
    stream: bool,
    op: u8,
    flags: u8,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl VsockHeader {
    fn apply(&self, mem: &GuestMemoryMmap) {
        let header = vsock::packet::Header {
            src_cid: if self.guest_cid { VSOCK_GUEST_CID } else { 7 },
            dst_cid: vsock::packet::HOST_CID,
            src_port: self.src_port.into(),
            dst_port: self.dst_port.into(),
            len: self.len.get(),
            socket_type: if self.stream {
                vsock::packet::TYPE_STREAM
            } else {
                2
            },
            op: u16::from(self.op % 9),
            flags: self.flags.into(),
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        };
        let _ = mem.write_slice(&header.to_bytes(), GuestAddress(self.addr.get()));
    }
}

const VSOCK_GUEST_CID: u64 = 3;

#[derive(Arbitrary, Debug)]
pub struct VsockInput {
    headers: Vec<VsockHeader>,
    tx: Driver,
    rx: Driver,
}

/// A listening socket for the muxer, bound once per process under a
/// fresh temp directory; guest-initiated connections to `<it>_<port>` find
/// nothing and are reset.
fn vsock_listener() -> &'static (std::path::PathBuf, std::os::unix::net::UnixListener) {
    static LISTENER: OnceLock<(std::path::PathBuf, std::os::unix::net::UnixListener)> =
        OnceLock::new();
    LISTENER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("stratum-vsock-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        (path, listener)
    })
}

/// virtio-vsock: the transmit queue's packets through the muxer
/// (`vsock::process_tx`), then what the muxer owes the guest into the
/// receive queue (`vsock::fill_rx`).
pub fn vsock(data: &[u8]) {
    decode(data, |input: VsockInput| {
        let (path, listener) = vsock_listener();
        let mut muxer = vsock::muxer::Muxer::new(
            VSOCK_GUEST_CID,
            path.clone(),
            listener.try_clone().expect("dup"),
        );
        let mut tx = input.tx.setup();
        for header in &input.headers {
            header.apply(&tx.mem);
        }
        tx.run(|mem, queue| vsock::process_tx(mem, queue, &mut muxer));
        let mut rx = input.rx.setup();
        rx.run(|mem, queue| vsock::fill_rx(mem, queue, &mut muxer));
    });
}

// ---------------------------------------------------------------- mmio

const MAGIC_VALUE: u32 = 0x7472_6976;
/// ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK | DEVICE_NEEDS_RESET | FAILED
const STATUS_BITS: u32 = 1 | 2 | 4 | 8 | 64 | 128;

/// A device that checks what the transport asks of it.
struct MockDevice {
    queue_sizes: Vec<u16>,
    features: u64,
    config: Vec<u8>,
    activate_ok: bool,
    reset_ok: bool,
    active: bool,
}

impl virtio::VirtioDevice for MockDevice {
    fn device_type(&self) -> u32 {
        virtio::TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        assert_eq!(features & !self.features, 0, "acked features not offered");
        assert!(!self.active, "features acked while active");
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtio::read_config_bytes(&self.config, offset, data);
    }

    /// The mock processes nothing on a thread of its own.
    fn worker(&self) -> Option<&virtio::worker::Worker> {
        None
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(dst) = self.config.get_mut(start..) {
            let n = dst.len().min(data.len());
            dst[..n].copy_from_slice(&data[..n]);
        }
    }

    fn activate(
        &mut self,
        mem: virtio::SharedMemory,
        _interrupt: Arc<virtio::Interrupt>,
        queues: Vec<virtio::ActiveQueue>,
    ) -> Result<(), virtio::ActivateError> {
        assert!(!self.active, "activated twice without a reset");
        assert!(queues.len() <= self.queue_sizes.len());
        for q in &queues {
            assert!(q.queue.ready());
            assert!(q.queue.is_valid(mem.as_ref()), "an invalid queue activated");
        }
        if !self.activate_ok {
            return Err(virtio::ActivateError::QueueCount {
                expected: self.queue_sizes.len(),
                got: queues.len(),
            });
        }
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        assert!(self.active, "reset of a device that is not active");
        if self.reset_ok {
            self.active = false;
        }
        self.reset_ok
    }
}

#[derive(Arbitrary, Debug)]
pub enum DeviceKind {
    Mock {
        queue_sizes: Vec<u16>,
        features: u64,
        config: Vec<u8>,
        activate_ok: bool,
        reset_ok: bool,
    },
    /// The real virtio-rng (its worker thread processes the queue on
    /// QueueNotify writes).
    Rng,
    /// The real virtio-balloon (two or three queues, a configuration
    /// space the driver writes, a worker with a timer).
    Balloon { stats: bool, deflate_on_oom: bool },
}

/// Register offsets: mostly the register block, also the configuration
/// space and anything at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Offset {
    Register(u8),
    Config(u8),
    Any(u64),
}

impl Offset {
    fn get(self) -> u64 {
        match self {
            Offset::Register(x) => u64::from(x & 0xfc),
            Offset::Config(x) => 0x100 + u64::from(x),
            Offset::Any(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Width {
    W4,
    W1,
    W2,
    W8,
    W0,
}

impl Width {
    fn get(self) -> usize {
        match self {
            Width::W4 => 4,
            Width::W1 => 1,
            Width::W2 => 2,
            Width::W8 => 8,
            Width::W0 => 0,
        }
    }
}

/// Register values: the usual status progression and queue addresses
/// inside guest memory come up often, anything else too.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Value {
    Status(u8),
    Addr(u32),
    Raw(u64),
}

impl Value {
    fn get(self) -> u64 {
        match self {
            Value::Status(x) => [0, 1, 3, 11, 15, 128, 64][usize::from(x) % 7],
            Value::Addr(x) => u64::from(x) % MEM_END,
            Value::Raw(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug)]
pub enum Op {
    Read {
        offset: Offset,
        width: Width,
    },
    Write {
        offset: Offset,
        width: Width,
        value: Value,
    },
    Mem(MemWrite),
}

#[derive(Arbitrary, Debug)]
pub struct MmioInput {
    device: DeviceKind,
    ops: Vec<Op>,
}

/// The virtio-mmio transport's register interface (`BusDevice` read and
/// write): no access sequence may panic or leave the transport in a state
/// the specification does not allow.
pub fn mmio(data: &[u8]) {
    decode(data, |input: MmioInput| {
        let mem = Arc::new(guest_memory());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(virtio::Interrupt::new(IrqLine(irq)));
        let device: Box<dyn virtio::VirtioDevice> = match input.device {
            DeviceKind::Mock {
                mut queue_sizes,
                features,
                mut config,
                activate_ok,
                reset_ok,
            } => {
                queue_sizes.truncate(4);
                config.truncate(256);
                Box::new(MockDevice {
                    queue_sizes,
                    features,
                    config,
                    activate_ok,
                    reset_ok,
                    active: false,
                })
            }
            DeviceKind::Rng => Box::new(rng::Rng::new()),
            DeviceKind::Balloon {
                stats,
                deflate_on_oom,
            } => {
                let config = vmm::config::BalloonConfig {
                    amount_mib: 1,
                    deflate_on_oom,
                    stats_polling_interval_s: u16::from(stats),
                };
                let shared = balloon::SharedBalloon::new(&config, MEM_END >> 20).unwrap();
                Box::new(balloon::Balloon::new(shared))
            }
        };
        // Invalid queue sizes are the VMM's own configuration error.
        let Ok(mut transport) = mmio::MmioTransport::new(device, mem.clone(), interrupt) else {
            return;
        };
        for op in input.ops.iter().take(512) {
            match *op {
                Op::Read { offset, width } => {
                    let mut buf = [0xa5u8; 8];
                    transport.read(offset.get(), &mut buf[..width.get()]);
                }
                Op::Write {
                    offset,
                    width,
                    value,
                } => {
                    let bytes = value.get().to_le_bytes();
                    transport.write(offset.get(), &bytes[..width.get()]);
                }
                Op::Mem(ref w) => w.apply(&mem),
            }
            let mut reg = [0u8; 4];
            transport.read(0x00, &mut reg);
            assert_eq!(u32::from_le_bytes(reg), MAGIC_VALUE);
            transport.read(0x70, &mut reg);
            let status = u32::from_le_bytes(reg);
            assert_eq!(status & !STATUS_BITS, 0, "status {status:#x}");
        }
        // Dropping the transport stops the device's worker, if any.
    });
}

// ---------------------------------------------------------------- guest protocol

/// One frame of a stream a peer of the guest agent protocol sends: the
/// declared length is the body's or anything at all.
#[derive(Debug, Arbitrary)]
struct PeerFrame {
    lie_about_length: Option<u32>,
    body: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct PeerStream {
    /// Bytes per read (0 taken as 1).
    read_size: u16,
    frames: Vec<PeerFrame>,
}

/// The guest agent protocol's decoder (`stratum_guest::FrameDecoder`), as
/// the node agent runs it on what a guest sends and the guest agent on
/// what arrives on its port: any bytes in any chunking end in messages or a
/// clean error, the decoder never asks for more than one frame, and every
/// message decoded encodes back to the same message.
pub fn guest_protocol(data: &[u8]) {
    use prost::Message;
    use stratum_guest::proto::{GuestMessage, HostMessage};
    use stratum_guest::{FrameDecoder, HEADER_LEN, MAX_FRAME};
    decode(data, |input: PeerStream| {
        let mut stream = Vec::new();
        for frame in &input.frames {
            let len = frame
                .lie_about_length
                .unwrap_or(u32::try_from(frame.body.len()).unwrap_or(u32::MAX));
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend_from_slice(&frame.body);
        }
        let read_size = usize::from(input.read_size.max(1));
        fn run<M: Message + Default + PartialEq + std::fmt::Debug>(
            stream: &[u8],
            read_size: usize,
        ) -> u64 {
            let mut decoder = FrameDecoder::new();
            let mut rest = stream;
            let mut frames = 0;
            while !rest.is_empty() {
                let wanted = decoder.wanted();
                assert!(wanted <= HEADER_LEN + MAX_FRAME, "wants {wanted}");
                let n = wanted.min(read_size).min(rest.len());
                if decoder.push(&rest[..n]).is_err() {
                    return frames;
                }
                rest = &rest[n..];
                match decoder.next_message::<M>() {
                    Ok(Some(message)) => {
                        frames += 1;
                        let again = stratum_guest::encode(&message).expect("re-encodes");
                        assert_eq!(M::decode(&again[HEADER_LEN..]).ok(), Some(message));
                    }
                    Ok(None) => {}
                    Err(_) => return frames + 1,
                }
            }
            frames
        }
        let framed =
            run::<GuestMessage>(&stream, read_size) + run::<HostMessage>(&stream, read_size);
        COMPLETED.set(COMPLETED.get() + framed);
    });
}

/// A harness: runs one fuzzer input.
pub type Harness = fn(&[u8]);

// ---------------------------------------------------------------- mmds

/// What a guest sends the metadata service.
#[derive(Arbitrary, Debug)]
pub struct MmdsInput {
    v2: bool,
    /// HTTP request heads, as a connection would hand them over.
    requests: Vec<Vec<u8>>,
    /// Frames the guest transmits (Ethernet, no virtio header); those
    /// the stack does not claim are skipped, as they would go to the TAP.
    frames: Vec<Vec<u8>>,
}

/// The metadata service: `mmds::http::answer` on request heads, then the
/// network stack on frames, its replies drained. Nothing may panic, and
/// no reply frame may exceed an Ethernet frame of the guest's MTU.
pub fn mmds(data: &[u8]) {
    use vmm::mmds::{http, stack::MmdsStack, stack::DEFAULT_IPV4, Mmds, MmdsVersion};
    decode(data, |input: MmdsInput| {
        let mmds = Mmds::new(4096);
        {
            let mut store = mmds.lock();
            let version = if input.v2 {
                MmdsVersion::V2
            } else {
                MmdsVersion::V1
            };
            store.configure(version, false);
            let _ =
                store.put(serde_json::json!({"latest": {"meta-data": {"ami-id": "a"}}, "n": 1}));
        }
        for request in &input.requests {
            let answer = http::answer(&mmds, request);
            let _ = answer.to_bytes();
            COMPLETED.set(COMPLETED.get() + 1);
        }
        let mut stack = MmdsStack::new(mmds, DEFAULT_IPV4, 1);
        for frame in &input.frames {
            if stack.is_mmds_frame(frame) {
                stack.handle_frame(frame);
            }
            while let Some(reply) = stack.next_frame() {
                assert!(reply.len() <= 1514, "a reply of {} bytes", reply.len());
            }
        }
        stack.poll();
    });
}

/// The harnesses by fuzz target name.
pub const TARGETS: &[(&str, Harness)] = &[
    ("virtio_rng", rng),
    ("virtio_balloon", balloon),
    ("virtio_block", block),
    ("virtio_net_tx", net_tx),
    ("virtio_net_rx", net_rx),
    ("virtio_mmio", mmio),
    ("virtio_vsock", vsock),
    ("guest_protocol", guest_protocol),
    ("mmds", mmds),
];
