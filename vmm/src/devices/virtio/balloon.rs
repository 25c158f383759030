//! virtio-balloon (virtio 1.1, section 5.5): the host asks the guest to
//! give memory back, and the guest tells the host which pages it gave.
//!
//! What it owns: the configuration space (`num_pages`, the target the host
//! sets, in 4 KiB pages; `actual`, what the driver says it holds), the
//! inflate and deflate queues, the statistics queue when statistics are
//! on, and the device's worker thread. [`SharedBalloon`] is the part the
//! controller shares with the device and its worker: the target (`PATCH
//! /balloon`, which raises the configuration-change interrupt), the
//! statistics interval and its timer (`PATCH /balloon/statistics`) and the
//! guest's latest statistics (`GET /balloon/statistics`), with
//! Firecracker's rules and texts.
//!
//! Why: a guest that no longer needs memory it once touched keeps it
//! backed on the host. An inflated page is given back with
//! `madvise(MADV_DONTNEED)` on the guest memory mapping: the host frees
//! it, and the guest reads zeros if it ever uses it again (after a
//! deflate). Deflating needs nothing from the host; the request is only
//! acknowledged.
//!
//! Statistics follow the protocol of the specification: the driver gives
//! the device one buffer with its statistics; the device keeps it and
//! hands it back (a used buffer) each time its timer fires, which asks the
//! driver for fresh ones, which come back in the same buffer.
//!
//! What it refuses, as a guest is not trusted: every page frame number is
//! checked to lie wholly inside guest RAM, and those that do not are
//! skipped (the rest of the request is still given back); a request that
//! is not a whole number of PFNs or names more than [`MAX_PFNS_PER_REQUEST`]
//! (Linux sends at most 256) is completed without giving anything back,
//! as is a malformed descriptor chain; a statistics buffer larger than
//! [`MAX_STATS_LEN`] is kept (the protocol goes on) but not read. The
//! driver may write `actual` only; a write to `num_pages` is ignored, so
//! the target stays the host's. With hugetlbfs-backed memory nothing is
//! given back: the host's pages are 2 MiB and the balloon's 4 KiB (the
//! guest still cannot use what it inflated), as Firecracker documents.
//! Free page hinting and reporting are not offered.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::vstate::memory::GuestMemoryMmap;
use serde::Serialize;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::timerfd::TimerFd;

use super::worker::{self, Worker};
use super::{
    chain_is_well_formed, expect_queues, read_config_bytes, signal_used, stop_worker,
    ActivateError, ActiveQueue, Interrupt, SharedMemory, VirtioDevice, TYPE_BALLOON,
    VIRTIO_F_VERSION_1,
};
use crate::config::BalloonConfig;
use crate::seccomp::ThreadKind;
use crate::vmm_log;

/// Feature bits (virtio 1.1, 5.5.3).
const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;

/// The balloon's page size, whatever the guest's: PFNs are addresses
/// shifted by 12.
const PAGE_SHIFT: u32 = 12;
const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// 4 KiB pages in a MiB.
const PAGES_PER_MIB: u32 = 256;
/// Descriptors per queue, as Firecracker's.
const QUEUE_SIZE: u16 = 256;
/// The most PFNs one inflate request may name (Linux's
/// VIRTIO_BALLOON_ARRAY_PFNS_MAX, Firecracker's MAX_PAGES_IN_DESC).
pub const MAX_PFNS_PER_REQUEST: usize = 256;
/// One statistic: le16 tag, le64 value, packed.
const STAT_LEN: usize = 10;
/// The most statistics read from one buffer: the specification has 16
/// tags, newer kernels may add some (Firecracker's bound).
const MAX_STATS_TAGS: usize = 256;
/// The largest statistics buffer read.
pub const MAX_STATS_LEN: usize = MAX_STATS_TAGS * STAT_LEN;
/// The configuration space: le32 num_pages, le32 actual.
const CONFIG_LEN: usize = 8;
const ACTUAL_OFFSET: usize = 4;

/// Why a balloon request of the API cannot be carried out. The texts are
/// Firecracker's `BalloonError`s (its API prefixes them with "Balloon: ").
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    #[error("Device not activated yet.")]
    DeviceNotActive,
    #[error("Received stats query when stats are disabled.")]
    StatisticsDisabled,
    #[error("Statistics cannot be enabled/disabled after activation.")]
    StatisticsStateChange,
    /// Carries the guest's memory size (Firecracker's carries the amount
    /// asked for, which reads wrong in this sentence).
    #[error("Requested memory should be less than {0}MiB")]
    TooMuchMemoryRequested(u64),
}

/// The guest's statistics (Firecracker's `BalloonStats` fields after the
/// sizes), each present once the driver has reported it; a later report
/// without a tag keeps its earlier value. Values are bytes, but for the
/// fault and event counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GuestStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

