//! The virtio-mmio transport, version 2 (virtio 1.1, section 4.2.2).
//!
//! Register accesses are 32 bits wide; anything else below the
//! configuration space is ignored (reads return 0), as is any write that
//! the current device status does not allow. A driver can therefore not
//! bring the transport into a state it does not expect: the worst it can do
//! is fail its own initialisation.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueue, Interrupt, SharedMemory, VirtioDevice};
use crate::devices::BusDevice;

/// Size of one device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of QueueNotify, where KVM's ioeventfds listen.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5354_5241; // "STRA"
const CONFIG_SPACE_OFFSET: u64 = 0x100;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
const STATUS_FAILED: u32 = 128;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: SharedMemory,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    notify: Vec<EventFd>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid queue size for a virtio device: {0}")]
    Queue(String),
    #[error("cannot create a queue notification eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot read the used ring of queue {queue} at {addr:#x} from guest memory")]
    UsedRing { queue: usize, addr: u64 },
    #[error(
        "the snapshot's transport is of device type {found}, the device is of type {expected}"
    )]
    DeviceType { expected: u32, found: u32 },
    #[error("the snapshot's transport has {found} queues, the device has {expected}")]
    QueueCount { expected: usize, found: usize },
    #[error("the snapshot's queue {queue} is invalid: {reason}")]
    BadQueue { queue: usize, reason: String },
    #[error("the restored device could not start again (it needs a reset)")]
    Reactivate,
}

/// A queue as the driver set it up, and where the device is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
}

