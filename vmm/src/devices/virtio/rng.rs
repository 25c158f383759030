//! virtio-rng: entropy from the host's getrandom(2).

use std::io::Write;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::worker::Worker;
use super::{
    chain_is_well_formed, expect_queues, len_u32, signal_used, stop_worker, ActivateError,
    ActiveQueue, Interrupt, SharedMemory, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1,
};

const QUEUE_SIZES: &[u16] = &[256];
/// The most bytes one request gets: a guest asking for gigabytes must not
/// keep the worker busy.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    worker: Option<Worker>,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Fills each writable buffer of every available request with random
/// bytes. A malformed request (outside guest memory, no writable buffer)
/// completes with 0 bytes; the device goes on.
pub fn process_queue(mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
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
        let worker = Worker::spawn("virtio-rng", vec![active.notify], move |_| {
            if process_queue(&mem, &mut queue) {
                signal_used(&mem, &mut queue, &interrupt);
            }
        })
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        stop_worker(&mut self.worker)
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
