//! The boot timer: the guest's init writes [`MAGIC`] to this MMIO byte
//! once userspace is up (`devmem 0xd0ff0000 8 123`), and the VMM records
//! the time since it started building the VM — the guest-measured boot
//! time `GET /stratum/stats` reports. Firecracker has the same device,
//! with the same magic value and log line, at its own address and only
//! with `--boot-timer`; with that flag ours answers there too
//! ([`FIRECRACKER_BOOT_TIMER_ADDR`]), so Firecracker's guests are timed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::devices::BusDevice;

/// Guest-physical address of the register: in the MMIO gap, clear of the
/// virtio windows below it.
pub const BOOT_TIMER_ADDR: u64 = 0xd0ff_0000;
pub const BOOT_TIMER_LEN: u64 = 0x1000;
/// Where Firecracker's guests write: the first page of its 32-bit MMIO
/// space, the start of our MMIO gap (nothing else of ours is there).
pub const FIRECRACKER_BOOT_TIMER_ADDR: u64 = crate::arch::layout::MMIO_GAP_START;
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
    /// The process's CPU time at `start`, in µs.
    start_cpu_us: u64,
    boot_time: BootTime,
}

impl BootTimer {
    pub fn new(start: Instant, boot_time: BootTime) -> Self {
        Self {
            start,
            start_cpu_us: process_cpu_us(),
            boot_time,
        }
    }
}

/// The CPU time this process has used, in µs.
fn process_cpu_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which lives
    // for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
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
        let cpu_us = process_cpu_us().saturating_sub(self.start_cpu_us);
        // Firecracker's line, word for word: its tools parse it.
        crate::vmm_log!(
            Info,
            "Guest-boot-time = {us:>6} us {} ms, {cpu_us:>6} CPU us {} CPU ms",
            us / 1000,
            cpu_us / 1000
        );
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