/// The transport's registers and its queues, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    pub device_type: u32,
    pub queue_select: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub driver_features: u64,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub activated: bool,
    pub queues: Vec<QueueSnapshot>,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: SharedMemory,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, Error> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|e| Error::Queue(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let notify = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            notify,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The transport's state. The device's worker must be paused (see
    /// the rule in [`super`]): a ready queue's position is then the used
    /// ring's index in guest memory, for both the available and the used
    /// side.
    pub fn state(&self) -> Result<MmioTransportState, Error> {
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, queue)| {
                let position = if self.activated && queue.ready() {
                    self.used_index(index, queue.used_ring())?
                } else {
                    0
                };
                Ok(QueueSnapshot {
                    size: queue.size(),
                    ready: queue.ready(),
                    desc_table: queue.desc_table(),
                    avail_ring: queue.avail_ring(),
                    used_ring: queue.used_ring(),
                    next_avail: position,
                    next_used: position,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(MmioTransportState {
            device_type: self.device.device_type(),
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues,
        })
    }

    /// The `idx` field of a used ring (after its 16-bit `flags`).
    fn used_index(&self, queue: usize, used_ring: u64) -> Result<u16, Error> {
        let addr = used_ring.wrapping_add(2);
        let mut idx = [0u8; 2];
        self.mem
            .read_slice(&mut idx, GuestAddress(addr))
            .map_err(|_| Error::UsedRing { queue, addr })?;
        Ok(u16::from_le_bytes(idx))
    }

    /// A transport for `device` (built as the snapshotted one was) set to
    /// `state`: its registers, the features the driver accepted, its
    /// queues where the device had got to, the interrupt bits the driver
    /// had not acknowledged (raised again), and the device started again
    /// if it ran. Nothing in `state` is trusted: a queue the device could
    /// not have had is an error, not a device in an impossible state.
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: SharedMemory,
        interrupt: Arc<Interrupt>,
        state: &MmioTransportState,
    ) -> Result<Self, Error> {
        let mut transport = Self::new(device, mem, interrupt)?;
        let expected = transport.device.device_type();
        if state.device_type != expected {
            return Err(Error::DeviceType {
                expected,
                found: state.device_type,
            });
        }
        if state.queues.len() != transport.queues.len() {
            return Err(Error::QueueCount {
                expected: transport.queues.len(),
                found: state.queues.len(),
            });
        }
        for (index, (queue, saved)) in transport.queues.iter_mut().zip(&state.queues).enumerate() {
            let restored = QueueState {
                max_size: queue.max_size(),
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: false,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            };
            *queue = Queue::try_from(restored).map_err(|e| Error::BadQueue {
                queue: index,
                reason: e.to_string(),
            })?;
        }
        transport.queue_select = state.queue_select;
        transport.device_features_select = state.device_features_select;
        transport.driver_features_select = state.driver_features_select;
        transport.driver_features = state.driver_features & transport.device.features();
        transport.status = state.status;
        transport.config_generation = state.config_generation;
        if state.status & STATUS_FEATURES_OK != 0 {
            transport.device.ack_features(transport.driver_features);
        }
        if state.activated {
            transport.activate();
            if !transport.activated {
                return Err(Error::Reactivate);
            }
            // Each worker looks at its queues once: a buffer the device
            // held when it was saved (the balloon's statistics buffer) is
            // available again, and no notification will come for it.
            for notify in &transport.notify {
                let _ = notify.write(1);
            }
        }
        transport.interrupt.restore(state.interrupt_status);
        Ok(transport)
    }

    /// The device, for what a restore or a snapshot asks of it.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The eventfd of each queue, for KVM to signal on QueueNotify writes.
    pub fn queue_notify_events(&self) -> &[EventFd] {
        &self.notify
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        // Queues are configured only between FEATURES_OK and DRIVER_OK.
        if self.status & STATUS_FEATURES_OK == 0 || self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let selected = self.queues.get(self.queue_select as usize);
        match offset {
            0x00 => MAGIC_VALUE,
            0x04 => MMIO_VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_select {
                0 => (self.device.features() & 0xffff_ffff) as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => selected.map_or(0, |q| u32::from(q.max_size())),
            0x44 => selected.map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            // The driver's config writes and the device's own changes.
            0xfc => self
                .config_generation
                .wrapping_add(self.device.config_generation()),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x14 => self.device_features_select = value,
            0x20 => self.write_driver_features(value),
            0x24 => self.driver_features_select = value,
            0x30 => self.queue_select = value,
            // A size beyond 16 bits is beyond any queue's maximum: ignored,
            // as the queue ignores every other invalid size.
            0x38 => {
                if let Ok(size) = u16::try_from(value) {
                    self.with_queue(|q| q.set_size(size));
                }
            }
            0x44 => self.with_queue(|q| q.set_ready(value == 1)),
            // A notification KVM did not take as an ioeventfd (a queue
            // index with no eventfd): nothing listens, so it is dropped.
            QUEUE_NOTIFY_OFFSET => {
                if let Some(event) = self.notify.get(value as usize) {
                    let _ = event.write(1);
                }
            }
            0x64 => self.interrupt.acknowledge(value),
            0x70 => self.write_status(value),
            0x80 => self.with_queue(|q| q.set_desc_table_address(Some(value), None)),
            0x84 => self.with_queue(|q| q.set_desc_table_address(None, Some(value))),
            0x90 => self.with_queue(|q| q.set_avail_ring_address(Some(value), None)),
            0x94 => self.with_queue(|q| q.set_avail_ring_address(None, Some(value))),
            0xa0 => self.with_queue(|q| q.set_used_ring_address(Some(value), None)),
            0xa4 => self.with_queue(|q| q.set_used_ring_address(None, Some(value))),
            _ => {}
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(queue) = self.selected_queue() {
            f(queue);
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features are negotiated after DRIVER and before FEATURES_OK.
        if self.status & STATUS_DRIVER == 0 || self.status & STATUS_FEATURES_OK != 0 {
            return;
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let mask = 0xffff_ffffu64 << shift;
        let offered = self.device.features();
        self.driver_features =
            (self.driver_features & !mask) | ((u64::from(value) << shift) & offered);
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, one step at a time (virtio 3.1.1).
        if value & self.status != self.status {
            return;
        }
        let added = value & !self.status;
        match added {
            STATUS_ACKNOWLEDGE if self.status == 0 => self.status = value,
            STATUS_DRIVER if self.status == STATUS_ACKNOWLEDGE => self.status = value,
            STATUS_FEATURES_OK if self.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER => {
                self.device.ack_features(self.driver_features);
                self.status = value;
            }
            STATUS_DRIVER_OK
                if self.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK =>
            {
                self.status = value;
                self.activate();
            }
            STATUS_FAILED => self.status = value,
            _ => {}
        }
    }

    fn activate(&mut self) {
        let mem = self.mem.clone();
        let ready: Vec<bool> = self.queues.iter().map(|q| q.ready()).collect();
        let valid = self
            .queues
            .iter()
            .zip(&ready)
            .all(|(q, &ready)| !ready || q.is_valid(mem.as_ref()));
        if !valid {
            self.needs_reset();
            return;
        }
        let mut queues = Vec::new();
        for (queue, notify) in self.queues.iter().zip(&self.notify) {
            if !queue.ready() {
                continue;
            }
            // The device gets its own copy; the transport keeps the
            // configuration the driver may read back.
            match (Queue::try_from(queue.state()), notify.try_clone()) {
                (Ok(queue), Ok(notify)) => queues.push(ActiveQueue { queue, notify }),
                _ => return self.needs_reset(),
            }
        }
        match self.device.activate(mem, self.interrupt.clone(), queues) {
            Ok(()) => self.activated = true,
            Err(_) => self.needs_reset(),
        }
    }

    /// The device cannot go on with the driver's setup: it says so and
    /// waits for the driver to reset it.
    fn needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        if self.activated && !self.device.reset() {
            self.needs_reset();
            return;
        }
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt.acknowledge(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        data.fill(0);
        if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.device.write_config(offset - CONFIG_SPACE_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Rng;
    use crate::devices::IrqLine;
    use crate::vstate::memory::GuestMemoryMmap;
    use vm_memory::GuestAddress;

    fn transport() -> MmioTransport {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let line = IrqLine(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        MmioTransport::new(
            Box::new(Rng::new()),
            Arc::new(mem),
            Arc::new(Interrupt::new(line)),
        )
        .unwrap()
    }

    fn write(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    #[test]
    fn a_queue_size_beyond_16_bits_is_ignored_not_truncated() {
        let mut t = transport();
        for status in [1, 1 | 2, 1 | 2 | 8] {
            write(&mut t, 0x70, status);
        }
        let max = t.queues[0].max_size();
        // Truncated to 16 bits this would be 16, a valid size.
        write(&mut t, 0x38, 0x1_0010);
        assert_eq!(t.queues[0].size(), max);
        write(&mut t, 0x38, 16);
        assert_eq!(t.queues[0].size(), 16);
    }
}
