//! Initial register state of the boot vCPU: segments, control registers,
//! identity page tables and the FPU.
//!
//! Two entry modes exist. PVH enters the kernel in 32-bit protected mode with
//! paging off and `%ebx` pointing at the start info. The Linux 64-bit boot
//! protocol enters in long mode with identity-mapped page tables and `%rsi`
//! pointing at the zero page.

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Address, Bytes, GuestAddress};

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_COUNT, PDE_START, PDPTE_START,
    PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Xen PVH: 32-bit protected mode, start info in `%ebx`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, zero page in `%rsi`.
    Linux64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the boot GDT/IDT into guest memory")]
    WriteDescriptorTables,
    #[error("cannot write the identity page tables into guest memory")]
    WritePageTables,
}

/// Builds a GDT entry from its flags, base and limit (Intel SDM 3.4.5).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Decodes a GDT entry into the segment KVM expects in `kvm_sregs`.
pub fn segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    // 20 bits: bits 0..16 and 48..52 of the entry.
    let raw_limit = ((entry & 0xffff) as u32) | (((entry >> 32) & 0x000f_0000) as u32);
    let granularity = ((entry >> 55) & 1) as u8;
    // With 4 KiB granularity the limit counts pages.
    let limit = if granularity == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: granularity,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT's entries: null, code, data, TSS.
const BOOT_GDT_ENTRIES: usize = 4;
/// Its limit as `kvm_sregs` takes it: the size in bytes, less one.
const BOOT_GDT_LIMIT: u16 = 4 * 8 - 1;
const _: () =
    assert!(BOOT_GDT_LIMIT as usize == std::mem::size_of::<[u64; BOOT_GDT_ENTRIES]>() - 1);

/// The boot GDT: null, code, data, TSS. The code segment is 32-bit for PVH
/// and 64-bit for the Linux 64-bit protocol.
pub fn boot_gdt(protocol: BootProtocol) -> [u64; BOOT_GDT_ENTRIES] {
    let code = match protocol {
        BootProtocol::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
        BootProtocol::Linux64 => gdt_entry(0xa09b, 0, 0xfffff),
    };
    [
        gdt_entry(0, 0, 0),
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Writes the GDT and an empty IDT, and points the segment registers at them.
pub fn setup_segments(
    mem: &GuestMemoryMmap,
    sregs: &mut kvm_sregs,
    protocol: BootProtocol,
) -> Result<(), Error> {
    let gdt = boot_gdt(protocol);
    for (index, entry) in gdt.iter().enumerate() {
        let addr = GuestAddress(BOOT_GDT_START + (index as u64) * 8);
        mem.write_obj(*entry, addr)
            .map_err(|_| Error::WriteDescriptorTables)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| Error::WriteDescriptorTables)?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = BOOT_GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

/// Writes identity page tables for the first 4 GiB (2 MiB pages) and loads
/// CR3. Only the Linux 64-bit protocol needs them; PVH starts unpaged.
pub fn setup_page_tables(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), Error> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE_PAGE: u64 = 0x80;
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|_| Error::WritePageTables)
    };
    write(PDPTE_START | PRESENT_WRITABLE, PML4_START)?;
    for dir in 0..PDE_COUNT {
        let pde_page = PDE_START + dir * 0x1000;
        write(pde_page | PRESENT_WRITABLE, PDPTE_START + dir * 8)?;
        for entry in 0..512u64 {
            let phys = ((dir << 9) + entry) << 21;
            write(phys | PRESENT_WRITABLE | HUGE_PAGE, pde_page + entry * 8)?;
        }
    }
    sregs.cr3 = PML4_START;
    Ok(())
}

/// General-purpose registers at the kernel's entry point.
pub fn boot_regs(protocol: BootProtocol, entry: GuestAddress) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: 0x2,
        rip: entry.raw_value(),
        ..Default::default()
    };
    match protocol {
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
    }
    regs
}

/// The FPU as after FNINIT, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::GuestMemoryMmap;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entries_encode_flat_segments() {
        // Values as documented in the Linux boot protocol and used by every VMM.
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn segments_decode_back_from_the_gdt() {
        let seg = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!(seg.selector, 8);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!((seg.l, seg.db, seg.g, seg.present, seg.s), (1, 0, 1, 1, 1));
        assert_eq!(seg.type_, 0xb);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 0x3));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn long_mode_segments_and_control_registers() {
        let mem = memory();
        let mut sregs = kvm_sregs::default();
        setup_segments(&mem, &mut sregs, BootProtocol::Linux64).unwrap();
        assert_eq!(sregs.cs.l, 1);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        let written: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(written, 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn pvh_starts_in_flat_protected_mode_without_paging() {
        let mem = memory();
        let mut sregs = kvm_sregs::default();
        setup_segments(&mem, &mut sregs, BootProtocol::Pvh).unwrap();
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(sregs.cs.l, 0);
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.cr0 & X86_CR0_PE, X86_CR0_PE);
        assert_eq!(sregs.efer, 0);
        let regs = boot_regs(BootProtocol::Pvh, GuestAddress(0x100_0000));
        assert_eq!(regs.rbx, PVH_INFO_START);
        assert_eq!(regs.rip, 0x100_0000);
    }

    #[test]
    fn page_tables_identity_map_the_first_4_gib() {
        let mem = memory();
        let mut sregs = kvm_sregs::default();
        setup_page_tables(&mem, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        // Walk a few addresses through the tables by hand.
        for virt in [0u64, 0x20_0000, 0x1234_5678, 0xffe0_0000] {
            let pdpte: u64 = mem
                .read_obj(GuestAddress(PDPTE_START + ((virt >> 30) & 0x1ff) * 8))
                .unwrap();
            let pde: u64 = mem
                .read_obj(GuestAddress((pdpte & !0xfff) + ((virt >> 21) & 0x1ff) * 8))
                .unwrap();
            assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB page");
            assert_eq!(pde & !0x1f_ffff, virt & !0x1f_ffff);
        }
    }
}
