//! Guest RAM: anonymous private mappings, one per range around the MMIO hole.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::layout::ram_ranges;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot map {mib} MiB of guest memory: {reason}")]
    Map { mib: u64, reason: String },
}

/// Maps `mem_size` bytes of guest RAM. Pages are only backed by host memory
/// once the guest touches them.
pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, Error> {
    let map_error = |reason: String| Error::Map {
        mib: mem_size >> 20,
        reason,
    };
    let ranges = ram_ranges(mem_size)
        .into_iter()
        .map(|r| {
            usize::try_from(r.size)
                .map(|size| (GuestAddress(r.start), size))
                .map_err(|_| map_error("size exceeds the address space".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| map_error(e.to_string()))
}