impl GuestStats {
    /// Records one statistic; false for a tag we do not know (ignored).
    /// Tags are Linux's `VIRTIO_BALLOON_S_*` (include/uapi/linux/
    /// virtio_balloon.h): the specification's ten, and those Linux 6.12
    /// added.
    pub fn record(&mut self, tag: u16, value: u64) -> bool {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// `GET /balloon/statistics`: Firecracker's `BalloonStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub target_mib: u32,
    pub actual_mib: u32,
    #[serde(flatten)]
    pub guest: GuestStats,
}

/// The statistics in a buffer the driver filled: whole (tag, value)
/// records, little-endian; a trailing partial record is ignored.
pub fn parse_stats(bytes: &[u8]) -> impl Iterator<Item = (u16, u64)> + '_ {
    bytes.chunks_exact(STAT_LEN).map(|record| {
        let (tag, value) = record.split_at(2);
        let mut tag_bytes = [0u8; 2];
        tag_bytes.copy_from_slice(tag);
        let mut value_bytes = [0u8; 8];
        value_bytes.copy_from_slice(value);
        (
            u16::from_le_bytes(tag_bytes),
            u64::from_le_bytes(value_bytes),
        )
    })
}

/// A MiB amount as 4 KiB pages, if it fits the config space's u32.
fn mib_to_pages(mib: u32) -> Option<u32> {
    mib.checked_mul(PAGES_PER_MIB)
}

/// The balloon state the device, its worker and the controller share.
/// Cheap to clone.
#[derive(Clone)]
pub struct SharedBalloon {
    inner: Arc<Mutex<BalloonState>>,
}

struct BalloonState {
    /// `num_pages`: the target, set by the host.
    target_pages: u32,
    /// `actual`: what the driver says the balloon holds.
    actual_pages: u32,
    /// How many times the host changed the target: the device's part of
    /// the transport's ConfigGeneration.
    generation: u32,
    deflate_on_oom: bool,
    /// 0: statistics are off (fixed when the VM is built).
    stats_interval_s: u16,
    stats: GuestStats,
    /// Fires when the guest is to be asked for fresh statistics. Armed
    /// by the worker when it starts (and disarmed when it stops), re-armed
    /// by `PATCH /balloon/statistics`.
    timer: TimerFd,
    /// The device's interrupt while the driver runs it.
    interrupt: Option<Arc<Interrupt>>,
    /// Guest RAM, the bound on the target.
    memory_mib: u64,
}

impl SharedBalloon {
    /// The state of a balloon as `config` starts it, for a guest of
    /// `memory_mib` (which the configuration was checked against: see
    /// [`crate::config::VmConfig::validate`]). The timer is made here,
    /// while the VM is built: no thread that runs later may create
    /// descriptors.
    pub fn new(config: &BalloonConfig, memory_mib: u64) -> std::io::Result<Self> {
        // Within the guest's memory, the target fits in u32 pages unless
        // the guest has 16 TiB; beyond, the largest target is taken.
        let target_pages = mib_to_pages(config.amount_mib).unwrap_or(u32::MAX);
        Ok(Self {
            inner: Arc::new(Mutex::new(BalloonState {
                target_pages,
                actual_pages: 0,
                generation: 0,
                deflate_on_oom: config.deflate_on_oom,
                stats_interval_s: config.stats_polling_interval_s,
                stats: GuestStats::default(),
                timer: new_timer()?,
                interrupt: None,
                memory_mib,
            })),
        })
    }

    /// Every change is a few assignments that cannot panic halfway, so a
    /// poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, BalloonState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `PATCH /balloon`: a new target, which the driver learns from the
    /// configuration-change interrupt. As in Firecracker, only while the
    /// driver runs the device, and never beyond the guest's memory.
    pub fn set_target_mib(&self, amount_mib: u32) -> Result<(), BalloonError> {
        let mut state = self.lock();
        let Some(interrupt) = state.interrupt.clone() else {
            return Err(BalloonError::DeviceNotActive);
        };
        let too_much = BalloonError::TooMuchMemoryRequested(state.memory_mib);
        if u64::from(amount_mib) > state.memory_mib {
            return Err(too_much);
        }
        state.target_pages = mib_to_pages(amount_mib).ok_or(too_much)?;
        state.generation = state.generation.wrapping_add(1);
        // Under the lock, as for a drive's new image: a reset that clears
        // the interrupt comes before (no interrupt) or after (the
        // transport's reset acknowledges it).
        interrupt.signal_config_change();
        Ok(())
    }

    /// `PATCH /balloon/statistics`: a new interval, the first request at
    /// once. Statistics cannot be turned on or off (Firecracker's rule:
    /// the queue exists or not since the VM was built).
    pub fn set_stats_interval(&self, interval_s: u16) -> Result<(), BalloonError> {
        let mut state = self.lock();
        if state.stats_interval_s == interval_s {
            return Ok(());
        }
        if state.stats_interval_s == 0 || interval_s == 0 {
            return Err(BalloonError::StatisticsStateChange);
        }
        state.stats_interval_s = interval_s;
        if state.interrupt.is_some() {
            let interval = Duration::from_secs(u64::from(interval_s));
            // A zero first expiry would disarm the timer.
            if let Err(error) = state.timer.reset(Duration::from_nanos(1), Some(interval)) {
                vmm_log!(Error, "balloon: cannot arm the statistics timer: {error}");
            }
        }
        Ok(())
    }

