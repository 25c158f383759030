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
//!
//! Dirty pages (`track_dirty_pages`, for Diff snapshots): each region
//! carries vm-memory's [`AtomicBitmap`], one bit per 4 KiB page, which
//! every write through vm-memory (the device workers': descriptors, used
//! rings, received packets, blocks read) sets. KVM's own dirty log
//! (`vm::Vm::dirty_log`) sees only the guest's writes; a page is dirty
//! when either says so. Without tracking the bitmap is empty (no bits: a
//! write costs a bounds check), so nothing is recorded.

use std::io;

use std::num::NonZeroUsize;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::arch::layout::ram_ranges;

/// Guest memory as this vmm maps it: regions with a dirty-page bitmap,
/// empty unless dirty pages are tracked.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;

/// The page size dirty pages are tracked at, KVM's and the bitmap's.
pub const PAGE_SIZE: usize = 4096;

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
/// With `track_dirty`, each region gets a bitmap of its pages.
pub fn create_guest_memory(
    mem_size: u64,
    hugetlb: bool,
    track_dirty: bool,
) -> Result<GuestMemoryMmap, Error> {
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
                MmapRegionBuilder::new_with_bitmap(size, dirty_bitmap(size, track_dirty))
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

/// A region's dirty-page bitmap: one bit per page of `size` bytes when
/// tracking, none otherwise.
pub fn dirty_bitmap(size: usize, track_dirty: bool) -> AtomicBitmap {
    let bytes = if track_dirty { size } else { 0 };
    AtomicBitmap::new(bytes, NonZeroUsize::MIN.saturating_add(PAGE_SIZE - 1))
}

/// The whole bitmap of `region` (vm-memory's `GuestMemoryRegion::bitmap`
/// gives a slice of it, which cannot be taken or cleared).
fn region_bitmap(region: &GuestRegionMmap) -> &AtomicBitmap {
    let mapping: &vm_memory::MmapRegion<AtomicBitmap> = region;
    mapping.bitmap()
}

/// Whether `mem`'s regions track the pages written through vm-memory.
pub fn tracks_dirty_pages(mem: &GuestMemoryMmap) -> bool {
    mem.iter().any(|region| region_bitmap(region).len() > 0)
}

/// Takes and clears the bitmap of the pages written through vm-memory in
/// each region (in `mem`'s order), one bit per page in `u64` words as
/// KVM's dirty log has them.
pub fn take_own_dirty(mem: &GuestMemoryMmap) -> Vec<Vec<u64>> {
    mem.iter()
        .map(|region| region_bitmap(region).get_and_reset())
        .collect()
}

/// Marks the pages `bitmap` (as [`take_own_dirty`] gives it) has set
/// dirty again in `mem`'s bitmaps: a Diff snapshot that failed gives
/// back what it took, so the next one still writes those pages.
pub fn restore_own_dirty(mem: &GuestMemoryMmap, bitmaps: &[Vec<u64>]) {
    for (region, words) in mem.iter().zip(bitmaps) {
        for page in dirty_pages(words, region_bitmap(region).len()) {
            region_bitmap(region).set_bit(page);
        }
    }
}

/// The pages (indices) of the first `pages` whose bit is set in `words`.
pub fn dirty_pages(words: &[u64], pages: usize) -> impl Iterator<Item = usize> + '_ {
    words
        .iter()
        .enumerate()
        .flat_map(|(index, &word)| {
            (0..64usize)
                .filter(move |bit| word & (1u64 << bit) != 0)
                .map(move |bit| index * 64 + bit)
        })
        .take_while(move |&page| page < pages)
}

/// `a | b` word by word; the longer one's extra words are kept.
pub fn or_bitmaps(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut out = long.to_vec();
    for (word, other) in out.iter_mut().zip(short) {
        *word |= other;
    }
    out
}

/// Runs of consecutive dirty pages in `words` (of `pages` pages), as
/// (first page, count): what a Diff snapshot writes, one write a run.
pub fn dirty_runs(words: &[u64], pages: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for page in dirty_pages(words, pages) {
        match runs.last_mut() {
            Some((start, count)) if *start + *count == page => *count += 1,
            _ => runs.push((page, 1)),
        }
    }
    runs
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
    use vm_memory::{Bytes, GuestMemoryRegion, MemoryRegionAddress};

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
        let mem = create_guest_memory(256 << 20, false, false).unwrap();
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

    #[test]
    fn dirty_pages_come_in_runs_within_the_region() {
        let words = [0b1011u64 | 1 << 63, 0b1, u64::MAX];
        assert_eq!(
            dirty_pages(&words, 130).collect::<Vec<_>>(),
            vec![0, 1, 3, 63, 64, 128, 129]
        );
        assert_eq!(
            dirty_runs(&words, 130),
            vec![(0, 2), (3, 1), (63, 2), (128, 2)]
        );
        assert!(dirty_runs(&[0, 0], 128).is_empty());
        assert_eq!(or_bitmaps(&[0b01, 0b10], &[0b10]), vec![0b11, 0b10]);
        assert_eq!(or_bitmaps(&[0b1], &[0, 0b100]), vec![0b1, 0b100]);
    }

    #[test]
    fn writes_through_vm_memory_are_tracked_only_when_asked() {
        let mem = create_guest_memory(16 << 20, false, true).unwrap();
        assert!(tracks_dirty_pages(&mem));
        mem.write_obj(7u64, GuestAddress(5 * PAGE_SIZE as u64 + 8))
            .unwrap();
        mem.write_slice(&[1u8; 2], GuestAddress(9 * PAGE_SIZE as u64 - 1))
            .unwrap();
        let taken = take_own_dirty(&mem);
        assert_eq!(dirty_runs(&taken[0], 4096), vec![(5, 1), (8, 2)]);
        assert!(dirty_runs(&take_own_dirty(&mem)[0], 4096).is_empty());
        restore_own_dirty(&mem, &taken);
        assert_eq!(take_own_dirty(&mem), taken);

        let untracked = create_guest_memory(16 << 20, false, false).unwrap();
        assert!(!tracks_dirty_pages(&untracked));
        untracked.write_obj(7u64, GuestAddress(0)).unwrap();
        assert!(take_own_dirty(&untracked).iter().all(Vec::is_empty));
    }
}
