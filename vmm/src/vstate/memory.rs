//! Guest RAM: anonymous private mappings, one per range around the MMIO
//! hole, each placed at a 2 MiB-aligned host address and marked for
//! transparent huge pages — or, when asked (`--huge-pages`, the API's
//! `huge_pages: "2M"`), 2 MiB pages of the host's hugetlbfs pool.
//!
//! Why aligned: KVM maps a 2 MiB guest page with one 2 MiB host page only
//! when the host address and the guest address agree modulo 2 MiB and the
//! host backs it with a huge page. `mmap` gives 4 KiB alignment, so an
//! unaligned region gets 4 KiB pages throughout: a guest boot then takes
//! about 4,400 EPT faults and thousands more exits where QEMU, whose RAM
//! is 2 MiB-aligned, takes a few hundred. `MADV_HUGEPAGE` makes the range
//! eligible for THP in the kernel's `madvise` mode too (and is ignored
//! where THP is off). Pages are still only backed once the guest touches
//! them; a touched 2 MiB page is backed whole, which `make bench` reports
//! as RSS.
//!
//! The mappings live as long as the process (vmm runs one VM; vm-memory
//! does not unmap a region it did not map). Each has an inaccessible
//! reserve around it (what alignment left over), never handed out to
//! anything else.

use std::io;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::layout::ram_ranges;

/// The x86_64 huge page size THP uses.
pub const HUGE_PAGE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot map {mib} MiB of guest memory: {reason}")]
    Map { mib: u64, reason: String },
}

const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// `mmap`'s flag for 2 MiB hugetlb pages (log2 of the size, shifted).
const MAP_HUGE_2MB: i32 = 21 << libc::MAP_HUGE_SHIFT;

/// Maps `mem_size` bytes of guest RAM. Anonymous pages are only backed by
/// host memory once the guest touches them; with `hugetlb`, the whole size
/// is taken from the host's pool of 2 MiB pages at once (a pool too small
/// is an error now rather than a SIGBUS when the guest touches a page).
pub fn create_guest_memory(mem_size: u64, hugetlb: bool) -> Result<GuestMemoryMmap, Error> {
    let map_error = |reason: String| Error::Map {
        mib: mem_size >> 20,
        reason,
    };
    let regions = ram_ranges(mem_size)
        .into_iter()
        .map(|r| {
            let size = usize::try_from(r.size)
                .map_err(|_| map_error("size exceeds the address space".into()))?;
            let (host, flags) = if hugetlb {
                let host = map_hugetlb(size).map_err(|e| map_error(hugetlb_reason(&e)))?;
                (host, HUGETLB_FLAGS)
            } else {
                (
                    map_aligned(size).map_err(|e| map_error(e.to_string()))?,
                    FLAGS,
                )
            };
            // SAFETY: `host` is the start of a live mapping of `size` bytes
            // made just above with PROT and `flags`, never unmapped.
            let region = unsafe {
                MmapRegionBuilder::new(size)
                    .with_mmap_prot(PROT)
                    .with_mmap_flags(flags)
                    .with_raw_mmap_pointer(host)
            }
            .build()
            .map_err(|e| map_error(e.to_string()))?;
            GuestRegionMmap::new(region, GuestAddress(r.start))
                .ok_or_else(|| map_error("region ends past the guest address space".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_error(e.to_string()))
}

const HUGETLB_FLAGS: i32 =
    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | MAP_HUGE_2MB;

/// A mapping of `size` bytes (a whole number of 2 MiB pages) from the
/// hugetlbfs pool, 2 MiB-aligned by the kernel, its pages reserved now.
fn map_hugetlb(size: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh mapping at an address of the kernel's choice.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), size, PROT, HUGETLB_FLAGS, -1, 0) };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(addr.cast())
}

fn hugetlb_reason(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::ENOMEM) => format!(
            "not enough free 2 MiB huge pages ({error}): reserve them first, \
             e.g. echo N > /proc/sys/vm/nr_hugepages"
        ),
        _ => format!("2 MiB huge pages: {error}"),
    }
}

/// An anonymous mapping of `size` bytes at a [`HUGE_PAGE`]-aligned
/// address, advised for huge pages. `size` plus one huge page is reserved
/// inaccessible and the aligned part opened: the unaligned ends stay
/// reserved rather than unmapped, so no later mapping (a thread's stack)
/// lands in a freshly aligned 2 MiB gap and takes a huge page of its own
/// where THP is `always`, and guest RAM has guard areas on both sides.
fn map_aligned(size: usize) -> io::Result<*mut u8> {
    let len = size
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| io::Error::other("size overflows"))?;
    // SAFETY: a fresh anonymous reservation at an address of the kernel's
    // choice; nothing else is touched.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, FLAGS, -1, 0) };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let aligned = (addr as usize).next_multiple_of(HUGE_PAGE) as *mut libc::c_void;
    // SAFETY: `aligned..aligned + size` lies inside the reservation just
    // made (it has one huge page to spare); nothing refers to it yet.
    unsafe {
        if libc::mprotect(aligned, size, PROT) != 0 {
            let error = io::Error::last_os_error();
            libc::munmap(addr, len);
            return Err(error);
        }
        // EINVAL where THP is not built in: the memory works without it.
        libc::madvise(aligned, size, libc::MADV_HUGEPAGE);
    }
    Ok(aligned.cast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

    fn host_start(region: &GuestRegionMmap) -> usize {
        region.get_host_address(MemoryRegionAddress(0)).unwrap() as usize
    }

    /// The `VmFlags:` line of the smaps entry that starts at `start`.
    fn vm_flags(smaps: &str, start: usize) -> Option<&str> {
        let header = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
        lines.find(|l| l.starts_with("VmFlags:"))
    }

    #[test]
    fn guest_ram_is_huge_page_aligned_advised_and_usable() {
        let mem = create_guest_memory(256 << 20, false).unwrap();
        for region in mem.iter() {
            assert_eq!(
                host_start(region) % HUGE_PAGE,
                0,
                "{:#x}",
                host_start(region)
            );
            assert_eq!(region.start_addr().0 % HUGE_PAGE as u64, 0);
        }
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x20_0000)).unwrap(),
            0xdead_beef
        );
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if thp.is_ok_and(|mode| !mode.contains("[never]")) {
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            let start = host_start(mem.iter().next().unwrap());
            let flags = vm_flags(&smaps, start).unwrap_or("none");
            assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
        }
    }
}
