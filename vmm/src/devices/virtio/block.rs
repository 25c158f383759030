//! virtio-blk backed by a raw image file (virtio 1.2, section 5.2).
//!
//! One request queue. Each request is a device-readable header (type,
//! reserved, sector), the data (device-readable for writes, discard and
//! write-zeroes, device-writable for reads and GET_ID) and a
//! device-writable status byte, the last byte of the chain.
//!
//! Data moves with positioned reads and writes (pread/pwrite) straight
//! between the image and guest memory: each data buffer that lies in one
//! guest memory region (all of them on a VM whose buffers do not cross a
//! region boundary) is handed to the kernel as it is. A buffer that
//! straddles two regions goes through a bounce buffer of at most
//! [`SIZE_MAX`] bytes, so a guest can never make the worker allocate more.
//!
//! Writes go to the host's page cache: the device offers
//! VIRTIO_BLK_F_FLUSH, and a flush completes only after fdatasync(2). A
//! driver that does not accept FLUSH gets write-through instead (each
//! write, discard and write-zeroes is followed by fdatasync), as the
//! specification asks.
//!
//! Read-write drives also offer VIRTIO_BLK_F_DISCARD and
//! VIRTIO_BLK_F_WRITE_ZEROES. Their requests carry up to
//! [`MAX_DISCARD_SEG`] / [`MAX_WRITE_ZEROES_SEG`] 16-byte ranges (le64
//! sector, le32 num_sectors, le32 flags). A discard punches a hole in the
//! image (fallocate PUNCH_HOLE|KEEP_SIZE; advisory, so a file system
//! without hole punching still completes it). A write-zeroes with the
//! unmap flag punches a hole too (holes read as zeroes); without it the
//! range stays allocated (fallocate ZERO_RANGE); either falls back to
//! writing zeroes where the file system supports neither.
//!
//! Each request is charged to the drive's rate limiter before it is carried
//! out: one op, and for a read or a write its data length in bytes. A
//! request the limiter holds back goes back to the available ring and the
//! queue waits for the limiter's timer (see [`crate::rate_limiter`]).
//!
//! The image can be swapped while the guest runs (`PATCH /drives/{id}`
//! with `path_on_host`, see [`SharedDisk`]): each request is carried out
//! on the image that was current when it was taken off the queue, the
//! configuration space shows the current image's capacity, and a running
//! driver gets a configuration-change interrupt.
//!
//! A request the device cannot carry out (a malformed chain, a host I/O
//! error, sectors beyond the capacity, a write to a read-only drive) ends
//! with VIRTIO_BLK_S_IOERR, or VIRTIO_BLK_S_UNSUPP for an unknown type or
//! a discard/write-zeroes range with flags it does not allow; the device
//! goes on with the next one. A request without a writable status byte
//! cannot be answered and is completed with used length 0.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::vstate::memory::GuestMemoryMmap;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions, VolatileSlice};

use super::worker::Worker;
use super::{
    chain_is_well_formed, expect_queues, read_config_bytes, signal_used, stop_worker,
    ActivateError, ActiveQueue, Interrupt, SharedMemory, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};
use crate::rate_limiter::SharedRateLimiter;
use crate::seccomp::ThreadKind;

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// The most bytes in one data descriptor (config `size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// The most data descriptors in one request (config `seg_max`): the queue
/// less the header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// The status byte the device writes last (virtio 1.1, 5.2.6): the
/// bindings' u32 values as the byte the driver reads, checked at build time.
const STATUS_OK: u8 = 0;
const STATUS_IOERR: u8 = 1;
const STATUS_UNSUPP: u8 = 2;
const _: () = assert!(
    STATUS_OK as u32 == VIRTIO_BLK_S_OK
        && STATUS_IOERR as u32 == VIRTIO_BLK_S_IOERR
        && STATUS_UNSUPP as u32 == VIRTIO_BLK_S_UNSUPP
);
/// Header: le32 type, le32 reserved, le64 sector.
const HEADER_LEN: usize = 16;
/// The most sectors in one discard range (config `max_discard_sectors`):
/// 2 GiB.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// The most ranges in one discard request (config `max_discard_seg`).
pub const MAX_DISCARD_SEG: u32 = 32;
/// Discard ranges should start and end on 4 KiB (config
/// `discard_sector_alignment`, in sectors): the page size of the host's
/// page cache and the block size of common file systems, below which a
/// punched hole frees nothing.
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// The most sectors in one write-zeroes range (config
/// `max_write_zeroes_sectors`): 2 GiB, which the write fallback writes in
/// [`SIZE_MAX`] pieces.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
/// The most ranges in one write-zeroes request (config
/// `max_write_zeroes_seg`). Linux sends one.
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// A discard or write-zeroes range: le64 sector, le32 num_sectors, le32
/// flags.
const RANGE_LEN: usize = 16;
/// virtio_blk_config up to `write_zeroes_may_unmap` and its padding
/// (virtio 1.2, 5.2.4; offsets as in virtio_bindings).
const CONFIG_LEN: usize = 60;
const CONFIG_MAX_DISCARD_SECTORS: usize = 36;
const CONFIG_MAX_DISCARD_SEG: usize = 40;
const CONFIG_DISCARD_SECTOR_ALIGNMENT: usize = 44;
const CONFIG_MAX_WRITE_ZEROES_SECTORS: usize = 48;
const CONFIG_MAX_WRITE_ZEROES_SEG: usize = 52;
const CONFIG_WRITE_ZEROES_MAY_UNMAP: usize = 56;

/// The open image and what the device tells the driver about it.
pub struct Disk {
    file: File,
    /// Size in 512-byte sectors; a partial last sector is not exposed.
    capacity: u64,
    read_only: bool,
    /// GET_ID answer: at most 20 bytes, NUL-padded.
    id: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the serial {0:?} is longer than {VIRTIO_BLK_ID_BYTES} bytes")]
    SerialTooLong(String),
}

impl Disk {
    /// Opens `path` read-write, or read-only (O_RDONLY) for a read-only
    /// drive: a regular file or a block device (the size comes from
    /// seeking to the end), never a pipe (see `image_file`).
    pub fn open(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Self, DiskError> {
        let file = crate::image_file::open(path, !read_only)?;
        Self::from_file(file, read_only, serial)
    }

    pub fn from_file(
        mut file: File,
        read_only: bool,
        serial: Option<&str>,
    ) -> Result<Self, DiskError> {
        let size = file.seek(SeekFrom::End(0))?;
        Self::with_capacity(file, size / SECTOR_SIZE, read_only, serial)
    }

    fn with_capacity(
        file: File,
        capacity: u64,
        read_only: bool,
        serial: Option<&str>,
    ) -> Result<Self, DiskError> {
        let mut disk = Self {
            file,
            capacity,
            read_only,
            id: [0; VIRTIO_BLK_ID_BYTES as usize],
        };
        if let Some(serial) = serial {
            disk.set_serial(serial)?;
        }
        Ok(disk)
    }

    fn set_serial(&mut self, serial: &str) -> Result<(), DiskError> {
        let bytes = serial.as_bytes();
        if bytes.len() > self.id.len() {
            return Err(DiskError::SerialTooLong(serial.to_string()));
        }
        self.id = [0; VIRTIO_BLK_ID_BYTES as usize];
        self.id[..bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Opens `path` as this drive's next image: with the same access
    /// (read-only or read-write) and the same GET_ID answer, which is the
    /// drive's serial, not the file's. Through `image_file`, so a FIFO or
    /// a directory is refused at once, never waited on.
    pub fn reopen(&self, path: &Path) -> Result<Self, DiskError> {
        let file = crate::image_file::open(path, !self.read_only)?;
        let mut disk = Self::from_file(file, self.read_only, None)?;
        disk.id = self.id;
        Ok(disk)
    }

    /// The byte offset of `sector` on the image, if `len` bytes from there
    /// fit in the capacity and `len` is whole sectors.
    fn offset(&self, sector: u64, len: u64) -> Result<u64, Failure> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Failure::IoErr);
        }
        let end = sector
            .checked_add(len / SECTOR_SIZE)
            .ok_or(Failure::IoErr)?;
        if end > self.capacity {
            return Err(Failure::IoErr);
        }
        sector.checked_mul(SECTOR_SIZE).ok_or(Failure::IoErr)
    }
}

/// A drive's image as its device, its worker and the controller share it:
/// `PATCH /drives/{id}` with `path_on_host` swaps it while the guest runs
/// ([`SharedDisk::replace`]). The worker takes the current image for each
/// request, so a request under way finishes on the image it started on
/// and the next one uses the new image; the device reads its capacity
/// from here for the configuration space. Cheap to clone.
#[derive(Clone)]
pub struct SharedDisk {
    inner: Arc<Mutex<DiskSlot>>,
    /// Fixed for the drive's life: a swap reopens with the same access.
    read_only: bool,
}

struct DiskSlot {
    disk: Arc<Disk>,
    /// How many times the image was swapped: the device's part of the
    /// transport's ConfigGeneration, so a driver reading the 64-bit
    /// capacity in two halves across a swap sees the generation change
    /// and reads again (virtio 1.2, 2.5.1). Kept under the same lock as
    /// the image, so each register read sees both before or both after.
    generation: u32,
    /// The device's interrupt while the driver has it running: a swap
    /// then raises a configuration change. Before (and after a reset) the
    /// driver reads the capacity when it sets the device up, as
    /// Firecracker relies on too.
    interrupt: Option<Arc<Interrupt>>,
}

