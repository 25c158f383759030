//! virtio-blk backed by a raw image file (virtio 1.1, section 5.2).
//!
//! One request queue. Each request is a device-readable header (type,
//! reserved, sector), the data (device-readable for writes, device-writable
//! for reads and GET_ID) and a device-writable status byte, the last byte
//! of the chain. Data moves with positioned reads and writes on the image
//! through a bounce buffer of at most [`SIZE_MAX`] bytes, so a guest can
//! never make the worker allocate more.
//!
//! Writes go to the host's page cache: the device offers
//! VIRTIO_BLK_F_FLUSH, and a flush completes only after fdatasync(2). A
//! driver that does not accept FLUSH gets write-through instead (each
//! write is followed by fdatasync), as the specification asks.
//!
//! A request the device cannot carry out (a malformed chain, a host I/O
//! error, sectors beyond the capacity, a write to a read-only drive) ends
//! with VIRTIO_BLK_S_IOERR, or VIRTIO_BLK_S_UNSUPP for an unknown type;
//! the device goes on with the next one. A request without a writable
//! status byte cannot be answered and is completed with used length 0.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::worker::Worker;
use super::{
    chain_is_well_formed, expect_queues, read_config_bytes, signal_used, stop_worker,
    ActivateError, ActiveQueue, Interrupt, SharedMemory, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

pub const SECTOR_SIZE: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: &[u16] = &[QUEUE_SIZE];
/// The most bytes in one data descriptor (config `size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// The most data descriptors in one request (config `seg_max`): the queue
/// less the header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Header: le32 type, le32 reserved, le64 sector.
const HEADER_LEN: usize = 16;

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
    /// drive. Block devices work too: the size comes from seeking to the end.
    pub fn open(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Self, DiskError> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
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
}

pub struct Block {
    disk: Arc<Disk>,
    config: [u8; 16],
    acked_features: u64,
    worker: Option<Worker>,
}

impl Block {
    pub fn new(disk: Disk) -> Self {
        // virtio_blk_config: le64 capacity, le32 size_max, le32 seg_max;
        // the rest (geometry, blk_size, ...) reads as 0.
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&disk.capacity.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Self {
            disk: Arc::new(disk),
            config,
            acked_features: 0,
            worker: None,
        }
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
            Failure::IoErr => VIRTIO_BLK_S_IOERR as u8,
            Failure::Unsupported => VIRTIO_BLK_S_UNSUPP as u8,
        }
    }
}

/// A chain taken apart: readable buffers, writable data buffers, status.
struct Parsed {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
}

/// What the per-device worker keeps between requests.
struct Processor {
    disk: Arc<Disk>,
    /// Write-through: the driver did not accept FLUSH.
    sync_each_write: bool,
    bounce: Vec<u8>,
}

impl Processor {
    fn new(disk: Arc<Disk>, acked_features: u64) -> Self {
        Self {
            disk,
            sync_each_write: acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0,
            bounce: Vec::new(),
        }
    }