    /// `GET /balloon/statistics`: the sizes from the configuration space
    /// and the guest's latest report.
    pub fn stats(&self) -> Result<BalloonStats, BalloonError> {
        let state = self.lock();
        if state.stats_interval_s == 0 {
            return Err(BalloonError::StatisticsDisabled);
        }
        Ok(BalloonStats {
            target_pages: state.target_pages,
            actual_pages: state.actual_pages,
            target_mib: state.target_pages / PAGES_PER_MIB,
            actual_mib: state.actual_pages / PAGES_PER_MIB,
            guest: state.stats,
        })
    }

    /// The target in MiB.
    pub fn target_mib(&self) -> u32 {
        self.lock().target_pages / PAGES_PER_MIB
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let state = self.lock();
        let mut config = [0u8; CONFIG_LEN];
        config[..ACTUAL_OFFSET].copy_from_slice(&state.target_pages.to_le_bytes());
        config[ACTUAL_OFFSET..].copy_from_slice(&state.actual_pages.to_le_bytes());
        config
    }

    /// A driver's write of the configuration space: only the bytes of
    /// `actual` are taken.
    fn write_config(&self, offset: u64, data: &[u8]) {
        let mut state = self.lock();
        let mut actual = state.actual_pages.to_le_bytes();
        for (index, &byte) in data.iter().enumerate() {
            let field_byte = usize::try_from(offset)
                .ok()
                .and_then(|offset| offset.checked_add(index))
                .and_then(|at| at.checked_sub(ACTUAL_OFFSET))
                .and_then(|at| actual.get_mut(at));
            if let Some(slot) = field_byte {
                *slot = byte;
            }
        }
        state.actual_pages = u32::from_le_bytes(actual);
    }

    fn generation(&self) -> u32 {
        self.lock().generation
    }

    fn deflate_on_oom(&self) -> bool {
        self.lock().deflate_on_oom
    }

    fn stats_enabled(&self) -> bool {
        self.lock().stats_interval_s > 0
    }

    fn activate(&self, interrupt: Arc<Interrupt>) {
        self.lock().interrupt = Some(interrupt);
    }

    /// A reset, as Firecracker's: the driver holds nothing any more and
    /// its statistics are gone.
    fn deactivate(&self) {
        let mut state = self.lock();
        state.interrupt = None;
        state.actual_pages = 0;
        state.stats = GuestStats::default();
    }

    fn record_stats(&self, bytes: &[u8]) {
        let mut state = self.lock();
        for (tag, value) in parse_stats(bytes) {
            // Unknown tags (a newer guest's) are skipped.
            state.stats.record(tag, value);
        }
    }

    fn timer_fd(&self) -> RawFd {
        self.lock().timer.as_raw_fd()
    }

    /// Arms the timer for the interval (the worker's start), or disarms it
    /// with `None` (its end).
    fn arm_timer(&self, on: bool) {
        let mut state = self.lock();
        let result = if on && state.stats_interval_s > 0 {
            let interval = Duration::from_secs(u64::from(state.stats_interval_s));
            state.timer.reset(interval, Some(interval))
        } else {
            state.timer.clear()
        };
        if let Err(error) = result {
            vmm_log!(Error, "balloon: cannot set the statistics timer: {error}");
        }
    }

    /// Consumes the timer's expirations; true if it had fired.
    fn timer_fired(&self) -> bool {
        // Non-blocking: a timer re-armed since the poll reads EAGAIN.
        matches!(self.lock().timer.wait(), Ok(n) if n > 0)
    }
}

/// A timerfd whose reads never wait.
fn new_timer() -> std::io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(std::io::Error::from)?;
    crate::rate_limiter::set_nonblocking(&timer)?;
    Ok(timer)
}

/// The virtio-balloon device. Its queues: inflate, deflate, and stats
/// when statistics are on.
pub struct Balloon {
    shared: SharedBalloon,
    queue_sizes: Vec<u16>,
    acked_features: u64,
    worker: Option<Worker>,
}