impl SharedDisk {
    pub fn new(disk: Arc<Disk>) -> Self {
        Self {
            read_only: disk.read_only,
            inner: Arc::new(Mutex::new(DiskSlot {
                disk,
                generation: 0,
                interrupt: None,
            })),
        }
    }

    /// The slot. Every change to it is a few assignments that cannot
    /// panic halfway, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, DiskSlot> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The image requests go to now.
    pub fn current(&self) -> Arc<Disk> {
        self.lock().disk.clone()
    }

    /// The current image's size in sectors.
    pub fn capacity(&self) -> u64 {
        self.lock().disk.capacity
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// How many times the image was swapped (wrapping).
    pub fn generation(&self) -> u32 {
        self.lock().generation
    }

    /// Makes the file at `path` the drive's image; returns its capacity
    /// in sectors. The file is opened first (see [`Disk::reopen`]): if that
    /// fails nothing changes. Requests under way finish on the old image,
    /// which is closed when the last of them is done. If the driver runs
    /// the device it gets a configuration-change interrupt and reads the
    /// new capacity, as with Firecracker's `update_disk_image`.
    pub fn replace(&self, path: &Path) -> Result<u64, DiskError> {
        let old = self.current();
        let new = Arc::new(old.reopen(path)?);
        let capacity = new.capacity;
        let mut slot = self.lock();
        slot.disk = new;
        slot.generation = slot.generation.wrapping_add(1);
        // Under the lock, so a reset that clears the interrupt is either
        // before (no interrupt) or after (the transport's reset then
        // acknowledges it).
        if let Some(interrupt) = &slot.interrupt {
            interrupt.signal_config_change();
        }
        Ok(capacity)
    }

    fn set_interrupt(&self, interrupt: Option<Arc<Interrupt>>) {
        self.lock().interrupt = interrupt;
    }
}

pub struct Block {
    disk: SharedDisk,
    /// The configuration space but for the capacity, which is the current
    /// image's (see [`Block::read_config`]).
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    worker: Option<Worker>,
    /// Meters the requests; shared with the controller, which updates it
    /// on `PATCH /drives/{id}`.
    limiter: SharedRateLimiter,
}

impl Block {
    pub fn new(disk: Disk, limiter: SharedRateLimiter) -> Self {
        // virtio_blk_config: le64 capacity, le32 size_max, le32 seg_max,
        // then (geometry, blk_size, topology, wce, num_queues: all 0, their
        // features are not offered) the discard and write-zeroes limits,
        // which a read-only drive, offering neither feature, leaves at 0.
        let mut config = [0u8; CONFIG_LEN];
        let mut put = |offset: usize, value: u32| {
            config[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        };
        put(8, SIZE_MAX);
        put(12, SEG_MAX);
        if !disk.read_only {
            put(CONFIG_MAX_DISCARD_SECTORS, MAX_DISCARD_SECTORS);
            put(CONFIG_MAX_DISCARD_SEG, MAX_DISCARD_SEG);
            put(CONFIG_DISCARD_SECTOR_ALIGNMENT, DISCARD_SECTOR_ALIGNMENT);
            put(CONFIG_MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SECTORS);
            put(CONFIG_MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SEG);
            // A write-zeroes with the unmap flag may punch a hole.
            config[CONFIG_WRITE_ZEROES_MAY_UNMAP] = 1;
        }
        Self {
            disk: SharedDisk::new(Arc::new(disk)),
            config,
            acked_features: 0,
            worker: None,
            limiter,
        }
    }

    /// The drive's image, which the controller swaps on `PATCH
    /// /drives/{id}`.
    pub fn disk(&self) -> SharedDisk {
        self.disk.clone()
    }
}

/// A guest buffer: start and length.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// Why a request fails; each maps to the status the driver gets.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    IoErr,
    Unsupported,
}

impl Failure {
    fn status(&self) -> u8 {
        match self {
            Failure::IoErr => STATUS_IOERR,
            Failure::Unsupported => STATUS_UNSUPP,
        }
    }
}

/// A chain taken apart: readable buffers, writable data buffers, status.
struct Parsed {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

/// A well-formed request: its header decoded, its data buffers.
struct Request {
    kind: u32,
    sector: u64,
    /// Device-readable data after the header.
    data_in: Vec<Segment>,
    /// Device-writable data buffers (the status byte excluded).
    writable: Vec<Segment>,
}

impl Request {
    /// What the bandwidth bucket is charged: the data a read or a write
    /// moves, as in Firecracker. Flush, GET_ID, discard and write-zeroes
    /// cost one op and no bytes (their ranges are metadata).
    fn data_len(&self) -> u64 {
        match self.kind {
            VIRTIO_BLK_T_IN => total_len(&self.writable),
            VIRTIO_BLK_T_OUT => total_len(&self.data_in),
            _ => 0,
        }
    }
}

/// A request taken off the queue and checked as far as it can be without
/// carrying it out: what the rate limiter charges before it is.
enum Prepared {
    /// No status byte to answer in (a cut-short chain, a last descriptor
    /// that is not writable or outside guest memory): completed with used
    /// length 0.
    Unanswerable,
    Answerable {
        status_addr: GuestAddress,
        /// What to carry out, or why the request fails.
        request: Result<Request, Failure>,
    },
}

impl Prepared {
    /// The bytes to charge besides the one op every request costs.
    fn bytes(&self) -> u64 {
        match self {
            Prepared::Answerable {
                request: Ok(request),
                ..
            } => request.data_len(),
            _ => 0,
        }
    }
}

/// What the per-device worker keeps between requests.
struct Processor {
    /// The drive's image, taken afresh for each request: the controller
    /// may swap it between two.
    disk: SharedDisk,
    /// Write-through: the driver did not accept FLUSH.
    sync_each_write: bool,
    /// For buffers that straddle guest memory regions and for writing
    /// zeroes: grown on first use, to at most SIZE_MAX bytes.
    bounce: Vec<u8>,
    /// Meters the requests; None: unmetered (tests, fuzzing).
    limiter: Option<SharedRateLimiter>,
}

impl Processor {
    /// A processor on an image nobody swaps (tests, fuzzing).
    #[cfg(any(test, feature = "fuzz-hooks"))]
    fn new(disk: Arc<Disk>, acked_features: u64) -> Self {
        Self::sharing(SharedDisk::new(disk), acked_features)
    }

    fn sharing(disk: SharedDisk, acked_features: u64) -> Self {
        Self {
            disk,
            sync_each_write: acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0,
            bounce: Vec::new(),
            limiter: None,
        }
    }

    fn metered(mut self, limiter: SharedRateLimiter) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Completes every available request the rate limiter lets through;
    /// true if any was completed. The first request it holds back goes
    /// back to the available ring and processing stops: the worker calls
    /// again when the limiter's timer fires.
    fn process_queue(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let prepared = prepare(mem, chain);
            if let Some(limiter) = &self.limiter {
                if !limiter.consume(1, prepared.bytes()) {
                    queue.go_to_previous_position();
                    break;
                }
            }
            // Held for this request only: once the image is swapped, the
            // old one stays open just until the request under way is done.
            let disk = self.disk.current();
            let used_len = self.complete(mem, &disk, prepared);
            if queue.add_used(mem, head, used_len).is_err() {
                break;
            }
            used_any = true;
        }
        used_any
    }

    /// Carries out a prepared request and writes its status; returns the
    /// used length (bytes written to the driver's buffers, status
    /// included).
    fn complete(&mut self, mem: &GuestMemoryMmap, disk: &Disk, prepared: Prepared) -> u32 {
        let Prepared::Answerable {
            status_addr,
            request,
        } = prepared
        else {
            return 0;
        };
        let (status, data_written) = match request.and_then(|r| self.execute(mem, disk, &r)) {
            Ok(written) => (STATUS_OK, written),
            Err(failure) => (failure.status(), 0),
        };
        if mem.write_obj(status, status_addr).is_err() {
            return 0;
        }
        data_written.saturating_add(1)
    }

