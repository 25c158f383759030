//! Guest physical memory layout for x86_64.
//!
//! The low 1 MiB follows the PC conventions Linux still expects (EBDA below
//! 640 KiB, the legacy hole from 640 KiB to 1 MiB). Boot structures live in
//! the first 64 KiB, the kernel is loaded at or above 1 MiB, and a 1 GiB MMIO
//! hole below 4 GiB holds the LAPIC, the IOAPIC and (later) virtio-mmio devices.

/// GDT used for the first instructions of the guest.
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the guest installs its own before it enables interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map table, right after the start info.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` ("zero page") for the 64-bit boot protocol.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: one PML4, one PDPT and four page directories of
/// 2 MiB pages map the first 4 GiB, enough for the kernel, boot data and the
/// initrd wherever they land below the MMIO hole.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const PDE_COUNT: u64 = 4;
/// Kernel command line. 32 bits: the zero page's `cmd_line_ptr` is.
pub const CMDLINE_START: u32 = 0x20000;
/// Linux on x86 accepts at most 2048 bytes of command line, NUL included.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area, where the MP table lives.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables go in the legacy BIOS area, where Linux also scans for the
/// RSDP when the boot protocol does not pass its address.
pub const ACPI_START: u64 = 0xe_0000;
pub const ACPI_END: u64 = 0x10_0000;
/// Where high memory starts (and where bzImage kernels load by default).
pub const HIMEM_START: u64 = 0x10_0000;

/// The MMIO hole below 4 GiB. RAM beyond it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio register windows, one 4 KiB page per device, in the MMIO hole.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// IOAPIC pins for virtio devices: 5..=23 (1 is the keyboard, 4 the UART).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
pub const VIRTIO_LAST_IRQ: u32 = 23;
/// Default addresses of the IOAPIC and of every vCPU's LAPIC, 32 bits as
/// the MP table and the MADT carry them.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// KVM on Intel needs three pages for the real-mode TSS and one for the
/// identity map, somewhere the guest will not use: just below the BIOS area.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

// The boot structures must not overlap each other, checked at compile time.
const _: () = {
    assert!(BOOT_IDT_START + 8 <= PVH_INFO_START);
    assert!(PVH_MEMMAP_START + 0x1000 <= BOOT_STACK_POINTER - 0x800);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PDE_START + PDE_COUNT * 0x1000 <= CMDLINE_START as u64);
    assert!(CMDLINE_START as u64 + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
};

/// The e820 memory types used here.
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// One contiguous range of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    pub start: u64,
    pub size: u64,
}

impl RamRange {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// Splits `mem_size` bytes of guest RAM around the MMIO hole.
pub fn ram_ranges(mem_size: u64) -> Vec<RamRange> {
    if mem_size <= MMIO_GAP_START {
        return vec![RamRange {
            start: 0,
            size: mem_size,
        }];
    }
    vec![
        RamRange {
            start: 0,
            size: MMIO_GAP_START,
        },
        RamRange {
            start: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
        },
    ]
}

/// One entry of the guest's memory map (e820 or PVH memmap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map handed to the guest: conventional memory up to the EBDA,
/// the EBDA and legacy hole as reserved, then RAM from 1 MiB on.
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for range in ram_ranges(mem_size) {
        let start = range.start.max(HIMEM_START);
        if range.end() > start {
            map.push(MemoryMapEntry {
                addr: start,
                size: range.end() - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// The highest address (exclusive) of RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(
            ram_ranges(256 * MIB),
            vec![RamRange {
                start: 0,
                size: 256 * MIB
            }]
        );
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let ranges = ram_ranges(4 * GIB);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].end(), MMIO_GAP_START);
        assert_eq!(ranges[1].start, MMIO_GAP_END);
        assert_eq!(ranges.iter().map(|r| r.size).sum::<u64>(), 4 * GIB);
    }

    #[test]
    fn memory_map_reserves_legacy_area_and_covers_all_ram() {
        let map = memory_map(4 * GIB);
        assert_eq!(map[0].addr, 0);
        assert_eq!(map[0].kind, E820_RAM);
        assert_eq!(map[1].addr, EBDA_START);
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[1].addr + map[1].size, HIMEM_START);
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Everything but the legacy hole is usable RAM.
        assert_eq!(ram, 4 * GIB - (HIMEM_START - EBDA_START));
        // Entries are sorted and do not overlap.
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr);
        }
    }
}
