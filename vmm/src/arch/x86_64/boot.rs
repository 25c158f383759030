//! Boot parameters: what the kernel reads at entry to learn the memory map,
//! its command line and where the initrd is.
//!
//! PVH passes an `hvm_start_info` (with a separate memory map and a module
//! list holding the initrd); the Linux 64-bit protocol passes the zero page,
//! a `boot_params` with the e820 map inside.

use crate::vstate::memory::GuestMemoryMmap;
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Address, GuestAddress};

use super::layout::{
    memory_map, MemoryMapEntry, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, ZERO_PAGE_START,
};
use super::regs::BootProtocol;
use crate::loader::{LoadedInitrd, LoadedKernel};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the kernel command line: {0}")]
    Cmdline(#[source] linux_loader::loader::Error),
    #[error("the memory map has {0} entries, more than the zero page holds")]
    TooManyMemoryMapEntries(usize),
    #[error("the command line is {0} bytes, more than a 32-bit length")]
    CmdlineTooLong(usize),
    #[error("the initrd at {addr:#x} ({size} bytes) does not fit the zero page's 32-bit fields")]
    InitrdAbove4GiB { addr: u64, size: u64 },
    #[error("cannot write the boot parameters: {0}")]
    Write(#[source] linux_loader::configurator::Error),
}

/// What the boot parameters point the kernel at.
#[derive(Clone, Copy, Debug)]
pub struct BootInputs {
    pub mem_size: u64,
    pub initrd: Option<LoadedInitrd>,
    pub rsdp: GuestAddress,
}

/// Writes the command line and the protocol's boot parameters.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    inputs: &BootInputs,
    cmdline: &Cmdline,
) -> Result<(), Error> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START.into()), cmdline)
        .map_err(Error::Cmdline)?;
    let cmdline_len = cmdline_size(cmdline)?;
    let map = memory_map(inputs.mem_size);
    match kernel.protocol {
        BootProtocol::Pvh => write_pvh(mem, &map, inputs),
        BootProtocol::Linux64 => write_zero_page(mem, &map, kernel, inputs, cmdline_len),
    }
}

fn cmdline_size(cmdline: &Cmdline) -> Result<u32, Error> {
    let len = cmdline
        .as_cstring()
        .map(|s| s.as_bytes().len())
        .unwrap_or(0);
    u32::try_from(len).map_err(|_| Error::CmdlineTooLong(len))
}

fn write_pvh(
    mem: &GuestMemoryMmap,
    map: &[MemoryMapEntry],
    inputs: &BootInputs,
) -> Result<(), Error> {
    let initrd = inputs.initrd;
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START.into(),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len())
            .map_err(|_| Error::TooManyMemoryMapEntries(memmap.len()))?,
        rsdp_paddr: inputs.rsdp.raw_value(),
        ..Default::default()
    };
    let modlist_addr = GuestAddress(PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64);
    if initrd.is_some() {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = modlist_addr.raw_value();
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.raw_value(),
            size: initrd.size,
            ..Default::default()
        };
        params.set_modules(&[module], modlist_addr);
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(Error::Write)
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    map: &[MemoryMapEntry],
    kernel: &LoadedKernel,
    inputs: &BootInputs,
    cmdline_len: u32,
) -> Result<(), Error> {
    let initrd = inputs.initrd;
    let mut params = boot_params {
        acpi_rsdp_addr: inputs.rsdp.raw_value(),
        ..Default::default()
    };
    if let Some(header) = kernel.setup_header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START;
    params.hdr.cmdline_size = cmdline_len;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some(initrd) = initrd {
        // The loader puts the initrd below the MMIO hole; the zero page's
        // 32-bit fields (no ext_ramdisk_*) rely on that.
        let addr = initrd.addr.raw_value();
        let above = || Error::InitrdAbove4GiB {
            addr,
            size: initrd.size,
        };
        params.hdr.ramdisk_image = u32::try_from(addr).map_err(|_| above())?;
        params.hdr.ramdisk_size = u32::try_from(initrd.size).map_err(|_| above())?;
    }
    if map.len() > params.e820_table.len() {
        return Err(Error::TooManyMemoryMapEntries(map.len()));
    }
    let e820_entries =
        u8::try_from(map.len()).map_err(|_| Error::TooManyMemoryMapEntries(map.len()))?;
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820_entries;
    let params = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&params, mem).map_err(Error::Write)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data: small, known values
mod tests {
    use super::*;
    use crate::arch::layout::{E820_RAM, HIMEM_START};
    use vm_memory::Bytes;

    const MIB: u64 = 1 << 20;

    fn setup(protocol: BootProtocol, initrd: Option<LoadedInitrd>) -> GuestMemoryMmap {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap();
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            protocol,
            end: 0x200_0000,
            setup_header: None,
        };
        let mut cmdline = Cmdline::new(2048).unwrap();
        cmdline.insert_str("console=ttyS0 quiet").unwrap();
        let inputs = BootInputs {
            mem_size: 64 * MIB,
            initrd,
            rsdp: GuestAddress(0xe_0000),
        };
        write_boot_params(&mem, &kernel, &inputs, &cmdline).unwrap();
        mem
    }

    fn initrd() -> Option<LoadedInitrd> {
        Some(LoadedInitrd {
            addr: GuestAddress(0x300_0000),
            size: 4096,
        })
    }

    #[test]
    fn zero_page_has_e820_cmdline_and_initrd() {
        let mem = setup(BootProtocol::Linux64, initrd());
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START);
        assert_eq!({ hdr.cmdline_size }, "console=ttyS0 quiet".len() as u32);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 4096);
        assert_eq!(params.e820_entries, 3);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);
        let last = params.e820_table[2];
        assert_eq!(
            ({ last.addr }, { last.size }, { last.r#type }),
            (HIMEM_START, 63 * MIB, E820_RAM)
        );
        let mut text = [0u8; 20];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_START.into()))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0 quiet\0");
    }

    #[test]
    fn pvh_start_info_points_at_memmap_cmdline_and_initrd_module() {
        let mem = setup(BootProtocol::Pvh, initrd());
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.cmdline_paddr, u64::from(CMDLINE_START));
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_START);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 4096));
        let first: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START)).unwrap();
        assert_eq!((first.addr, first.type_), (0, E820_RAM));
        // The module list must not overlap the start info or the memory map.
        assert!(info.modlist_paddr >= PVH_INFO_START + 56);
        assert!(info.modlist_paddr + 32 <= PVH_MEMMAP_START);
    }

    #[test]
    fn pvh_without_initrd_has_no_modules() {
        let mem = setup(BootProtocol::Pvh, None);
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.nr_modules, 0);
        assert_eq!(info.modlist_paddr, 0);
    }
}