    /// Carries out a well-formed request on `disk`; returns the data bytes
    /// written to the driver's buffers.
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        request: &Request,
    ) -> Result<u32, Failure> {
        let Request {
            kind,
            sector,
            ref data_in,
            ref writable,
        } = *request;
        match kind {
            VIRTIO_BLK_T_IN => {
                if !data_in.is_empty() {
                    return Err(Failure::IoErr);
                }
                self.read(mem, disk, sector, writable)
            }
            VIRTIO_BLK_T_OUT => {
                if !writable.is_empty() {
                    return Err(Failure::IoErr);
                }
                self.write(mem, disk, sector, data_in).map(|()| 0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !data_in.is_empty() || !writable.is_empty() {
                    return Err(Failure::IoErr);
                }
                disk.file.sync_data().map_err(|_| Failure::IoErr)?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                if !data_in.is_empty() {
                    return Err(Failure::IoErr);
                }
                write_to_segments(mem, writable, &disk.id)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if !writable.is_empty() {
                    return Err(Failure::IoErr);
                }
                // The header's sector is unused: each range has its own.
                let op = if kind == VIRTIO_BLK_T_DISCARD {
                    RangeOp::Discard
                } else {
                    RangeOp::WriteZeroes
                };
                self.discard_or_write_zeroes(mem, disk, op, data_in)
                    .map(|()| 0)
            }
            _ => Err(Failure::Unsupported),
        }
    }

    fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        sector: u64,
        data: &[Segment],
    ) -> Result<u32, Failure> {
        let total = total_len(data);
        let mut offset = disk.offset(sector, total)?;
        for segment in data {
            match one_region(mem, *segment) {
                // The kernel copies straight into guest memory.
                Some(slice) => pread_exact(&disk.file, &slice, offset),
                // Across a region boundary: through the bounce buffer.
                None => {
                    let buf = bounce(&mut self.bounce, segment.len);
                    disk.file
                        .read_exact_at(buf, offset)
                        .and_then(|()| mem.write_slice(buf, segment.addr).map_err(io::Error::other))
                }
            }
            .map_err(|_| Failure::IoErr)?;
            offset += u64::from(segment.len);
        }
        // At most SEG_MAX * SIZE_MAX bytes, which fits in u32 less one.
        u32::try_from(total).map_err(|_| Failure::IoErr)
    }

    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        sector: u64,
        data: &[Segment],
    ) -> Result<(), Failure> {
        if disk.read_only {
            return Err(Failure::IoErr);
        }
        let mut offset = disk.offset(sector, total_len(data))?;
        for segment in data {
            match one_region(mem, *segment) {
                Some(slice) => pwrite_all(&disk.file, &slice, offset),
                None => {
                    let buf = bounce(&mut self.bounce, segment.len);
                    mem.read_slice(buf, segment.addr)
                        .map_err(io::Error::other)
                        .and_then(|()| disk.file.write_all_at(buf, offset))
                }
            }
            .map_err(|_| Failure::IoErr)?;
            offset += u64::from(segment.len);
        }
        self.sync_if_write_through(disk)
    }

    fn sync_if_write_through(&self, disk: &Disk) -> Result<(), Failure> {
        if self.sync_each_write {
            disk.file.sync_data().map_err(|_| Failure::IoErr)?;
        }
        Ok(())
    }

    /// A DISCARD or WRITE_ZEROES request whose ranges are `data`. Every
    /// range is checked before any is carried out, so a bad request changes
    /// nothing.
    fn discard_or_write_zeroes(
        &mut self,
        mem: &GuestMemoryMmap,
        disk: &Disk,
        op: RangeOp,
        data: &[Segment],
    ) -> Result<(), Failure> {
        // Not offered on a read-only drive, and a write all the same.
        if disk.read_only {
            return Err(Failure::IoErr);
        }
        let (max_seg, max_sectors) = match op {
            RangeOp::Discard => (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS),
            RangeOp::WriteZeroes => (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS),
        };
        let len = total_len(data);
        if len == 0
            || !len.is_multiple_of(RANGE_LEN as u64)
            || len / RANGE_LEN as u64 > max_seg.into()
        {
            return Err(Failure::IoErr);
        }
        // At most max_seg * 16 bytes.
        let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| Failure::IoErr)?];
        let rest = read_from_segments(mem, data, &mut bytes)?;
        debug_assert!(rest.is_empty());
        let mut ranges = Vec::with_capacity(bytes.len() / RANGE_LEN);
        for raw in bytes.chunks_exact(RANGE_LEN) {
            let sector = u64::from_le_bytes(raw[..8].try_into().unwrap_or_default());
            let num_sectors = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default());
            // Unknown flags, and unmap on a discard: UNSUPP (virtio 1.2,
            // 5.2.6.2).
            let allowed = match op {
                RangeOp::Discard => 0,
                RangeOp::WriteZeroes => VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
            };
            if flags & !allowed != 0 {
                return Err(Failure::Unsupported);
            }
            if num_sectors > max_sectors {
                return Err(Failure::IoErr);
            }
            let len = u64::from(num_sectors) * SECTOR_SIZE;
            let offset = disk.offset(sector, len)?;
            let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            ranges.push((offset, len, unmap));
        }
        for (offset, len, unmap) in ranges {
            if len == 0 {
                continue;
            }
            match op {
                RangeOp::Discard => match fallocate(&disk.file, PUNCH_HOLE, offset, len) {
                    // Discard is advisory: a file system that cannot punch
                    // holes keeps the data, which is allowed.
                    Ok(()) | Err(FallocateError::Unsupported) => {}
                    Err(FallocateError::Failed) => return Err(Failure::IoErr),
                },
                RangeOp::WriteZeroes => {
                    // With unmap the range may be deallocated (holes read
                    // as zeroes); without it, it must stay allocated.
                    let mode = if unmap { PUNCH_HOLE } else { ZERO_RANGE };
                    match fallocate(&disk.file, mode, offset, len) {
                        Ok(()) => {}
                        Err(FallocateError::Unsupported) => {
                            self.write_zeroes(disk, offset, len)?;
                        }
                        Err(FallocateError::Failed) => return Err(Failure::IoErr),
                    }
                }
            }
        }
        self.sync_if_write_through(disk)
    }

    /// Writes `len` zero bytes at `offset`, at most SIZE_MAX at a time.
    fn write_zeroes(&mut self, disk: &Disk, mut offset: u64, len: u64) -> Result<(), Failure> {
        let end = offset + len;
        while offset < end {
            // At most SIZE_MAX at a time.
            let n = u32::try_from(end - offset).map_or(SIZE_MAX, |left| left.min(SIZE_MAX));
            let buf = bounce(&mut self.bounce, n);
            buf.fill(0);
            disk.file
                .write_all_at(buf, offset)
                .map_err(|_| Failure::IoErr)?;
            offset += u64::from(n);
        }
        Ok(())
    }
}

/// What a DISCARD or WRITE_ZEROES request does to its ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeOp {
    Discard,
    WriteZeroes,
}

const PUNCH_HOLE: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: libc::c_int = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

enum FallocateError {
    /// The file system (or file type) does not support `mode`.
    Unsupported,
    /// Any other error.
    Failed,
}

/// fallocate(2) with `mode` on `len` bytes at `offset`, retried on EINTR.
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> Result<(), FallocateError> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(FallocateError::Failed);
    };
    loop {
        // SAFETY: fallocate(2) reads no memory of ours; it acts on a file
        // descriptor that `file` keeps open for the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Err(FallocateError::Unsupported),
            _ => return Err(FallocateError::Failed),
        }
    }
}

/// `segment` as one slice of guest memory, if it lies in one region
/// (`parse` has checked that it lies in guest memory).
/// A slice of guest memory, with its part of the dirty-page bitmap.
type GuestSlice<'a> = VolatileSlice<'a, vm_memory::bitmap::BS<'a, vm_memory::bitmap::AtomicBitmap>>;

fn one_region(mem: &GuestMemoryMmap, segment: Segment) -> Option<GuestSlice<'_>> {
    // Called by its path: importing `GuestMemoryBackend` would make
    // `check_range` (in it and in `GuestMemory`) ambiguous.
    vm_memory::GuestMemoryBackend::get_slice(mem, segment.addr, segment.len as usize).ok()
}

/// The file offset `offset + done` as an off_t.
fn file_position(offset: u64, done: usize) -> io::Result<libc::off_t> {
    offset
        .checked_add(done as u64)
        .and_then(|p| libc::off_t::try_from(p).ok())
        .ok_or_else(|| io::ErrorKind::InvalidInput.into())
}

/// Fills `slice` (guest memory) from `file` at `offset` with pread(2),
/// straight from the page cache into guest memory. Short reads are
/// continued; end of file before the slice is full is an error.
fn pread_exact<B: BitmapSlice>(
    file: &File,
    slice: &VolatileSlice<'_, B>,
    offset: u64,
) -> io::Result<()> {
    let guard = slice.ptr_guard_mut();
    let (ptr, len) = (guard.as_ptr(), guard.len());
    let mut done = 0usize;
    while done < len {
        let position = file_position(offset, done)?;
        // SAFETY: `ptr` and `len` describe the slice, which lies inside one
        // region of mapped, writable guest memory that `guard` (and the
        // `GuestMemoryMmap` the slice borrows) keeps mapped for this call;
        // `done < len`, so `ptr + done` and the `len - done` bytes after it
        // stay inside the slice. The kernel writes into that memory; no
        // Rust reference to it exists, so the guest touching the same bytes
        // at the same time cannot break Rust's aliasing rules (it only sees
        // a torn buffer, as with DMA on real hardware).
        let n =
            unsafe { libc::pread(file.as_raw_fd(), ptr.add(done).cast(), len - done, position) };
        match n {
            n if n < 0 => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            // End of file: the image shrank under the device.
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            // 0 < n <= len - done.
            n => done += n as usize,
        }
    }
    // The kernel's writes bypass the slice's dirty-page tracking.
    slice.bitmap().mark_dirty(0, len);
    Ok(())
}

/// Writes all of `slice` (guest memory) to `file` at `offset` with
/// pwrite(2), straight from guest memory. Short writes are continued.
fn pwrite_all<B: BitmapSlice>(
    file: &File,
    slice: &VolatileSlice<'_, B>,
    offset: u64,
) -> io::Result<()> {
    let guard = slice.ptr_guard();
    let (ptr, len) = (guard.as_ptr(), guard.len());
    let mut done = 0usize;
    while done < len {
        let position = file_position(offset, done)?;
        // SAFETY: `ptr` and `len` describe the slice, which lies inside one
        // region of mapped guest memory that `guard` (and the
        // `GuestMemoryMmap` the slice borrows) keeps mapped for this call;
        // `done < len`, so `ptr + done` and the `len - done` bytes after it
        // stay inside the slice. The kernel only reads that memory, and no
        // Rust reference to it exists.
        let n =
            unsafe { libc::pwrite(file.as_raw_fd(), ptr.add(done).cast(), len - done, position) };
        match n {
            n if n < 0 => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => done += n as usize,
        }
    }
    Ok(())
}