    /// Completes every available request; true if any was completed.
    fn process_queue(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used_len = self.process_chain(mem, chain);
            if queue.add_used(mem, head, used_len).is_err() {
                break;
            }
            used_any = true;
        }
        used_any
    }

    /// Handles one request; returns the used length (bytes written to the
    /// driver's buffers, status included).
    fn process_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        if !chain_is_well_formed(&chain) {
            // A cut-short chain: its real end, and so its status byte, is
            // unknown.
            return 0;
        }
        let descriptors: Vec<_> = chain.collect();
        // The status byte is the last byte of the last descriptor, which
        // must be device-writable and inside guest memory.
        let Some(last) = descriptors.last() else {
            return 0;
        };
        if !last.is_write_only() || last.len() == 0 {
            return 0;
        }
        let status_addr = match last.addr().0.checked_add(u64::from(last.len()) - 1) {
            Some(a) if mem.check_range(GuestAddress(a), 1, Permissions::Write) => GuestAddress(a),
            _ => return 0,
        };
        let (status, data_written) =
            match parse(mem, &descriptors).and_then(|parsed| self.execute(mem, &parsed)) {
                Ok(written) => (VIRTIO_BLK_S_OK as u8, written),
                Err(failure) => (failure.status(), 0),
            };
        if mem.write_obj(status, status_addr).is_err() {
            return 0;
        }
        data_written.saturating_add(1)
    }

    /// Carries out a well-formed request; returns the data bytes written
    /// to the driver's buffers.
    fn execute(&mut self, mem: &GuestMemoryMmap, parsed: &Parsed) -> Result<u32, Failure> {
        let mut header = [0u8; HEADER_LEN];
        let data_in = read_from_segments(mem, &parsed.readable, &mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]);
        match kind {
            VIRTIO_BLK_T_IN => {
                if !data_in.is_empty() {
                    return Err(Failure::IoErr);
                }
                self.read(mem, sector, &parsed.writable)
            }
            VIRTIO_BLK_T_OUT => {
                if !parsed.writable.is_empty() {
                    return Err(Failure::IoErr);
                }
                self.write(mem, sector, &data_in).map(|()| 0)
            }
            VIRTIO_BLK_T_FLUSH => {
                if !data_in.is_empty() || !parsed.writable.is_empty() {
                    return Err(Failure::IoErr);
                }
                self.disk.file.sync_data().map_err(|_| Failure::IoErr)?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                if !data_in.is_empty() {
                    return Err(Failure::IoErr);
                }
                write_to_segments(mem, &parsed.writable, &self.disk.id)
            }
            _ => Err(Failure::Unsupported),
        }
    }

    /// The byte offset of `sector` on the image, if `len` bytes from there
    /// fit in the capacity and `len` is whole sectors.
    fn disk_offset(&self, sector: u64, len: u64) -> Result<u64, Failure> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(Failure::IoErr);
        }
        let end = sector
            .checked_add(len / SECTOR_SIZE)
            .ok_or(Failure::IoErr)?;
        if end > self.disk.capacity {
            return Err(Failure::IoErr);
        }
        sector.checked_mul(SECTOR_SIZE).ok_or(Failure::IoErr)
    }

    fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        sector: u64,
        data: &[Segment],
    ) -> Result<u32, Failure> {
        let total = total_len(data);
        let mut offset = self.disk_offset(sector, total)?;
        for segment in data {
            let buf = bounce(&mut self.bounce, segment.len);
            self.disk
                .file
                .read_exact_at(buf, offset)
                .map_err(|_| Failure::IoErr)?;
            mem.write_slice(buf, segment.addr)
                .map_err(|_| Failure::IoErr)?;
            offset += u64::from(segment.len);
        }
        // At most SEG_MAX * SIZE_MAX bytes, which fits in u32 less one.
        u32::try_from(total).map_err(|_| Failure::IoErr)
    }

    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        sector: u64,
        data: &[Segment],
    ) -> Result<(), Failure> {
        if self.disk.read_only {
            return Err(Failure::IoErr);
        }
        let mut offset = self.disk_offset(sector, total_len(data))?;
        for segment in data {
            let buf = bounce(&mut self.bounce, segment.len);
            mem.read_slice(buf, segment.addr)
                .map_err(|_| Failure::IoErr)?;
            self.disk
                .file
                .write_all_at(buf, offset)
                .map_err(|_| Failure::IoErr)?;
            offset += u64::from(segment.len);
        }
        if self.sync_each_write {
            self.disk.file.sync_data().map_err(|_| Failure::IoErr)?;
        }
        Ok(())
    }
}

/// Fuzzing entry point (vmm/fuzz): completes every available request of
/// `queue` on `disk` as the device's worker does, with the driver having
/// accepted `acked_features`. Not part of the device's API.
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
        let take = wanted.min(segment.len as usize);
        if take > 0 {
            mem.read_slice(&mut out[filled..filled + take], segment.addr)
                .map_err(|_| Failure::IoErr)?;
            filled += take;
        }
        if take < segment.len as usize {
            rest.push(Segment {
                addr: segment
                    .addr
                    .0
                    .checked_add(take as u64)
                    .map(GuestAddress)
                    .ok_or(Failure::IoErr)?,
                len: segment.len - take as u32,
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
    Ok(written as u32)
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
        if self.disk.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: SharedMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let [active] = expect_queues::<1>(queues)?;
        let mut queue = active.queue;
        let mut processor = Processor::new(self.disk.clone(), self.acked_features);
        let worker = Worker::spawn("virtio-blk", vec![active.notify], move |_| {
            if processor.process_queue(&mem, &mut queue) {
                signal_used(&mem, &mut queue, &interrupt);
            }
        })
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.acked_features = 0;
        stop_worker(&mut self.worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::tempfile::TempFile;

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
        let vq = MockSplitQueue::new(mem, 16);
        vq.build_desc_chain(descs).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        let mut processor = Processor::new(disk, 1 << VIRTIO_BLK_F_FLUSH);
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

    #[test]
    fn config_space_and_features() {
        let file = image();
        let block = Block::new(Disk::open(file.as_path(), true, None).unwrap());
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), SECTORS);
        let mut seg_max = [0u8; 4];
        block.read_config(12, &mut seg_max);
        assert_eq!(u32::from_le_bytes(seg_max), SEG_MAX);
        assert_ne!(block.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(block.features() & VIRTIO_F_VERSION_1, 0);
        let rw = Block::new(Disk::open(file.as_path(), false, None).unwrap());
        assert_eq!(rw.features() & (1 << VIRTIO_BLK_F_RO), 0);
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
}