impl Balloon {
    pub fn new(shared: SharedBalloon) -> Self {
        let queues = if shared.stats_enabled() { 3 } else { 2 };
        Self {
            shared,
            queue_sizes: vec![QUEUE_SIZE; queues],
            acked_features: 0,
            worker: None,
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1;
        if self.shared.stats_enabled() {
            features |= VIRTIO_BALLOON_F_STATS_VQ;
        }
        if self.shared.deflate_on_oom() {
            features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.shared.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.shared.write_config(offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.shared.generation()
    }

    fn activate(
        &mut self,
        mem: SharedMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let stats = self.acked_features & VIRTIO_BALLOON_F_STATS_VQ != 0;
        let (inflate, deflate, stats) = if stats {
            let [inflate, deflate, stats] = expect_queues::<3>(queues)?;
            (inflate, deflate, Some(stats))
        } else {
            let [inflate, deflate] = expect_queues::<2>(queues)?;
            (inflate, deflate, None)
        };
        let mut worker = BalloonWorker {
            give_back: gives_back(&mem),
            mem,
            interrupt: interrupt.clone(),
            inflate,
            deflate,
            stats,
            held_stats: None,
            shared: self.shared.clone(),
        };
        let worker = Worker::spawn_loop("virtio-balloon", ThreadKind::Balloon, move |kill| {
            worker.run(kill);
        })
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        self.shared.activate(interrupt);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.acked_features = 0;
        self.shared.deactivate();
        stop_worker(&mut self.worker)
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }
}

/// Whether pages can be given back: not from hugetlbfs, whose 2 MiB pages
/// a 4 KiB `MADV_DONTNEED` cannot free (see the module doc).
fn gives_back(mem: &GuestMemoryMmap) -> bool {
    mem.iter()
        .all(|region| region.flags() & libc::MAP_HUGETLB == 0)
}

/// The device's worker: the queues' notifications and the statistics
/// timer.
struct BalloonWorker {
    mem: SharedMemory,
    interrupt: Arc<Interrupt>,
    inflate: ActiveQueue,
    deflate: ActiveQueue,
    stats: Option<ActiveQueue>,
    /// The statistics buffer the device holds until it asks for more.
    held_stats: Option<u16>,
    shared: SharedBalloon,
    give_back: bool,
}

impl BalloonWorker {
    /// Serves the queues until `kill` is readable.
    fn run(&mut self, kill: RawFd) {
        let mut fds = vec![
            kill,
            self.inflate.notify.as_raw_fd(),
            self.deflate.notify.as_raw_fd(),
        ];
        if let Some(stats) = &self.stats {
            fds.push(stats.notify.as_raw_fd());
            fds.push(self.shared.timer_fd());
            self.shared.arm_timer(true);
        }
        while let Some(ready) = worker::wait(&fds) {
            let [killed, inflate, deflate, stats @ ..] = ready.as_slice() else {
                break;
            };
            if *killed {
                break;
            }
            if *inflate {
                // Draining resets the counter; everything pending is
                // processed, so coalesced notifications lose nothing.
                let _ = self.inflate.notify.read();
                self.on_inflate();
            }
            if *deflate {
                let _ = self.deflate.notify.read();
                self.on_deflate();
            }
            if let [queue, timer] = stats {
                if *queue {
                    self.on_stats();
                }
                if *timer && self.shared.timer_fired() {
                    self.request_stats();
                }
            }
        }
        self.shared.arm_timer(false);
    }

    fn on_inflate(&mut self) {
        let queue = &mut self.inflate.queue;
        if process_inflate(&self.mem, queue, self.give_back) {
            signal_used(&self.mem, queue, &self.interrupt);
        }
    }

    fn on_deflate(&mut self) {
        let queue = &mut self.deflate.queue;
        if complete_all(&self.mem, queue) {
            signal_used(&self.mem, queue, &self.interrupt);
        }
    }

    fn on_stats(&mut self) {
        let Some(stats) = &mut self.stats else {
            return;
        };
        let _ = stats.notify.read();
        let returned = take_stats(
            &self.mem,
            &mut stats.queue,
            &mut self.held_stats,
            &self.shared,
        );
        if returned {
            signal_used(&self.mem, &mut stats.queue, &self.interrupt);
        }
    }

    /// Hands the held statistics buffer back: the driver refills it.
    fn request_stats(&mut self) {
        let Some(stats) = &mut self.stats else {
            return;
        };
        if return_held_stats(&self.mem, &mut stats.queue, &mut self.held_stats) {
            signal_used(&self.mem, &mut stats.queue, &self.interrupt);
        }
    }
}

/// Gives back the pages each available inflate request names (see
/// [`inflated_pfns`] and [`page_runs`]) and completes it; `give_back`
/// false only completes. The pages are given back before the request is
/// completed, so the guest cannot take them back (deflate) while they
/// are being given. True if any request was completed.
pub fn process_inflate(mem: &GuestMemoryMmap, queue: &mut Queue, give_back: bool) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        if give_back {
            if let Some(pfns) = inflated_pfns(mem, chain) {
                for run in page_runs(mem, &pfns) {
                    discard(mem, run);
                }
            }
        }
        if queue.add_used(mem, head, 0).is_err() {
            break;
        }
        used_any = true;
    }
    used_any
}

/// Completes every available request: a deflate, which needs nothing
/// from the host. True if any was completed.
pub fn complete_all(mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        if queue.add_used(mem, chain.head_index(), 0).is_err() {
            break;
        }
        used_any = true;
    }
    used_any
}

