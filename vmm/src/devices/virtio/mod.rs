//! virtio devices on the virtio-mmio transport (virtio 1.x).
//!
//! The transport ([`mmio::MmioTransport`]) owns the registers the driver
//! programs and the queues' configuration; when the driver sets DRIVER_OK
//! it hands the ready queues, each with the eventfd KVM signals on a
//! QueueNotify write (ioeventfd), to the device's `activate`. Each device
//! owns a worker thread that waits on those eventfds, processes requests
//! and raises the device's interrupt through an irqfd: no vCPU exit is
//! taken on the data path.
//!
//! A rule every device keeps, which snapshots rely on: a handler run
//! completes every descriptor chain it pops (adds it to the used ring) or
//! puts it back (`go_to_previous_position`) before it returns. Between two
//! runs, then, a queue's next available and next used positions are both
//! the used ring's index in guest memory, and a paused device's queues are
//! saved from guest memory alone (see [`mmio::MmioTransport::state`]).

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod tap;
pub mod vsock;
pub mod worker;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::vstate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::IrqLine;

/// Device IDs (virtio 1.1, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;

/// The device speaks virtio 1.x (no legacy interface).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits of the virtio-mmio InterruptStatus register.
pub const INTERRUPT_USED_RING: u32 = 0x1;
pub const INTERRUPT_CONFIG_CHANGE: u32 = 0x2;

/// Guest memory as device workers share it.
pub type SharedMemory = Arc<GuestMemoryMmap>;

/// A device's interrupt: the InterruptStatus bits the driver reads and
/// acknowledges, and the irqfd that raises the IRQ.
pub struct Interrupt {
    status: AtomicU32,
    line: IrqLine,
    raised: AtomicU64,
}

impl Interrupt {
    pub fn new(line: IrqLine) -> Self {
        Self {
            status: AtomicU32::new(0),
            line,
            raised: AtomicU64::new(0),
        }
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used_queue(&self) {
        self.signal(INTERRUPT_USED_RING);
    }

    /// Tells the driver that the configuration space or status changed.
    pub fn signal_config_change(&self) {
        self.signal(INTERRUPT_CONFIG_CHANGE);
    }

    fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.raised.fetch_add(1, Ordering::Relaxed);
        self.line.raise();
    }

    /// How many interrupts the device has raised.
    pub fn raised(&self) -> u64 {
        self.raised.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the bits a snapshot saved and, if any is set, raises the line
    /// again: the driver had not yet handled that interrupt.
    pub fn restore(&self, bits: u32) {
        let bits = bits & (INTERRUPT_USED_RING | INTERRUPT_CONFIG_CHANGE);
        self.status.store(bits, Ordering::SeqCst);
        if bits != 0 {
            self.line.raise();
        }
    }
}

/// A queue the driver made ready, with the eventfd its notifications arrive on.
pub struct ActiveQueue {
    pub queue: Queue,
    pub notify: EventFd,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the device needs {expected} queues, the driver made {got} ready")]
    QueueCount { expected: usize, got: usize },
    #[error("cannot start the device worker: {0}")]
    Worker(#[source] std::io::Error),
}

/// What a virtio device implements; the transport does the rest.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// The most descriptors each queue may hold; its length is the number
    /// of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of `features`).
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// How many times the device changed its configuration space on its
    /// own (a drive's new image: a new capacity), wrapping. The transport
    /// adds it to its ConfigGeneration register, so a driver reading a
    /// field in several accesses sees that it changed meanwhile.
    fn config_generation(&self) -> u32 {
        0
    }
    /// Starts processing the queues on the device's worker.
    fn activate(
        &mut self,
        mem: SharedMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// Stops the worker so the driver can start over; false if the device
    /// cannot be reset (the driver then sees DEVICE_NEEDS_RESET).
    fn reset(&mut self) -> bool;
    /// The device's worker while it runs: a snapshot pauses it, so that
    /// nothing writes guest memory or moves a queue while the VM is saved.
    fn worker(&self) -> Option<&worker::Worker>;
    /// Called once a restored device's worker runs: what the device owes
    /// the guest after a restore (vsock tells it its connections are
    /// gone, as Firecracker's does). Nothing by default.
    fn after_restore(&mut self) {}
}

/// Whether a descriptor chain ends properly. virtio-queue stops walking a
/// chain after queue-size descriptors (a cycle), at an out-of-range `next`
/// or at an unreadable descriptor, without saying so; the chain was cut
/// short exactly when its last descriptor still points to a next one.
/// Devices fail such requests instead of processing a truncated one.
pub fn chain_is_well_formed<M>(chain: &virtio_queue::DescriptorChain<M>) -> bool
where
    M: Clone + std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    chain.clone().last().is_some_and(|desc| !desc.has_next())
}

/// The `N` queues a device needs, as an array, or the error the transport
/// turns into DEVICE_NEEDS_RESET.
pub fn expect_queues<const N: usize>(
    queues: Vec<ActiveQueue>,
) -> Result<[ActiveQueue; N], ActivateError> {
    queues
        .try_into()
        .map_err(|q: Vec<ActiveQueue>| ActivateError::QueueCount {
            expected: N,
            got: q.len(),
        })
}

/// Raises the used-buffer interrupt unless the driver suppressed it
/// (event index or NO_INTERRUPT); when that cannot be read, raises it.
pub fn signal_used(mem: &GuestMemoryMmap, queue: &mut Queue, interrupt: &Interrupt) {
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}

/// Stops a device's worker, if it runs: the reset every device does.
pub fn stop_worker(worker: &mut Option<worker::Worker>) -> bool {
    if let Some(mut worker) = worker.take() {
        worker.stop();
    }
    true
}

/// A byte count as the u32 the virtio structures carry: used-ring lengths,
/// vsock packet lengths and credit counters. Every caller's count is
/// bounded by one buffer of at most a few hundred KiB (a frame, a vsock
/// packet or buffer, a request), so this never saturates; were a count
/// ever beyond 4 GiB, saturating keeps it from wrapping to a small one.
pub fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Reads `data.len()` bytes of a configuration space at `offset`, zero
/// beyond its end, so a driver probing odd offsets gets zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn interrupt_status_is_set_and_acknowledged() {
        let fd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(IrqLine(fd.try_clone().unwrap()));
        interrupt.signal_used_queue();
        interrupt.signal_config_change();
        assert_eq!(interrupt.status(), 3);
        assert_eq!(fd.read().unwrap(), 2);
        interrupt.acknowledge(INTERRUPT_USED_RING);
        assert_eq!(interrupt.status(), INTERRUPT_CONFIG_CHANGE);
    }
}
