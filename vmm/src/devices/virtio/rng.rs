//! virtio-rng: entropy from the host's getrandom(2).
//!
//! With a rate limiter (the `rate_limiter` of `PUT /entropy`), each request
//! is charged one op and the bytes it will get (its writable length, at
//! most [`MAX_REQUEST_BYTES`]) before it is served; a request the limiter
//! holds back goes back to the available ring until the limiter's timer
//! fires (see [`crate::rate_limiter`]).

use std::io::Write;
use std::sync::Arc;

use crate::vstate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::worker::Worker;
use super::{
    chain_is_well_formed, expect_queues, len_u32, signal_used, stop_worker, ActivateError,
    ActiveQueue, Interrupt, SharedMemory, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1,
};
use crate::rate_limiter::SharedRateLimiter;
use crate::seccomp::ThreadKind;

const QUEUE_SIZES: &[u16] = &[256];
/// The most bytes one request gets: a guest asking for gigabytes must not
/// keep the worker busy.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    worker: Option<Worker>,
    limiter: Option<SharedRateLimiter>,
}

impl Rng {
    /// An entropy device without a rate limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// An entropy device whose requests `limiter` meters.
    pub fn with_rate_limiter(limiter: SharedRateLimiter) -> Self {
        Self {
            worker: None,
            limiter: Some(limiter),
        }
    }
}

/// Fills each writable buffer of every available request with random
/// bytes. A malformed request (outside guest memory, no writable buffer)
/// completes with 0 bytes; the device goes on.
pub fn process_queue(mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
    process_metered_queue(mem, queue, None)
}

/// [`process_queue`], charging each request to `limiter` first: one op
/// and the bytes it asks for (at most MAX_REQUEST_BYTES). Stops at the
/// first request the limiter holds back, which goes back to the queue.
fn process_metered_queue(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    limiter: Option<&SharedRateLimiter>,
) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        if let Some(limiter) = limiter {
            let asked = chain
                .clone()
                .filter(|d| d.is_write_only())
                .map(|d| u64::from(d.len()))
                .sum::<u64>()
                .min(MAX_REQUEST_BYTES as u64);
            if !limiter.consume(1, asked) {
                queue.go_to_previous_position();
                break;
            }
        }
        let written = if chain_is_well_formed(&chain) {
            chain
                .writer(mem)
                .map(|mut writer| fill_random(&mut writer))
                .unwrap_or(0)
        } else {
            0
        };
        if queue.add_used(mem, head, written).is_err() {
            break;
        }
        used_any = true;
    }
    used_any
}

fn fill_random(out: &mut impl Write) -> u32 {
    let mut chunk = [0u8; 4096];
    let mut total = 0usize;
    while total < MAX_REQUEST_BYTES {
        // SAFETY: getrandom writes at most `chunk.len()` bytes into `chunk`.
        let n = unsafe { libc::getrandom(chunk.as_mut_ptr().cast(), chunk.len(), 0) };
        let Ok(n) = usize::try_from(n) else { break };
        match out.write(&chunk[..n]) {
            Ok(0) | Err(_) => break,
            Ok(w) => total += w,
        }
    }
    // Below MAX_REQUEST_BYTES plus one chunk.
    len_u32(total)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: SharedMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let [active] = expect_queues::<1>(queues)?;
        let mut queue = active.queue;
        let worker = match self.limiter.clone() {
            None => Worker::spawn(
                "virtio-rng",
                ThreadKind::Rng,
                vec![active.notify],
                move |_| {
                    if process_queue(&mem, &mut queue) {
                        signal_used(&mem, &mut queue, &interrupt);
                    }
                },
            ),
            Some(limiter) => {
                let metered = limiter.clone();
                Worker::spawn_metered(
                    "virtio-rng",
                    ThreadKind::Rng,
                    active.notify,
                    limiter,
                    move || {
                        if process_metered_queue(&mem, &mut queue, Some(&metered)) {
                            signal_used(&mem, &mut queue, &interrupt);
                        }
                    },
                )
            }
        }
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
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
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE
    const NEXT: u16 = 1; // VRING_DESC_F_NEXT

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    #[test]
    fn fills_writable_buffers_with_random_bytes() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.build_desc_chain(&[desc(0x8000, 256, WRITE, 0)]).unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        assert!(process_queue(&mem, &mut queue));
        let used = vq.used();
        assert_eq!(used.idx().load(), 1);
        assert_eq!(used.ring().ref_at(0).unwrap().load().len(), 256);
        let mut bytes = [0u8; 256];
        mem.read_slice(&mut bytes, GuestAddress(0x8000)).unwrap();
        assert!(bytes.iter().any(|&b| b != 0));
    }

    #[test]
    fn a_metered_queue_stops_where_its_limiter_blocks() {
        use crate::vmm_config::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.add_desc_chains(
            &[
                desc(0x8000, 256, WRITE, 0),
                desc(0x9000, 256, WRITE, 0),
                desc(0xa000, 256, WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        // 512 bytes per hour: two requests of 256, then the third waits.
        let limiter = SharedRateLimiter::from_config(Some(&RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 512,
                one_time_burst: None,
                refill_time: 3_600_000,
            }),
            ops: None,
        }))
        .unwrap();
        assert!(process_metered_queue(&mem, &mut queue, Some(&limiter)));
        assert_eq!(vq.used().idx().load(), 2);
        assert!(limiter.is_blocked());
        assert!(!process_metered_queue(&mem, &mut queue, Some(&limiter)));
        // Unmetered, the held request is served.
        assert!(process_queue(&mem, &mut queue));
        assert_eq!(vq.used().idx().load(), 3);
    }

    #[test]
    fn hostile_chains_complete_with_zero_bytes() {
        let mem = memory();
        let vq = MockSplitQueue::new(&mem, 16);
        // A buffer outside guest memory, then a read-only one, then a
        // chain that points at itself.
        vq.add_desc_chains(
            &[
                desc(0xffff_0000, 4096, WRITE, 0),
                desc(0x8000, 64, 0, 0),
                desc(0x9000, 64, WRITE | NEXT, 2),
            ],
            0,
        )
        .unwrap();
        let mut queue: Queue = vq.create_queue().unwrap();
        process_queue(&mem, &mut queue);
        let used = vq.used();
        assert_eq!(used.idx().load(), 3, "every request completed");
        for i in 0..used.idx().load() {
            assert_eq!(
                used.ring().ref_at(i.into()).unwrap().load().len(),
                0,
                "request {i}"
            );
        }
    }
}