/// The PFNs of an inflate request (little-endian u32s in its readable
/// buffers), or None if it is not one we take: a malformed chain, buffers
/// outside guest memory, a length that is not whole PFNs, more than
/// [`MAX_PFNS_PER_REQUEST`].
pub fn inflated_pfns(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Option<Vec<u32>> {
    if !chain_is_well_formed(&chain) {
        return None;
    }
    let mut reader = chain.reader(mem).ok()?;
    let len = reader.available_bytes();
    if len % 4 != 0 || len / 4 > MAX_PFNS_PER_REQUEST {
        return None;
    }
    let mut bytes = vec![0u8; len];
    std::io::Read::read_exact(&mut reader, &mut bytes).ok()?;
    Some(
        bytes
            .chunks_exact(4)
            .map(|pfn| u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]))
            .collect(),
    )
}

/// A run of whole 4 KiB guest pages inside one memory region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub start: GuestAddress,
    pub len: u64,
}

/// The pages `pfns` name that lie wholly in guest RAM, merged into runs
/// of consecutive pages within one region, in address order; duplicates
/// once, pages outside RAM (beyond it, in the MMIO hole) dropped.
pub fn page_runs(mem: &GuestMemoryMmap, pfns: &[u32]) -> Vec<PageRun> {
    let mut pfns = pfns.to_vec();
    pfns.sort_unstable();
    pfns.dedup();
    let mut runs: Vec<(PageRun, GuestAddress)> = Vec::new();
    for pfn in pfns {
        let start = GuestAddress(u64::from(pfn) << PAGE_SHIFT);
        let Some(region) = region_holding_page(mem, start) else {
            continue;
        };
        match runs.last_mut() {
            Some((run, base))
                if *base == region && run.start.0.checked_add(run.len) == Some(start.0) =>
            {
                run.len += PAGE_SIZE;
            }
            _ => runs.push((
                PageRun {
                    start,
                    len: PAGE_SIZE,
                },
                region,
            )),
        }
    }
    runs.into_iter().map(|(run, _)| run).collect()
}

/// The start of the region that holds the whole page at `page`, if one
/// does.
fn region_holding_page(mem: &GuestMemoryMmap, page: GuestAddress) -> Option<GuestAddress> {
    let (region, offset) = mem.to_region_addr(page)?;
    region.check_address(MemoryRegionAddress(offset.0.checked_add(PAGE_SIZE - 1)?))?;
    Some(region.start_addr())
}

/// Gives `run`'s pages back to the host: `madvise(MADV_DONTNEED)` on
/// their mapping, after which the guest reads zeros there. A failure is
/// logged and the guest goes on (it gave the pages up either way).
fn discard(mem: &GuestMemoryMmap, run: PageRun) {
    let checked = || -> Option<(*mut u8, usize)> {
        let (region, offset) = mem.to_region_addr(run.start)?;
        let len = usize::try_from(run.len).ok()?;
        region.check_address(MemoryRegionAddress(offset.0.checked_add(run.len - 1)?))?;
        Some((region.get_host_address(offset).ok()?, len))
    };
    let Some((host, len)) = checked() else {
        return;
    };
    // SAFETY: [host, host + len) lies inside one guest memory region's
    // mapping (checked above), which lives as long as the process; the
    // start is page-aligned (a whole-page guest address in a page-aligned
    // mapping). MADV_DONTNEED on this private anonymous mapping drops the
    // pages' contents, never the mapping, and guest memory is only ever
    // accessed through volatile slices and the guest itself, which then
    // read zeros: no Rust reference is invalidated.
    let rc = unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) };
    if rc != 0 {
        vmm_log!(
            Error,
            "balloon: cannot give back {len} bytes at guest address {:#x}: {}",
            run.start.0,
            std::io::Error::last_os_error()
        );
    }
}

/// Takes the driver's statistics buffers: records what each holds (up to
/// [`MAX_STATS_LEN`]) and keeps the last one in `held` to hand back when
/// fresh statistics are wanted. A buffer already held when another comes
/// (a driver that does not follow the protocol) is handed back at once.
/// A head index beyond the queue could never be handed back: the queue
/// stops there, as the other queues stop at a completion that fails.
/// True if a buffer was handed back.
pub fn take_stats(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    held: &mut Option<u16>,
    shared: &SharedBalloon,
) -> bool {
    let mut returned = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        if head >= queue.size() {
            break;
        }
        if let Some(bytes) = stats_bytes(mem, chain) {
            shared.record_stats(&bytes);
        }
        if let Some(previous) = held.replace(head) {
            if queue.add_used(mem, previous, 0).is_err() {
                break;
            }
            returned = true;
        }
    }
    returned
}

