//! The boot timer: the guest's init writes [`MAGIC`] to this MMIO byte
//! once userspace is up (`devmem 0xd0ff0000 8 123`), and the VMM records
//! the time since it started building the VM — the guest-measured boot
//! time `GET /stratum/stats` reports. Firecracker has the same device,
//! with the same magic value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::devices::BusDevice;

/// Guest-physical address of the register: in the MMIO gap, clear of the
/// virtio windows below it.
pub const BOOT_TIMER_ADDR: u64 = 0xd0ff_0000;
pub const BOOT_TIMER_LEN: u64 = 0x1000;
pub const MAGIC: u8 = 123;

/// Microseconds from VM build start to the guest's signal; 0 until then.
#[derive(Clone, Default)]
pub struct BootTime(Arc<AtomicU64>);

impl BootTime {
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&us| us != 0)
    }
}

pub struct BootTimer {
    start: Instant,
    boot_time: BootTime,
}

impl BootTimer {
    pub fn new(start: Instant, boot_time: BootTime) -> Self {
        Self { start, boot_time }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&MAGIC) || self.boot_time.get().is_some() {
            return;
        }
        let us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.boot_time.0.store(us.max(1), Ordering::Relaxed);
        crate::vmm_log!(Info, "Guest-boot-time = {us:>6} us {} ms", us / 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_magic_write_counts() {
        let boot_time = BootTime::default();
        let mut timer = BootTimer::new(Instant::now(), boot_time.clone());
        timer.write(0, &[7]);
        timer.write(4, &[MAGIC]);
        assert_eq!(boot_time.get(), None);
        std::thread::sleep(std::time::Duration::from_millis(2));
        timer.write(0, &[MAGIC, 0, 0, 0]);
        let first = boot_time.get().expect("recorded");
        assert!(first >= 2000, "{first}");
        timer.write(0, &[MAGIC]);
        assert_eq!(boot_time.get(), Some(first));
    }
}