/// Fuzzing entry point (vmm/fuzz): completes every available request of
/// `queue` on `disk` as the device's worker does, with the driver having
/// accepted `acked_features`. Not part of the device's API: built only
/// with the `fuzz-hooks` feature, which vmm/fuzz enables.
#[cfg(feature = "fuzz-hooks")]
#[doc(hidden)]
pub fn fuzz_process_queue(
    disk: Arc<Disk>,
    acked_features: u64,
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
) -> bool {
    Processor::new(disk, acked_features).process_queue(mem, queue)
}

fn bounce(buffer: &mut Vec<u8>, len: u32) -> &mut [u8] {
    // `len` is at most SIZE_MAX (checked in `parse`).
    let len = len as usize;
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    &mut buffer[..len]
}

fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// Takes a chain apart: where its status byte goes and the request it
/// carries, or why it cannot be carried out. Reads guest memory only.
fn prepare(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Prepared {
    if !chain_is_well_formed(&chain) {
        // A cut-short chain: its real end, and so its status byte, is
        // unknown.
        return Prepared::Unanswerable;
    }
    let descriptors: Vec<_> = chain.collect();
    // The status byte is the last byte of the last descriptor, which must
    // be device-writable and inside guest memory.
    let Some(last) = descriptors.last() else {
        return Prepared::Unanswerable;
    };
    if !last.is_write_only() || last.len() == 0 {
        return Prepared::Unanswerable;
    }
    let status_addr = match last.addr().0.checked_add(u64::from(last.len()) - 1) {
        Some(a) if mem.check_range(GuestAddress(a), 1, Permissions::Write) => GuestAddress(a),
        _ => return Prepared::Unanswerable,
    };
    Prepared::Answerable {
        status_addr,
        request: parse(mem, &descriptors).and_then(|parsed| decode(mem, parsed)),
    }
}

/// Reads the header of a parsed chain.
fn decode(mem: &GuestMemoryMmap, parsed: Parsed) -> Result<Request, Failure> {
    let mut header = [0u8; HEADER_LEN];
    let data_in = read_from_segments(mem, &parsed.readable, &mut header)?;
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    Ok(Request {
        kind,
        sector,
        data_in,
        writable: parsed.writable,
    })
}

/// Splits a chain (whose last byte is the status) into readable and
/// writable data buffers, checking what does not depend on the request
/// type: every buffer in guest memory, readable buffers before writable
/// ones, at most SEG_MAX data buffers of at most SIZE_MAX bytes each.
fn parse(
    mem: &GuestMemoryMmap,
    descriptors: &[virtio_queue::desc::split::Descriptor],
) -> Result<Parsed, Failure> {
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for (index, desc) in descriptors.iter().enumerate() {
        let mut len = desc.len();
        if index + 1 == descriptors.len() {
            // The status byte is not data.
            len = len.saturating_sub(1);
        }
        if len == 0 {
            continue;
        }
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(desc.addr(), len as usize, access) {
            return Err(Failure::IoErr);
        }
        let segment = Segment {
            addr: desc.addr(),
            len,
        };
        if desc.is_write_only() {
            writable.push(segment);
        } else if writable.is_empty() {
            readable.push(segment);
        } else {
            // A device-readable buffer after a writable one (virtio 2.6.4.2).
            return Err(Failure::IoErr);
        }
    }
    // Sizes are limited per buffer and in count; the header's buffers are
    // held to the same limits.
    let oversized = readable.iter().chain(&writable).any(|s| s.len > SIZE_MAX);
    if oversized || readable.len() + writable.len() > SEG_MAX as usize + 1 {
        return Err(Failure::IoErr);
    }
    Ok(Parsed { readable, writable })
}

/// Fills `out` from the start of `segments`; returns the segments (or
/// parts of them) left after it.
fn read_from_segments(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    out: &mut [u8],
) -> Result<Vec<Segment>, Failure> {
    let mut filled = 0usize;
    let mut rest = Vec::new();
    for segment in segments {
        let wanted = out.len() - filled;
        // At most the segment's length, so within u32.
        let take = u32::try_from(wanted).map_or(segment.len, |w| w.min(segment.len));
        if take > 0 {
            let end = filled + take as usize;
            mem.read_slice(&mut out[filled..end], segment.addr)
                .map_err(|_| Failure::IoErr)?;
            filled = end;
        }
        if take < segment.len {
            rest.push(Segment {
                addr: segment
                    .addr
                    .0
                    .checked_add(u64::from(take))
                    .map(GuestAddress)
                    .ok_or(Failure::IoErr)?,
                len: segment.len - take,
            });
        }
    }
    if filled < out.len() {
        // The header is shorter than 16 bytes.
        return Err(Failure::IoErr);
    }
    Ok(rest)
}

/// Writes as much of `data` as the segments hold; returns the bytes written.
fn write_to_segments(
    mem: &GuestMemoryMmap,
    segments: &[Segment],
    data: &[u8],
) -> Result<u32, Failure> {
    let mut written = 0usize;
    for segment in segments {
        let n = (data.len() - written).min(segment.len as usize);
        if n == 0 {
            break;
        }
        mem.write_slice(&data[written..written + n], segment.addr)
            .map_err(|_| Failure::IoErr)?;
        written += n;
    }
    // At most the chain's data buffers: SEG_MAX * SIZE_MAX, within u32.
    u32::try_from(written).map_err(|_| Failure::IoErr)
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX;
        if self.disk.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    /// The capacity is the current image's: a swap changes it while the
    /// driver runs (see [`SharedDisk::replace`]).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = self.config;
        config[..8].copy_from_slice(&self.disk.capacity().to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.disk.generation()
    }

    fn activate(
        &mut self,
        mem: SharedMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let [active] = expect_queues::<1>(queues)?;
        let mut queue = active.queue;
        let limiter = self.limiter.clone();
        let mut processor =
            Processor::sharing(self.disk.clone(), self.acked_features).metered(limiter.clone());
        let config_interrupt = interrupt.clone();
        let worker = Worker::spawn_metered(
            "virtio-blk",
            ThreadKind::Block,
            active.notify,
            limiter,
            move || {
                if processor.process_queue(&mem, &mut queue) {
                    signal_used(&mem, &mut queue, &interrupt);
                }
            },
        )
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        self.disk.set_interrupt(Some(config_interrupt));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.acked_features = 0;
        self.disk.set_interrupt(None);
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
    use std::fs::OpenOptions;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::tempfile::TempFile;

    use crate::rate_limiter::RateLimiterUpdate;
    use crate::vmm_config::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE
    const NEXT: u16 = 1; // VRING_DESC_F_NEXT

    const HEADER: u64 = 0x8000;
    const DATA: u64 = 0x9000;
    const STATUS: u64 = 0xc000;
    const SECTORS: u64 = 16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// An image of SECTORS sectors where byte i of sector s is s ^ i.
    fn image() -> TempFile {
        let file = TempFile::new().unwrap();
        let bytes: Vec<u8> = (0..SECTORS * SECTOR_SIZE)
            .map(|i| ((i / SECTOR_SIZE) as u8) ^ (i as u8))
            .collect();
        file.as_file().write_all_at(&bytes, 0).unwrap();
        file
    }

    fn disk(file: &TempFile, read_only: bool) -> Arc<Disk> {
        let f = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(file.as_path())
            .unwrap();
        Arc::new(Disk::from_file(f, read_only, Some("stratum-disk-0")).unwrap())
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HEADER)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Runs the chain `descs` through a device on `disk`; returns the
    /// used length and the status byte.
    fn run(mem: &GuestMemoryMmap, disk: Arc<Disk>, descs: &[RawDescriptor]) -> (u32, u8) {
        run_on(
            &mut Processor::new(disk, 1 << VIRTIO_BLK_F_FLUSH),
            mem,
            descs,
        )
    }

    /// [`run`] on a given processor, whose bounce buffer tells whether it
    /// was used.
    fn run_on(
        processor: &mut Processor,
        mem: &GuestMemoryMmap,
        descs: &[RawDescriptor],
    ) -> (u32, u8) {
        let vq = MockSplitQueue::new(mem, 16);
        vq.build_desc_chain(descs).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(processor.process_queue(mem, &mut queue));
        let used = vq.used();
        assert_eq!(used.idx().load(), 1, "the request completed");
        let len = used.ring().ref_at(0).unwrap().load().len();
        (len, mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn request(data_len: u32, data_flags: u16) -> Vec<RawDescriptor> {
        vec![
            desc(HEADER, HEADER_LEN as u32, 0, 0),
            desc(DATA, data_len, data_flags, 0),
            desc(STATUS, 1, WRITE, 0),
        ]
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

    fn unlimited() -> SharedRateLimiter {
        SharedRateLimiter::from_config(None).unwrap()
    }

    /// A limiter with these (size, refill_time) buckets.
    fn limiter(bandwidth: Option<(u64, u64)>, ops: Option<(u64, u64)>) -> SharedRateLimiter {
        let bucket = |(size, refill_time)| TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        };
        SharedRateLimiter::from_config(Some(&RateLimiterConfig {
            bandwidth: bandwidth.map(bucket),
            ops: ops.map(bucket),
        }))
        .unwrap()
    }

    /// `chains` one after the other in a descriptor table, each linked
    /// with NEXT flags, for `add_desc_chains`.
    fn linked(chains: &[Vec<RawDescriptor>]) -> Vec<RawDescriptor> {
        let mut table = Vec::new();
        for chain in chains {
            for (i, raw) in chain.iter().enumerate() {
                let d = SplitDescriptor::from(*raw);
                let index = (table.len() + 1) as u16;
                let (flags, next) = if i + 1 < chain.len() {
                    (d.flags() | NEXT, index)
                } else {
                    (d.flags() & !NEXT, 0)
                };
                table.push(desc(d.addr().0, d.len(), flags, next));
            }
        }
        table
    }

    /// Queues `count` reads of `len` bytes of sector 0; returns the queue.
    fn reads(
        mem: &GuestMemoryMmap,
        count: usize,
        len: u32,
    ) -> (MockSplitQueue<'_, GuestMemoryMmap>, Queue) {
        header(mem, VIRTIO_BLK_T_IN, 0);
        let vq = MockSplitQueue::new(mem, 16);
        let chains: Vec<_> = (0..count).map(|_| request(len, WRITE)).collect();
        vq.add_desc_chains(&linked(&chains), 0).unwrap();
        let queue: Queue = vq.create_queue().unwrap();
        (vq, queue)
    }

    /// Lifts every bucket of a blocked `limiter` and handles its timer.
    fn lift(limiter: &SharedRateLimiter) {
        let off = TokenBucketConfig::default();
        let update = RateLimiterUpdate::from_config(&RateLimiterConfig {
            bandwidth: Some(off),
            ops: Some(off),
        })
        .unwrap();
        assert!(limiter.is_blocked());
        limiter.update(update);
        assert!(super::super::worker::wait(&[limiter.timer_fd()]).is_some());
        assert!(limiter.on_timer());
    }

    #[test]
    fn the_bandwidth_limit_stops_the_queue_and_it_resumes_where_it_stopped() {
        let mem = memory();
        let file = image();
        // 8 KiB per hour: two 4 KiB reads, then the third waits.
        let limiter = limiter(Some((8192, 3_600_000)), None);
        let (vq, mut queue) = reads(&mem, 3, 4096);
        let mut processor =
            Processor::new(disk(&file, false), 1 << VIRTIO_BLK_F_FLUSH).metered(limiter.clone());
        assert!(processor.process_queue(&mem, &mut queue));
        assert_eq!(vq.used().idx().load(), 2);
        assert!(limiter.is_blocked());
        // A notification while blocked completes nothing.
        assert!(!processor.process_queue(&mem, &mut queue));
        assert_eq!(vq.used().idx().load(), 2);
        lift(&limiter);
        assert!(processor.process_queue(&mem, &mut queue));
        assert_eq!(vq.used().idx().load(), 3, "the held request, once");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
    }

    #[test]
    fn every_request_costs_one_op() {
        let mem = memory();
        let file = image();
        let limiter = limiter(None, Some((2, 3_600_000)));
        let mut processor =
            Processor::new(disk(&file, false), 1 << VIRTIO_BLK_F_FLUSH).metered(limiter.clone());
        // A flush, a flush with a data buffer (IOERR) and a chain without
        // a status byte: whatever becomes of them, each costs an op, so two
        // pass and the third waits.
        let vq = MockSplitQueue::new(&mem, 16);
        let chains = linked(&[
            vec![desc(HEADER, 16, 0, 0), desc(STATUS, 1, WRITE, 0)],
            vec![
                desc(HEADER, 16, 0, 0),
                desc(DATA, 20, WRITE, 0),
                desc(STATUS, 1, WRITE, 0),
            ],
            vec![desc(HEADER, 16, 0, 0)],
        ]);
        vq.add_desc_chains(&chains, 0).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        assert!(processor.process_queue(&mem, &mut queue));
        assert_eq!(vq.used().idx().load(), 2);
        lift(&limiter);
        assert!(processor.process_queue(&mem, &mut queue));
        assert_eq!(vq.used().idx().load(), 3);
    }

    #[test]
    fn a_request_larger_than_the_bucket_goes_through_when_it_is_full() {
        let mem = memory();
        let file = image();
        // A 1 KiB bucket refilling in 20 ms, and 4 KiB reads: each waits
        // for a full bucket, passes, and leaves a 3 KiB debt (60 ms).
        let limiter = limiter(Some((1024, 20)), None);
        let (vq, mut queue) = reads(&mem, 2, 4096);
        let mut processor =
            Processor::new(disk(&file, false), 1 << VIRTIO_BLK_F_FLUSH).metered(limiter.clone());
        let start = std::time::Instant::now();
        assert!(processor.process_queue(&mem, &mut queue));
        assert_eq!(vq.used().idx().load(), 1, "the first read passed at once");
        assert!(limiter.is_blocked());
        // As the worker does: wait for the timer, process again.
        while vq.used().idx().load() < 2 {
            assert!(super::super::worker::wait(&[limiter.timer_fd()]).is_some());
            if limiter.on_timer() {
                processor.process_queue(&mem, &mut queue);
            }
        }
        // The debt (60 ms) and a full bucket (20 ms) later.
        assert!(
            start.elapsed() >= std::time::Duration::from_millis(75),
            "{:?}",
            start.elapsed()
        );
    }

    fn config_u32(block: &Block, offset: u64) -> u32 {
        let mut value = [0u8; 4];
        block.read_config(offset, &mut value);
        u32::from_le_bytes(value)
    }

    #[test]
    fn config_space_and_features() {
        let file = image();
        let block = Block::new(Disk::open(file.as_path(), true, None).unwrap(), unlimited());
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), SECTORS);
        assert_eq!(config_u32(&block, 8), SIZE_MAX);
        assert_eq!(config_u32(&block, 12), SEG_MAX);
        assert_ne!(block.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(block.features() & VIRTIO_F_VERSION_1, 0);
        // A read-only drive offers neither discard nor write-zeroes, and
        // their limits read as 0.
        let range_ops = 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        assert_eq!(block.features() & range_ops, 0);
        let mut tail = [0xffu8; 32];
        block.read_config(36, &mut tail);
        assert_eq!(tail, [0; 32]);

        let rw = Block::new(
            Disk::open(file.as_path(), false, None).unwrap(),
            unlimited(),
        );
        assert_eq!(rw.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(rw.features() & range_ops, range_ops);
        // virtio 1.2, 5.2.4: max_discard_sectors at 36 up to
        // write_zeroes_may_unmap at 56.
        assert_eq!(config_u32(&rw, 36), MAX_DISCARD_SECTORS);
        assert_eq!(config_u32(&rw, 40), MAX_DISCARD_SEG);
        assert_eq!(config_u32(&rw, 44), 8);
        assert_eq!(config_u32(&rw, 48), MAX_WRITE_ZEROES_SECTORS);
        assert_eq!(config_u32(&rw, 52), MAX_WRITE_ZEROES_SEG);
        let mut may_unmap = [0u8; 4];
        rw.read_config(56, &mut may_unmap);
        assert_eq!(may_unmap, [1, 0, 0, 0]);
        // Past the end: zeroes.
        assert_eq!(config_u32(&rw, 60), 0);
    }

    #[test]
    fn serial_longer_than_20_bytes_is_refused() {
        let file = image();
        assert!(Disk::open(file.as_path(), false, Some(&"x".repeat(20))).is_ok());
        assert!(matches!(
            Disk::open(file.as_path(), false, Some(&"x".repeat(21))),
            Err(DiskError::SerialTooLong(_))
        ));
    }

    #[test]
    fn reads_sectors() {
        let mem = memory();
        let file = image();
        header(&mem, VIRTIO_BLK_T_IN, 3);
        let (len, status) = run(&mem, disk(&file, false), &request(1024, WRITE));
        assert_eq!((len, status), (1025, OK));
        let mut data = [0u8; 1024];
        mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert_eq!(data[0], 3);
        assert_eq!(data[5], 3 ^ 5);
        assert_eq!(data[512], 4);
    }

    #[test]
    fn writes_sectors() {
        let mem = memory();
        let file = image();
        header(&mem, VIRTIO_BLK_T_OUT, 15);
        mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        let (len, status) = run(&mem, disk(&file, false), &request(512, 0));
        assert_eq!((len, status), (1, OK));
        let mut data = [0u8; 512];
        file.as_file().read_exact_at(&mut data, 15 * 512).unwrap();
        assert_eq!(data, [0xab; 512]);
    }

    #[test]
    fn header_data_and_status_may_share_descriptors() {
        let mem = memory();
        let file = image();
        header(&mem, VIRTIO_BLK_T_IN, 1);
        // Data and status in one writable buffer right after the header.
        let descs = [
            desc(HEADER, HEADER_LEN as u32, 0, 0),
            desc(STATUS - 512, 513, WRITE, 0),
        ];
        assert_eq!(run(&mem, disk(&file, false), &descs), (513, OK));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS - 512)).unwrap(), 1);
    }

    #[test]
    fn flushes() {
        let mem = memory();
        let file = image();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let descs = [
            desc(HEADER, HEADER_LEN as u32, 0, 0),
            desc(STATUS, 1, WRITE, 0),
        ];
        assert_eq!(run(&mem, disk(&file, false), &descs), (1, OK));
    }

    #[test]
    fn get_id_returns_the_serial() {
        let mem = memory();
        let file = image();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
        let (len, status) = run(&mem, disk(&file, true), &request(20, WRITE));
        assert_eq!((len, status), (21, OK));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"stratum-disk-0\0\0\0\0\0\0");
    }

    #[test]
    fn unknown_types_are_unsupported() {
        let mem = memory();
        let file = image();
        header(&mem, 99, 0);
        let (len, status) = run(&mem, disk(&file, false), &request(512, WRITE));
        assert_eq!((len, status), (1, VIRTIO_BLK_S_UNSUPP as u8));
    }

    #[test]
    fn requests_beyond_capacity_fail() {
        let mem = memory();
        let file = image();
        for (sector, len) in [(SECTORS, 512), (SECTORS - 1, 1024), (u64::MAX, 512)] {
            header(&mem, VIRTIO_BLK_T_IN, sector);
            let got = run(&mem, disk(&file, false), &request(len, WRITE));
            assert_eq!(got, (1, IOERR), "sector {sector}");
            header(&mem, VIRTIO_BLK_T_OUT, sector);
            assert_eq!(run(&mem, disk(&file, false), &request(len, 0)), (1, IOERR));
        }
        // Not whole sectors.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            run(&mem, disk(&file, false), &request(100, WRITE)),
            (1, IOERR)
        );
    }

    #[test]
    fn read_only_drives_refuse_writes() {
        let mem = memory();
        let file = image();
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(run(&mem, disk(&file, true), &request(512, 0)), (1, IOERR));
        let mut data = [0u8; 512];
        file.as_file().read_exact_at(&mut data, 0).unwrap();
        assert_eq!(data[1], 1, "the image is unchanged");
        // And the file is open read-only.
        let opened = Disk::open(file.as_path(), true, None).unwrap();
        assert!(opened.file.write_at(&[0], 0).is_err());
    }

    #[test]
    fn host_io_errors_become_ioerr_and_the_device_goes_on() {
        let mem = memory();
        let file = image();
        // The image shrank under the device: reads hit end of file.
        let disk = disk(&file, false);
        file.as_file().set_len(512).unwrap();
        header(&mem, VIRTIO_BLK_T_IN, 4);
        assert_eq!(run(&mem, disk.clone(), &request(512, WRITE)), (1, IOERR));
        header(&mem, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run(&mem, disk, &request(512, WRITE)), (513, OK));
        // Writes that fail on the host (/dev/full: ENOSPC).
        let full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let full = Arc::new(Disk::with_capacity(full, SECTORS, false, None).unwrap());
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(run(&mem, full, &request(512, 0)), (1, IOERR));
    }

    /// What a hostile request is, its type, its chain, and the used length
    /// and status byte expected.
    type Case = (&'static str, u32, Vec<RawDescriptor>, (u32, u8));

    #[test]
    fn hostile_chains_fail_without_panicking() {
        let mem = memory();
        let file = image();
        let cases: Vec<Case> = vec![
            (
                "data outside guest memory",
                VIRTIO_BLK_T_IN,
                vec![
                    desc(HEADER, 16, 0, 0),
                    desc(0xffff_0000, 512, WRITE, 0),
                    desc(STATUS, 1, WRITE, 0),
                ],
                (1, IOERR),
            ),
            (
                "header outside guest memory",
                VIRTIO_BLK_T_IN,
                vec![desc(0x10_0000 - 8, 16, 0, 0), desc(STATUS, 1, WRITE, 0)],
                (1, IOERR),
            ),
            (
                "status outside guest memory",
                VIRTIO_BLK_T_IN,
                vec![desc(HEADER, 16, 0, 0), desc(0x10_0000, 1, WRITE, 0)],
                (0, 0xff),
            ),
            (
                "status not writable",
                VIRTIO_BLK_T_IN,
                vec![desc(HEADER, 16, 0, 0), desc(STATUS, 1, 0, 0)],
                (0, 0xff),
            ),
            (
                "empty status",
                VIRTIO_BLK_T_FLUSH,
                vec![desc(HEADER, 16, 0, 0), desc(STATUS, 0, WRITE, 0)],
                (0, 0xff),
            ),
            (
                "header too short",
                VIRTIO_BLK_T_FLUSH,
                vec![desc(HEADER, 8, 0, 0), desc(STATUS, 1, WRITE, 0)],
                (1, IOERR),
            ),
            (
                "read into a device-readable buffer",
                VIRTIO_BLK_T_IN,
                request(512, 0),
                (1, IOERR),
            ),
            (
                "write from a device-writable buffer",
                VIRTIO_BLK_T_OUT,
                request(512, WRITE),
                (1, IOERR),
            ),
            (
                "readable after writable",
                VIRTIO_BLK_T_OUT,
                vec![
                    desc(HEADER, 16, 0, 0),
                    desc(DATA, 512, WRITE, 0),
                    desc(DATA + 512, 512, 0, 0),
                    desc(STATUS, 1, WRITE, 0),
                ],
                (1, IOERR),
            ),
            (
                "data buffer beyond SIZE_MAX",
                VIRTIO_BLK_T_IN,
                request(SIZE_MAX + 512, WRITE),
                (1, IOERR),
            ),
            (
                "data buffer of 2 GiB",
                VIRTIO_BLK_T_OUT,
                request(0x8000_0000, 0),
                (1, IOERR),
            ),
            (
                // virtio-queue stops a chain at 4 GiB in total: cut short.
                "chain of more than 4 GiB",
                VIRTIO_BLK_T_OUT,
                request(u32::MAX, 0),
                (0, 0xff),
            ),
        ];
        for (what, kind, descs, expected) in cases {
            header(&mem, kind, 0);
            assert_eq!(run(&mem, disk(&file, false), &descs), expected, "{what}");
        }
    }

    #[test]
    fn cyclic_chains_complete_with_zero_bytes() {
        let mem = memory();
        let file = image();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let vq = MockSplitQueue::new(&mem, 16);
        // Header -> data -> back to the data: never ends.
        vq.add_desc_chains(
            &[desc(HEADER, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 1)],
            0,
        )
        .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        let mut processor = Processor::new(disk(&file, false), 0);
        assert!(processor.process_queue(&mem, &mut queue));
        let used = vq.used();
        assert_eq!(used.idx().load(), 1);
        assert_eq!(used.ring().ref_at(0).unwrap().load().len(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0xff);
    }

    // ------------------------------------------------ discard, write-zeroes

    /// An image of `sectors` sectors of 0xab.
    fn filled_image(sectors: u64) -> TempFile {
        let file = TempFile::new().unwrap();
        let bytes = vec![0xabu8; (sectors * SECTOR_SIZE) as usize];
        file.as_file().write_all_at(&bytes, 0).unwrap();
        file.as_file().sync_all().unwrap();
        file
    }

    fn allocated_blocks(file: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        file.metadata().unwrap().blocks()
    }

    fn image_bytes(file: &File, sector: u64, sectors: u64) -> Vec<u8> {
        let mut data = vec![0u8; (sectors * SECTOR_SIZE) as usize];
        file.read_exact_at(&mut data, sector * SECTOR_SIZE).unwrap();
        data
    }

    /// A DISCARD or WRITE_ZEROES request with `ranges` (sector,
    /// num_sectors, flags) in one readable buffer at DATA.
    fn range_request(mem: &GuestMemoryMmap, kind: u32, ranges: &[Range]) -> Vec<RawDescriptor> {
        header(mem, kind, 0);
        let mut data = Vec::new();
        for (sector, num_sectors, flags) in ranges {
            data.extend_from_slice(&sector.to_le_bytes());
            data.extend_from_slice(&num_sectors.to_le_bytes());
            data.extend_from_slice(&flags.to_le_bytes());
        }
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        request(data.len() as u32, 0)
    }

    /// A discard or write-zeroes range: sector, num_sectors, flags.
    type Range = (u64, u32, u32);

    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
    const UNMAP: u32 = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    const BIG: u64 = 128;

    #[test]
    fn discard_punches_holes() {
        let mem = memory();
        let file = filled_image(BIG);
        let before = allocated_blocks(file.as_file());
        // Two ranges in one request: 8 KiB at 4 KiB and 4 KiB at 32 KiB.
        let descs = range_request(&mem, VIRTIO_BLK_T_DISCARD, &[(8, 16, 0), (64, 8, 0)]);
        assert_eq!(run(&mem, disk(&file, false), &descs), (1, OK));
        let after = allocated_blocks(file.as_file());
        assert!(
            after + 24 <= before,
            "24 sectors freed: {before} -> {after} blocks"
        );
        let image = image_bytes(file.as_file(), 0, BIG);
        let sector = |s: u64| &image[(s * SECTOR_SIZE) as usize..((s + 1) * SECTOR_SIZE) as usize];
        for s in 0..BIG {
            let discarded = (8..24).contains(&s) || (64..72).contains(&s);
            let expected = if discarded { [0u8; 512] } else { [0xab; 512] };
            assert_eq!(sector(s), expected, "sector {s}");
        }
    }

    #[test]
    fn write_zeroes_zeroes_with_and_without_unmap() {
        let mem = memory();
        let file = filled_image(BIG);
        let disk = disk(&file, false);
        // With unmap: a hole.
        let before = allocated_blocks(file.as_file());
        let descs = range_request(&mem, VIRTIO_BLK_T_WRITE_ZEROES, &[(16, 16, UNMAP)]);
        assert_eq!(run(&mem, disk.clone(), &descs), (1, OK));
        let after = allocated_blocks(file.as_file());
        assert!(after + 16 <= before, "{before} -> {after} blocks");
        assert_eq!(image_bytes(file.as_file(), 16, 16), vec![0; 16 * 512]);
        // Without unmap, unaligned to pages: zeroes, the range stays
        // allocated, the sectors around it keep their data.
        let before = allocated_blocks(file.as_file());
        let descs = range_request(&mem, VIRTIO_BLK_T_WRITE_ZEROES, &[(41, 3, 0)]);
        assert_eq!(run(&mem, disk, &descs), (1, OK));
        assert!(allocated_blocks(file.as_file()) >= before);
        let image = image_bytes(file.as_file(), 40, 5);
        assert_eq!(&image[..512], &[0xab; 512][..]);
        assert_eq!(&image[512..2048], &[0; 1536][..]);
        assert_eq!(&image[2048..], &[0xab; 512][..]);
    }

    /// A disk on a memfd (shmem: hole punching, but no ZERO_RANGE), so
    /// write-zeroes without unmap falls back to writing zeroes.
    #[test]
    fn write_zeroes_falls_back_to_writing_zeroes() {
        // SAFETY: the name is a NUL-terminated string; the returned
        // descriptor, checked below, is owned by the `File` alone.
        let fd = unsafe { libc::memfd_create(c"stratum-blk-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = unsafe { <File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) };
        file.write_all_at(&[0xab; 64 * 512], 0).unwrap();
        assert!(matches!(
            fallocate(&file, ZERO_RANGE, 0, 512),
            Err(FallocateError::Unsupported)
        ));
        let disk = Arc::new(Disk::from_file(file.try_clone().unwrap(), false, None).unwrap());
        let mem = memory();
        // More than SIZE_MAX would be needed to see the chunking: 28 KiB
        // here, in one piece.
        let descs = range_request(&mem, VIRTIO_BLK_T_WRITE_ZEROES, &[(4, 56, 0)]);
        assert_eq!(run(&mem, disk.clone(), &descs), (1, OK));
        let image = image_bytes(&file, 0, 64);
        assert_eq!(&image[..2048], &[0xab; 2048][..]);
        assert!(image[2048..60 * 512].iter().all(|&b| b == 0));
        assert_eq!(&image[60 * 512..], &[0xab; 2048][..]);
        // Discard on the same disk punches.
        let descs = range_request(&mem, VIRTIO_BLK_T_DISCARD, &[(60, 4, 0)]);
        assert_eq!(run(&mem, disk, &descs), (1, OK));
        assert_eq!(image_bytes(&file, 60, 4), vec![0; 2048]);
    }

    #[test]
    fn bad_discard_and_write_zeroes_requests_change_nothing() {
        let mem = memory();
        let file = filled_image(BIG);
        let discard = VIRTIO_BLK_T_DISCARD;
        let zeroes = VIRTIO_BLK_T_WRITE_ZEROES;
        let too_many: Vec<_> = (0..=u64::from(MAX_DISCARD_SEG))
            .map(|s| (s, 1, 0))
            .collect();
        let cases: Vec<(&str, u32, Vec<Range>, u8)> = vec![
            ("past the end", discard, vec![(BIG - 1, 2, 0)], IOERR),
            ("past the end", zeroes, vec![(BIG, 1, UNMAP)], IOERR),
            ("sector overflow", discard, vec![(u64::MAX, 1, 0)], IOERR),
            (
                "sector * 512 overflow",
                zeroes,
                vec![(u64::MAX / 256, 1, 0)],
                IOERR,
            ),
            (
                "more than max_discard_sectors",
                discard,
                vec![(0, MAX_DISCARD_SECTORS + 1, 0)],
                IOERR,
            ),
            (
                "more than max_write_zeroes_sectors",
                zeroes,
                vec![(0, MAX_WRITE_ZEROES_SECTORS + 1, 0)],
                IOERR,
            ),
            (
                "a bad range after a good one",
                discard,
                vec![(0, 8, 0), (BIG, 8, 0)],
                IOERR,
            ),
            ("unmap on a discard", discard, vec![(0, 8, UNMAP)], UNSUPP),
            ("a reserved flag", discard, vec![(0, 8, 2)], UNSUPP),
            (
                "a reserved flag",
                zeroes,
                vec![(0, 8, UNMAP | 0x8000_0000)],
                UNSUPP,
            ),
            (
                "a bad flag after a good range",
                discard,
                vec![(0, 8, 0), (8, 8, 4)],
                UNSUPP,
            ),
            ("more than max_discard_seg ranges", discard, too_many, IOERR),
            (
                "more than max_write_zeroes_seg ranges",
                zeroes,
                vec![(0, 1, 0), (1, 1, 0)],
                IOERR,
            ),
            ("no range", discard, vec![], IOERR),
        ];
        for (what, kind, ranges, status) in cases {
            let mut descs = range_request(&mem, kind, &ranges);
            if ranges.is_empty() {
                // No data buffer at all.
                descs.remove(1);
            }
            assert_eq!(run(&mem, disk(&file, false), &descs), (1, status), "{what}");
        }
        // Not whole ranges: 24 bytes.
        let mut descs = range_request(&mem, discard, &[(0, 8, 0), (8, 8, 0)]);
        descs[1] = desc(DATA, 24, 0, 0);
        assert_eq!(run(&mem, disk(&file, false), &descs), (1, IOERR));
        // Ranges in a device-writable buffer.
        let mut descs = range_request(&mem, discard, &[(0, 8, 0)]);
        descs[1] = desc(DATA, 16, WRITE, 0);
        assert_eq!(run(&mem, disk(&file, false), &descs), (1, IOERR));
        assert_eq!(
            image_bytes(file.as_file(), 0, BIG),
            vec![0xab; (BIG * 512) as usize]
        );
    }

    #[test]
    fn read_only_drives_refuse_discard_and_write_zeroes() {
        let mem = memory();
        let file = filled_image(BIG);
        for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
            let descs = range_request(&mem, kind, &[(0, 8, 0)]);
            assert_eq!(run(&mem, disk(&file, true), &descs), (1, IOERR));
        }
        assert_eq!(
            image_bytes(file.as_file(), 0, BIG),
            vec![0xab; (BIG * 512) as usize]
        );
    }

    /// Guest memory in two adjacent regions, split at DATA + 0x800: a 4 KiB
    /// buffer at DATA straddles them and goes through the bounce buffer;
    /// one at 0xd000 lies in one region and goes straight to the kernel.
    #[test]
    fn direct_and_bounce_paths_read_and_write() {
        const SEAM: u64 = DATA + 0x800;
        const DIRECT: u64 = 0xd000;
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), SEAM as usize),
            (GuestAddress(SEAM), 0x10_0000 - SEAM as usize),
        ])
        .unwrap();
        assert_eq!(vm_memory::GuestMemoryBackend::num_regions(&mem), 2);
        let file = image();
        let disk = disk(&file, false);
        let read = |sector: u64, data: u64| {
            header(&mem, VIRTIO_BLK_T_IN, sector);
            vec![
                desc(HEADER, 16, 0, 0),
                desc(data, 4096, WRITE, 0),
                desc(STATUS, 1, WRITE, 0),
            ]
        };
        let expected = |sector: u64| -> Vec<u8> {
            (sector * 512..(sector + 8) * 512)
                .map(|i| ((i / SECTOR_SIZE) as u8) ^ (i as u8))
                .collect()
        };
        let guest = |addr: u64| {
            let mut data = vec![0u8; 4096];
            mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
            data
        };

        // Direct: the bounce buffer stays unused.
        let mut processor = Processor::new(disk.clone(), 1 << VIRTIO_BLK_F_FLUSH);
        assert_eq!(run_on(&mut processor, &mem, &read(2, DIRECT)), (4097, OK));
        assert!(guest(DIRECT) == expected(2), "direct read");
        mem.write_slice(&[0x5a; 4096], GuestAddress(DIRECT))
            .unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 8);
        let write = [
            desc(HEADER, 16, 0, 0),
            desc(DIRECT, 4096, 0, 0),
            desc(STATUS, 1, WRITE, 0),
        ];
        assert_eq!(run_on(&mut processor, &mem, &write), (1, OK));
        assert!(
            image_bytes(file.as_file(), 8, 8) == [0x5a; 4096],
            "direct write"
        );
        assert!(processor.bounce.is_empty(), "the direct path bounced");

        // Across the seam: through the bounce buffer.
        assert_eq!(run_on(&mut processor, &mem, &read(0, DATA)), (4097, OK));
        assert!(guest(DATA) == expected(0), "bounced read");
        assert_eq!(processor.bounce.len(), 4096, "the fallback did not bounce");
        let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 4);
        let write = [
            desc(HEADER, 16, 0, 0),
            desc(DATA, 4096, 0, 0),
            desc(STATUS, 1, WRITE, 0),
        ];
        assert_eq!(run_on(&mut processor, &mem, &write), (1, OK));
        assert!(
            image_bytes(file.as_file(), 4, 8) == pattern,
            "bounced write"
        );

        // Both kinds of buffer in one request, in order.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let mixed = [
            desc(HEADER, 16, 0, 0),
            desc(DATA, 4096, WRITE, 0),
            desc(DIRECT, 4096, WRITE, 0),
            desc(STATUS, 1, WRITE, 0),
        ];
        assert_eq!(run_on(&mut processor, &mem, &mixed), (8193, OK));
        let image = image_bytes(file.as_file(), 0, 16);
        assert!(guest(DATA) == image[..4096], "bounced part");
        assert!(guest(DIRECT) == image[4096..], "direct part");
    }

    /// An image of `sectors` sectors, every byte `fill`.
    fn image_of(sectors: u64, fill: u8) -> TempFile {
        let file = TempFile::new().unwrap();
        let bytes = vec![fill; (sectors * SECTOR_SIZE) as usize];
        file.as_file().write_all_at(&bytes, 0).unwrap();
        file
    }

    /// A FIFO and a directory in a fresh directory, removed on drop.
    struct NotImages {
        dir: std::path::PathBuf,
    }

    impl NotImages {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "vmm-block-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(dir.join("a-directory")).unwrap();
            let fifo = std::ffi::CString::new(dir.join("fifo").to_str().unwrap()).unwrap();
            // SAFETY: mkfifo with a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
            Self { dir }
        }

        fn paths(&self) -> [std::path::PathBuf; 3] {
            [
                self.dir.join("missing.img"),
                self.dir.join("a-directory"),
                self.dir.join("fifo"),
            ]
        }
    }

    impl Drop for NotImages {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn transport_register(transport: &mut super::super::mmio::MmioTransport, offset: u64) -> u32 {
        use crate::devices::BusDevice;
        let mut value = [0u8; 4];
        transport.read(offset, &mut value);
        u32::from_le_bytes(value)
    }

    /// PATCH /drives/{id} with path_on_host, as the device sees it: the
    /// capacity in the configuration space is the new image's, the
    /// transport's ConfigGeneration moves, and a running driver gets a
    /// configuration-change interrupt; one that does not run yet gets none.
    #[test]
    fn a_new_image_changes_the_capacity_and_tells_a_running_driver() {
        use super::super::mmio::MmioTransport;
        use super::super::INTERRUPT_CONFIG_CHANGE;
        use crate::devices::IrqLine;
        use vmm_sys_util::eventfd::EventFd;

        let (a, b, c) = (image_of(16, 0xa), image_of(40, 0xb), image_of(8, 0xc));
        let block = Block::new(
            Disk::open(a.as_path(), false, Some("data")).unwrap(),
            unlimited(),
        );
        let shared = block.disk();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(IrqLine(irq.try_clone().unwrap())));
        let mut transport =
            MmioTransport::new(Box::new(block), Arc::new(memory()), interrupt.clone()).unwrap();
        let capacity = |t: &mut MmioTransport| {
            u64::from(transport_register(t, 0x100)) | u64::from(transport_register(t, 0x104)) << 32
        };
        assert_eq!(capacity(&mut transport), 16);
        let generation = transport_register(&mut transport, 0xfc);

        // Not yet activated: the driver will read the capacity at probe.
        assert_eq!(shared.replace(b.as_path()).unwrap(), 40);
        assert_eq!(capacity(&mut transport), 40);
        assert_ne!(transport_register(&mut transport, 0xfc), generation);
        assert_eq!(interrupt.status(), 0);
        assert!(irq.read().is_err(), "no interrupt before activation");

        // Running (what `activate` records): InterruptStatus bit 1.
        shared.set_interrupt(Some(interrupt.clone()));
        let generation = transport_register(&mut transport, 0xfc);
        assert_eq!(shared.replace(c.as_path()).unwrap(), 8);
        assert_eq!(capacity(&mut transport), 8);
        assert_eq!(
            transport_register(&mut transport, 0xfc),
            generation.wrapping_add(1)
        );
        assert_eq!(
            transport_register(&mut transport, 0x60),
            INTERRUPT_CONFIG_CHANGE
        );
        assert_eq!(irq.read().unwrap(), 1);

        // The serial (GET_ID) is the drive's, whatever the file.
        assert_eq!(&shared.current().id[..5], b"data\0");
    }

    /// A path that is not an image changes nothing: same file, capacity,
    /// generation, and no interrupt. A FIFO is refused at once.
    #[test]
    fn a_bad_path_leaves_the_drive_as_it_was() {
        let a = image_of(16, 0xa);
        let shared = SharedDisk::new(Arc::new(Disk::open(a.as_path(), false, None).unwrap()));
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(crate::devices::IrqLine(
            irq.try_clone().unwrap(),
        )));
        shared.set_interrupt(Some(interrupt.clone()));
        let before = shared.current();
        let not_images = NotImages::new("bad-path");
        for path in not_images.paths() {
            let error = shared.replace(&path).unwrap_err().to_string();
            assert!(!error.is_empty(), "{}", path.display());
            assert!(
                Arc::ptr_eq(&shared.current(), &before),
                "{}",
                path.display()
            );
        }
        assert_eq!(shared.capacity(), 16);
        assert_eq!(shared.generation(), 0);
        assert_eq!(interrupt.status(), 0);
        assert!(irq.read().is_err());
    }

    /// The new image is opened as the drive was: a read-only drive's with
    /// O_RDONLY (it could not be written through even by mistake).
    #[test]
    fn a_read_only_drive_gets_its_new_image_read_only() {
        let (a, b) = (image_of(16, 0xa), image_of(16, 0xb));
        let shared = SharedDisk::new(Arc::new(Disk::open(a.as_path(), true, None).unwrap()));
        shared.replace(b.as_path()).unwrap();
        let disk = shared.current();
        assert!(disk.read_only);
        // SAFETY: F_GETFL on a descriptor `disk` keeps open.
        let flags = unsafe { libc::fcntl(disk.file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
        let rw = SharedDisk::new(Arc::new(Disk::open(a.as_path(), false, None).unwrap()));
        rw.replace(b.as_path()).unwrap();
        // SAFETY: as above.
        let flags = unsafe { libc::fcntl(rw.current().file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDWR);
    }

    /// The worker takes the image afresh for each request: reads before
    /// the swap come from the old image, after it from the new one, whose
    /// capacity now bounds them; flush and writes go to the new one too.
    #[test]
    fn requests_after_a_swap_go_to_the_new_image() {
        let mem = memory();
        let (a, b) = (image_of(16, 0xa), image_of(40, 0xb));
        let shared = SharedDisk::new(Arc::new(Disk::open(a.as_path(), false, None).unwrap()));
        let mut processor = Processor::sharing(shared.clone(), 1 << VIRTIO_BLK_F_FLUSH);
        let read_first_byte = |processor: &mut Processor, sector: u64| {
            header(&mem, VIRTIO_BLK_T_IN, sector);
            let (_, status) = run_on(processor, &mem, &request(512, WRITE));
            (status, mem.read_obj::<u8>(GuestAddress(DATA)).unwrap())
        };
        assert_eq!(read_first_byte(&mut processor, 0), (OK, 0xa));
        assert_eq!(read_first_byte(&mut processor, 20).0, IOERR, "beyond A");
        // A request under way holds its image: the old file stays open
        // (and readable) for as long as it does.
        let under_way = shared.current();
        shared.replace(b.as_path()).unwrap();
        assert_eq!(read_first_byte(&mut processor, 0), (OK, 0xb));
        assert_eq!(read_first_byte(&mut processor, 20), (OK, 0xb));
        let mut byte = [0u8; 1];
        under_way.file.read_exact_at(&mut byte, 0).unwrap();
        assert_eq!(byte, [0xa]);
        // A write lands in B only.
        mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 1);
        assert_eq!(run_on(&mut processor, &mem, &request(512, 0)), (1, OK));
        assert_eq!(image_bytes(b.as_file(), 1, 1), [0x5a; 512]);
        assert_eq!(image_bytes(a.as_file(), 1, 1), [0xa; 512]);
    }

    /// The API thread opens the new image after boot: its seccomp filters
    /// (the thread kind's list and the probe filter) must admit the whole
    /// swap, and a FIFO or a missing file must fail rather than kill or
    /// hang it. Checked in a child process, as the seccomp module's own
    /// tests do.
    #[test]
    fn the_api_threads_filter_admits_swapping_an_image() {
        use crate::seccomp::{probe_filter, program, ThreadKind};
        let (a, b) = (image_of(16, 0xa), image_of(40, 0xb));
        let rw = SharedDisk::new(Arc::new(Disk::open(a.as_path(), false, None).unwrap()));
        let ro = SharedDisk::new(Arc::new(Disk::open(a.as_path(), true, None).unwrap()));
        let not_images = NotImages::new("seccomp");
        let bad = not_images.paths();
        let probe = probe_filter(ThreadKind::Api).unwrap();
        let api = program(ThreadKind::Api).unwrap();
        // SAFETY: the child only applies its filters, swaps images (which
        // allocates, as the API thread does; glibc's malloc is usable after
        // fork) and `_exit`s; the parent waits for it.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if seccompiler::apply_filter(&probe).is_err()
                || seccompiler::apply_filter(&api).is_err()
            {
                3
            } else if rw.replace(b.as_path()).ok() != Some(40)
                || ro.replace(b.as_path()).ok() != Some(40)
            {
                4
            } else if bad
                .iter()
                .any(|path| rw.replace(path).is_ok() || ro.replace(path).is_ok())
            {
                5
            } else {
                0
            };
            // SAFETY: ends the child without running the parent's
            // destructors or test harness.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status),
            "the API thread's filter killed the swap: status {status:#x}"
        );
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