/// The bytes of a statistics buffer, or None if it is malformed or
/// larger than [`MAX_STATS_LEN`].
fn stats_bytes(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Vec<u8>> {
    if !chain_is_well_formed(&chain) {
        return None;
    }
    let mut reader = chain.reader(mem).ok()?;
    let len = reader.available_bytes();
    if len > MAX_STATS_LEN {
        return None;
    }
    let mut bytes = vec![0u8; len];
    std::io::Read::read_exact(&mut reader, &mut bytes).ok()?;
    Some(bytes)
}

/// Hands the held statistics buffer back (used, 0 bytes written). True
/// if there was one.
pub fn return_held_stats(mem: &GuestMemoryMmap, queue: &mut Queue, held: &mut Option<u16>) -> bool {
    match held.take() {
        Some(head) => queue.add_used(mem, head, 0).is_ok(),
        None => false,
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data: small, known values
mod tests {
    use super::*;
    use crate::devices::IrqLine;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;
    use vmm_sys_util::eventfd::EventFd;

    const NEXT: u16 = 1; // VRING_DESC_F_NEXT
    const WRITE: u16 = 2; // VRING_DESC_F_WRITE
    const MIB: u64 = 1 << 20;

    /// 1 MiB at 0 and 1 MiB at 2 MiB: a hole between, as the MMIO gap.
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MIB as usize),
            (GuestAddress(2 * MIB), MIB as usize),
        ])
        .unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn pfn(addr: u64) -> u32 {
        u32::try_from(addr >> PAGE_SHIFT).unwrap()
    }

    fn write_pfns(mem: &GuestMemoryMmap, at: u64, pfns: &[u32]) -> u32 {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        u32::try_from(bytes.len()).unwrap()
    }

    fn fill(mem: &GuestMemoryMmap, addr: u64) {
        mem.write_slice(&[0xa5; PAGE_SIZE as usize], GuestAddress(addr))
            .unwrap();
    }

    fn is_zero(mem: &GuestMemoryMmap, addr: u64) -> bool {
        let mut page = [0xffu8; PAGE_SIZE as usize];
        mem.read_slice(&mut page, GuestAddress(addr)).unwrap();
        page.iter().all(|&b| b == 0)
    }

    fn balloon(
        amount_mib: u32,
        deflate_on_oom: bool,
        stats: u16,
        memory_mib: u64,
    ) -> SharedBalloon {
        let config = BalloonConfig {
            amount_mib,
            deflate_on_oom,
            stats_polling_interval_s: stats,
        };
        SharedBalloon::new(&config, memory_mib).unwrap()
    }

    fn shared(stats_interval_s: u16) -> SharedBalloon {
        balloon(0, false, stats_interval_s, 3)
    }

    #[test]
    fn pfns_outside_ram_are_dropped_and_the_rest_merged_into_runs() {
        let mem = memory();
        let page = |addr: u64| pfn(addr);
        let pfns = [
            page(0x1_0000),
            page(0x1_1000),
            page(0x1_1000), // twice
            page(0x1_2000),
            page(0x5_0000),
            page(MIB - PAGE_SIZE), // the last page of the first region
            page(MIB),             // the hole
            page(2 * MIB),         // the first page of the second region
            page(3 * MIB),         // just past RAM
            u32::MAX,
            0,
        ];
        let runs = page_runs(&mem, &pfns);
        let run = |start: u64, pages: u64| PageRun {
            start: GuestAddress(start),
            len: pages * PAGE_SIZE,
        };
        assert_eq!(
            runs,
            [
                run(0, 1),
                run(0x1_0000, 3),
                run(0x5_0000, 1),
                // Consecutive addresses across the hole would not be
                // merged either: regions are never joined.
                run(MIB - PAGE_SIZE, 1),
                run(2 * MIB, 1),
            ]
        );
        assert!(page_runs(&mem, &[]).is_empty());
        assert!(page_runs(&mem, &[u32::MAX, page(MIB + PAGE_SIZE)]).is_empty());
    }

    #[test]
    fn adjacent_regions_are_not_merged() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), MIB as usize),
            (GuestAddress(MIB), MIB as usize),
        ])
        .unwrap();
        let runs = page_runs(&mem, &[pfn(MIB - PAGE_SIZE), pfn(MIB)]);
        assert_eq!(runs.len(), 2, "{runs:?}");
    }

    #[test]
    fn inflated_pages_are_given_back_and_garbage_skipped() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let data = [0x1_0000, 0x1_1000, 0x1_3000, 2 * MIB + 0x4000];
        for &addr in &data {
            fill(&mem, addr);
        }
        fill(&mem, 0x1_2000); // not named: must keep its contents
        let mut pfns: Vec<u32> = data.iter().map(|&a| pfn(a)).collect();
        pfns.extend([u32::MAX, pfn(MIB + 0x1000), pfn(4 * MIB)]);
        let len = write_pfns(&mem, 0x8000, &pfns);
        vq.build_desc_chain(&[desc(0x8000, len, 0, 0)]).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(process_inflate(&mem, &mut queue, true));
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
        for addr in data {
            assert!(is_zero(&mem, addr), "{addr:#x} given back");
        }
        assert!(!is_zero(&mem, 0x1_2000), "a page not named is untouched");
    }

    #[test]
    fn requests_we_do_not_take_are_completed_without_giving_back() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        fill(&mem, 0x1_0000);
        let one = write_pfns(&mem, 0x8000, &[pfn(0x1_0000)]);
        let many = write_pfns(&mem, 0x9000, &vec![pfn(0x1_0000); MAX_PFNS_PER_REQUEST + 1]);
        vq.add_desc_chains(
            &[
                // Not whole PFNs.
                desc(0x8000, one - 1, 0, 0),
                // Too many PFNs.
                desc(0x9000, many, 0, 0),
                // The PFN array outside guest memory.
                desc(0xffff_f000, one, 0, 0),
                // A write-only buffer: no PFNs at all.
                desc(0x8000, one, WRITE, 0),
                // A chain that points at itself.
                desc(0x8000, one, NEXT, 4),
            ],
            0,
        )
        .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(process_inflate(&mem, &mut queue, true));
        assert_eq!(vq.used().idx().load(), 5, "every request completed");
        assert!(!is_zero(&mem, 0x1_0000), "nothing was given back");
        // With hugetlbfs memory nothing is given back either.
        let vq = MockSplitQueue::new(&mem, 16);
        vq.build_desc_chain(&[desc(0x8000, one, 0, 0)]).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(process_inflate(&mem, &mut queue, false));
        assert!(!is_zero(&mem, 0x1_0000));
        assert!(gives_back(&mem));
    }

    #[test]
    fn a_garbage_ring_neither_crashes_nor_hangs() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let mut queue: Queue = vq.create_queue().unwrap();
        // The driver claims far more requests than the ring holds.
        vq.avail().idx().store(u16::MAX);
        assert!(!process_inflate(&mem, &mut queue, true));
        assert!(!complete_all(&mem, &mut queue));
        let mut held = None;
        assert!(!take_stats(&mem, &mut queue, &mut held, &shared(1)));
        assert_eq!(held, None);
        // A head index beyond the table.
        let vq = MockSplitQueue::new(&mem, 16);
        vq.avail().ring().ref_at(0).unwrap().store(200);
        vq.avail().idx().store(1);
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(!process_inflate(&mem, &mut queue, true));
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(!take_stats(&mem, &mut queue, &mut held, &shared(1)));
        assert_eq!(
            held, None,
            "a buffer that cannot be handed back is not held"
        );
    }

    #[test]
    fn deflates_are_completed() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let len = write_pfns(&mem, 0x8000, &[pfn(0x1_0000)]);
        vq.add_desc_chains(&[desc(0x8000, len, 0, 0), desc(0x8000, len, 0, 0)], 0)
            .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(complete_all(&mem, &mut queue));
        assert_eq!(vq.used().idx().load(), 2);
    }

    fn stat_bytes(stats: &[(u16, u64)]) -> Vec<u8> {
        stats
            .iter()
            .flat_map(|(tag, value)| {
                let mut record = tag.to_le_bytes().to_vec();
                record.extend(value.to_le_bytes());
                record
            })
            .collect()
    }

    #[test]
    fn statistics_are_parsed_with_firecrackers_names() {
        let bytes = stat_bytes(&[(4, 100), (5, 256 * MIB), (99, 7), (15, 3)]);
        let parsed: Vec<_> = parse_stats(&bytes).collect();
        assert_eq!(parsed, [(4, 100), (5, 256 * MIB), (99, 7), (15, 3)]);
        // A trailing partial record is ignored.
        assert_eq!(parse_stats(&bytes[..bytes.len() - 1]).count(), 3);
        let mut stats = GuestStats::default();
        for (tag, value) in parsed {
            stats.record(tag, value);
        }
        assert!(!stats.record(16, 1));
        let json = serde_json::to_value(BalloonStats {
            target_pages: 512,
            target_mib: 2,
            guest: stats,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"target_pages": 512, "actual_pages": 0, "target_mib": 2,
                "actual_mib": 0, "free_memory": 100, "total_memory": 256 * MIB,
                "direct_reclaim": 3})
        );
        let names = [
            "swap_in",
            "swap_out",
            "major_faults",
            "minor_faults",
            "free_memory",
            "total_memory",
            "available_memory",
            "disk_caches",
            "hugetlb_allocations",
            "hugetlb_failures",
            "oom_kill",
            "alloc_stall",
            "async_scan",
            "direct_scan",
            "async_reclaim",
            "direct_reclaim",
        ];
        let mut all = GuestStats::default();
        for tag in 0..16u16 {
            assert!(all.record(tag, u64::from(tag)));
        }
        let json = serde_json::to_value(all).unwrap();
        for (tag, name) in names.iter().enumerate() {
            assert_eq!(json[name], tag, "{name}");
        }
    }

    #[test]
    fn the_stats_buffer_is_held_until_fresh_statistics_are_wanted() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let shared = shared(1);
        let first = stat_bytes(&[(4, 1000), (5, 2000)]);
        mem.write_slice(&first, GuestAddress(0x8000)).unwrap();
        let len = u32::try_from(first.len()).unwrap();
        vq.build_desc_chain(&[desc(0x8000, len, 0, 0)]).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        let mut held = None;
        assert!(!take_stats(&mem, &mut queue, &mut held, &shared));
        assert_eq!(vq.used().idx().load(), 0, "the buffer is kept");
        assert!(held.is_some());
        let stats = shared.stats().unwrap();
        assert_eq!(stats.guest.free_memory, Some(1000));
        assert_eq!(stats.guest.total_memory, Some(2000));
        // The timer: the buffer goes back, asking for fresh statistics.
        assert!(return_held_stats(&mem, &mut queue, &mut held));
        assert_eq!(vq.used().idx().load(), 1);
        assert!(!return_held_stats(&mem, &mut queue, &mut held));
        // Two buffers at once: the first goes back, the second is held;
        // an oversized one is held but not read.
        let second = stat_bytes(&[(4, 5)]);
        mem.write_slice(&second, GuestAddress(0x9000)).unwrap();
        let big = u32::try_from(MAX_STATS_LEN + STAT_LEN).unwrap();
        vq.add_desc_chains(&[desc(0x9000, 10, 0, 0), desc(0x9000, big, 0, 0)], 1)
            .unwrap();
        assert!(take_stats(&mem, &mut queue, &mut held, &shared));
        assert_eq!(vq.used().idx().load(), 2);
        assert!(held.is_some());
        let stats = shared.stats().unwrap();
        assert_eq!(stats.guest.free_memory, Some(5), "the second was read");
        assert_eq!(stats.guest.total_memory, Some(2000), "earlier values stay");
    }

    #[test]
    fn the_driver_writes_actual_only() {
        let balloon = shared(0);
        balloon.write_config(0, &[0xff; 4]);
        balloon.write_config(4, &7u32.to_le_bytes());
        let mut config = [0u8; 8];
        read_config_bytes(&balloon.config_space(), 0, &mut config);
        assert_eq!(config, [0, 0, 0, 0, 7, 0, 0, 0]);
        // Byte-wide and straddling writes take only actual's bytes.
        balloon.write_config(5, &[1]);
        balloon.write_config(2, &[9, 9, 2, 0, 0, 0, 0, 0, 0]);
        balloon.write_config(u64::MAX, &[1, 1]);
        read_config_bytes(&balloon.config_space(), 0, &mut config);
        assert_eq!(config, [0, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn the_target_changes_only_on_a_running_device_and_within_memory() {
        let balloon = balloon(1, false, 0, 4);
        assert_eq!(balloon.target_mib(), 1);
        assert_eq!(
            balloon.set_target_mib(2),
            Err(BalloonError::DeviceNotActive)
        );
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(IrqLine(fd.try_clone().unwrap())));
        balloon.activate(interrupt.clone());
        assert_eq!(balloon.set_target_mib(4), Ok(()));
        assert_eq!(balloon.target_mib(), 4);
        assert_eq!(interrupt.status(), super::super::INTERRUPT_CONFIG_CHANGE);
        assert_eq!(balloon.generation(), 1);
        assert_eq!(
            balloon.set_target_mib(5),
            Err(BalloonError::TooMuchMemoryRequested(4))
        );
        assert_eq!(
            BalloonError::TooMuchMemoryRequested(4).to_string(),
            "Requested memory should be less than 4MiB"
        );
        assert_eq!(balloon.target_mib(), 4);
        balloon.deactivate();
        assert_eq!(
            balloon.set_target_mib(0),
            Err(BalloonError::DeviceNotActive)
        );
    }

    #[test]
    fn statistics_stay_on_or_off() {
        let off = shared(0);
        assert_eq!(off.stats(), Err(BalloonError::StatisticsDisabled));
        assert_eq!(
            BalloonError::StatisticsDisabled.to_string(),
            "Received stats query when stats are disabled."
        );
        assert_eq!(off.set_stats_interval(0), Ok(()));
        assert_eq!(
            off.set_stats_interval(1),
            Err(BalloonError::StatisticsStateChange)
        );
        let on = shared(1);
        assert_eq!(
            on.set_stats_interval(0),
            Err(BalloonError::StatisticsStateChange)
        );
        assert_eq!(on.set_stats_interval(5), Ok(()));
        assert!(on.stats().is_ok());
    }

    #[test]
    fn features_and_queues_follow_the_configuration() {
        let plain = Balloon::new(shared(0));
        assert_eq!(plain.features(), VIRTIO_F_VERSION_1);
        assert_eq!(plain.queue_max_sizes().len(), 2);
        let all = Balloon::new(balloon(0, true, 1, 3));
        assert_eq!(
            all.features(),
            VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_DEFLATE_ON_OOM
        );
        assert_eq!(all.queue_max_sizes(), [QUEUE_SIZE; 3]);
        assert_eq!(all.device_type(), 5);
    }
}
