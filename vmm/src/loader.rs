//! Loading the kernel and initrd into guest memory.
//!
//! Two formats are accepted, told apart by their magic bytes: an ELF
//! `vmlinux` (entered through its PVH note when it has one, else through the
//! Linux 64-bit protocol at its ELF entry) and a `bzImage` (Linux 64-bit
//! protocol at `startup_64`). The initrd goes at the top of low memory,
//! where the kernel looks for it last when it relocates itself.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use crate::vstate::memory::GuestMemoryMmap;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::arch::layout::{low_ram_end, HIMEM_START};
use crate::arch::regs::BootProtocol;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const EM_X86_64: u16 = 62;
/// "HdrS" at offset 0x202 marks a kernel with a Linux boot protocol header.
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// xloadflags bit 0: the kernel has a 64-bit entry point at load + 0x200.
const XLF_KERNEL_64: u16 = 1;
const STARTUP_64_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the kernel image: {0}")]
    Read(#[source] std::io::Error),
    #[error("the kernel image is neither an x86_64 ELF vmlinux nor a bzImage")]
    UnknownFormat,
    #[error("the ELF kernel is not a 64-bit x86_64 image")]
    WrongElfArchitecture,
    #[error("the bzImage has no 64-bit entry point (protocol 2.12+ with XLF_KERNEL_64 needed)")]
    NoLongModeEntry,
    #[error("the kernel image is corrupt or does not fit in guest memory: {0}")]
    Load(#[source] loader::Error),
    #[error(
        "guest memory ({memory_mib} MiB) is too small for the kernel and initrd: \
         the kernel ends at {kernel_end:#x}, the initrd needs {initrd_size} bytes below {limit:#x}"
    )]
    MemoryTooSmall {
        memory_mib: u64,
        kernel_end: u64,
        initrd_size: u64,
        limit: u64,
    },
    #[error(
        "guest memory ({memory_mib} MiB) is too small for the kernel, which loads up to {kernel_end:#x}"
    )]
    KernelTooLarge { memory_mib: u64, kernel_end: u64 },
    #[error("cannot read the initrd: {0}")]
    ReadInitrd(#[source] std::io::Error),
    #[error("the initrd is empty")]
    EmptyInitrd,
}

/// Where and how the kernel was loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub protocol: BootProtocol,
    /// First byte after the loaded image.
    pub end: u64,
    /// The bzImage's own setup header, to be copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

enum Format {
    /// With the end of the highest loadable segment.
    Elf {
        load_end: u64,
    },
    BzImage,
}

fn detect_format(image: &mut File) -> Result<Format, Error> {
    let mut magic = [0u8; 4];
    image.seek(SeekFrom::Start(0)).map_err(Error::Read)?;
    if image.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC {
        check_elf_architecture(image)?;
        let load_end = elf_load_end(image)?;
        return Ok(Format::Elf { load_end });
    }
    image
        .seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))
        .map_err(Error::Read)?;
    if image.read_exact(&mut magic).is_ok() && &magic == BZIMAGE_MAGIC {
        return Ok(Format::BzImage);
    }
    Err(Error::UnknownFormat)
}

/// linux-loader checks the ELF magic and byte order but not the machine: an
/// ARM vmlinux would load and then crash the guest.
fn check_elf_architecture(image: &mut File) -> Result<(), Error> {
    let mut ident = [0u8; 20];
    image.seek(SeekFrom::Start(0)).map_err(Error::Read)?;
    image
        .read_exact(&mut ident)
        .map_err(|_| Error::WrongElfArchitecture)?;
    let machine = u16::from_le_bytes([ident[18], ident[19]]);
    if ident[4] != ELFCLASS64 || machine != EM_X86_64 {
        return Err(Error::WrongElfArchitecture);
    }
    Ok(())
}

/// The end of the highest PT_LOAD segment, so that a kernel too large for
/// guest memory is reported as such rather than as a read error.
fn elf_load_end(image: &mut File) -> Result<u64, Error> {
    const PT_LOAD: u32 = 1;
    const PHDR_SIZE: usize = 56;
    const MAX_PHDRS: u16 = 128;
    let corrupt = |_| Error::Load(loader::Error::Elf(loader::elf::Error::ReadProgramHeader));
    let mut header = [0u8; 64];
    image.seek(SeekFrom::Start(0)).map_err(Error::Read)?;
    image.read_exact(&mut header).map_err(corrupt)?;
    let phoff = u64::from_le_bytes(header[32..40].try_into().unwrap_or_default());
    let phnum = u16::from_le_bytes([header[56], header[57]]).min(MAX_PHDRS);
    image.seek(SeekFrom::Start(phoff)).map_err(corrupt)?;
    let mut end = 0u64;
    for _ in 0..phnum {
        let mut phdr = [0u8; PHDR_SIZE];
        image.read_exact(&mut phdr).map_err(corrupt)?;
        let field = |at: usize| u64::from_le_bytes(phdr[at..at + 8].try_into().unwrap_or_default());
        if u32::from_le_bytes([phdr[0], phdr[1], phdr[2], phdr[3]]) == PT_LOAD {
            end = end.max(field(24).saturating_add(field(40)));
        }
    }
    Ok(end)
}

/// Loads the kernel image into guest memory.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    image: &mut File,
) -> Result<LoadedKernel, Error> {
    let himem = Some(GuestAddress(HIMEM_START));
    match detect_format(image)? {
        Format::Elf { load_end } if load_end > low_ram_end(mem_size) => {
            Err(Error::KernelTooLarge {
                memory_mib: mem_size >> 20,
                kernel_end: load_end,
            })
        }
        Format::Elf { .. } => {
            let result = Elf::load(mem, None, image, himem).map_err(Error::Load)?;
            let (entry, protocol) = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => (entry, BootProtocol::Pvh),
                _ => (result.kernel_load, BootProtocol::Linux64),
            };
            Ok(LoadedKernel {
                entry,
                protocol,
                end: result.kernel_end,
                setup_header: None,
            })
        }
        Format::BzImage => {
            let result = BzImage::load(mem, None, image, himem).map_err(Error::Load)?;
            let header = result.setup_header.ok_or(Error::UnknownFormat)?;
            if header.version < 0x020c || header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::NoLongModeEntry);
            }
            Ok(LoadedKernel {
                entry: result.kernel_load.unchecked_add(STARTUP_64_OFFSET),
                protocol: BootProtocol::Linux64,
                end: result.kernel_end,
                setup_header: Some(header),
            })
        }
    }
}

/// The highest address below which the initrd must end.
fn initrd_limit(mem_size: u64, kernel: &LoadedKernel) -> u64 {
    let low_end = low_ram_end(mem_size);
    match kernel.setup_header {
        // initrd_addr_max is the last byte the initrd may occupy.
        Some(header) if header.initrd_addr_max != 0 => {
            low_end.min(u64::from(header.initrd_addr_max) + 1)
        }
        _ => low_end,
    }
}

/// Loads the initrd page-aligned at the top of low memory, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    image: &mut File,
) -> Result<LoadedInitrd, Error> {
    let size = image.seek(SeekFrom::End(0)).map_err(Error::ReadInitrd)?;
    if size == 0 {
        return Err(Error::EmptyInitrd);
    }
    let limit = initrd_limit(mem_size, kernel);
    let too_small = || Error::MemoryTooSmall {
        memory_mib: mem_size >> 20,
        kernel_end: kernel.end,
        initrd_size: size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_small)? & !(PAGE_SIZE - 1);
    if addr < kernel.end {
        return Err(too_small());
    }
    image.seek(SeekFrom::Start(0)).map_err(Error::ReadInitrd)?;
    let len = usize::try_from(size).map_err(|_| too_small())?;
    mem.read_exact_volatile_from(GuestAddress(addr), image, len)
        .map_err(|e| Error::ReadInitrd(std::io::Error::other(e.to_string())))?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data: small, known values
mod tests {
    use super::*;
    use std::io::Write;

    const MIB: u64 = 1 << 20;

    fn memory(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.write_all(bytes).unwrap();
        file
    }

    /// A minimal x86_64 ELF executable with one PT_LOAD segment of
    /// `filesz` bytes at physical address `paddr`.
    fn elf_image(machine: u16, paddr: u64, filesz: u64, file_len: usize) -> Vec<u8> {
        let mut image = vec![0u8; file_len.max(0x78)];
        image[0..4].copy_from_slice(ELF_MAGIC);
        image[4] = ELFCLASS64;
        image[5] = 1; // little endian
        image[6] = 1;
        image[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        image[18..20].copy_from_slice(&machine.to_le_bytes());
        image[20..24].copy_from_slice(&1u32.to_le_bytes());
        image[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        image[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        image[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        image[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        image[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 64;
        image[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        image[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes()); // p_offset
        image[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        image[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        image[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
        image[ph + 40..ph + 48].copy_from_slice(&filesz.to_le_bytes());
        image
    }

    #[test]
    fn loads_an_elf_without_pvh_note_for_the_64_bit_protocol() {
        let mem = memory(32 * MIB);
        let mut file = file_with(&elf_image(EM_X86_64, 0x100_0000, 0x10, 0x100));
        let kernel = load_kernel(&mem, 32 * MIB, &mut file).unwrap();
        assert_eq!(kernel.protocol, BootProtocol::Linux64);
        assert_eq!(kernel.entry, GuestAddress(0x100_0000));
        assert_eq!(kernel.end, 0x100_0010);
    }

    #[test]
    fn rejects_garbage_empty_and_foreign_images() {
        let mem = memory(32 * MIB);
        for bytes in [
            Vec::new(),
            b"not a kernel".to_vec(),
            vec![0xffu8; 4096],
            elf_image(183 /* aarch64 */, 0x100_0000, 0x10, 0x100),
        ] {
            let mut file = file_with(&bytes);
            assert!(load_kernel(&mem, 32 * MIB, &mut file).is_err());
        }
    }

    #[test]
    fn rejects_truncated_and_oversized_segments() {
        let mem = memory(32 * MIB);
        // The segment claims more bytes than the file has.
        let mut truncated = file_with(&elf_image(EM_X86_64, 0x100_0000, 0x10_0000, 0x100));
        assert!(matches!(
            load_kernel(&mem, 32 * MIB, &mut truncated),
            Err(Error::Load(_))
        ));
        // The segment lies beyond the end of guest memory.
        let mut beyond = file_with(&elf_image(EM_X86_64, 0x4000_0000, 0x10, 0x100));
        assert!(matches!(
            load_kernel(&mem, 32 * MIB, &mut beyond),
            Err(Error::KernelTooLarge { .. })
        ));
        // A program header table that points past the end of the file.
        let mut bad_phoff = elf_image(EM_X86_64, 0x100_0000, 0x10, 0x100);
        bad_phoff[32..40].copy_from_slice(&0xffff_ffffu64.to_le_bytes());
        let mut file = file_with(&bad_phoff);
        assert!(load_kernel(&mem, 32 * MIB, &mut file).is_err());
        // A bzImage header claiming a 64-bit entry it does not have.
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(BZIMAGE_MAGIC);
        let mut file = file_with(&bz);
        assert!(load_kernel(&mem, 32 * MIB, &mut file).is_err());
    }

    fn kernel_ending_at(end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0000),
            protocol: BootProtocol::Pvh,
            end,
            setup_header: None,
        }
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_memory() {
        let mem = memory(64 * MIB);
        let data = vec![0x5au8; 10_000];
        let mut file = file_with(&data);
        let initrd = load_initrd(&mem, 64 * MIB, &kernel_ending_at(20 * MIB), &mut file).unwrap();
        assert_eq!(initrd.size, 10_000);
        assert_eq!(initrd.addr.raw_value() % PAGE_SIZE, 0);
        assert!(initrd.addr.raw_value() + initrd.size <= 64 * MIB);
        let mut back = vec![0u8; 10_000];
        mem.read_slice(&mut back, initrd.addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn initrd_that_does_not_fit_above_the_kernel_is_refused() {
        let mem = memory(32 * MIB);
        let mut file = file_with(&vec![1u8; 8 * MIB as usize]);
        let err = load_initrd(&mem, 32 * MIB, &kernel_ending_at(30 * MIB), &mut file).unwrap_err();
        assert!(matches!(err, Error::MemoryTooSmall { .. }), "{err}");
        let mut empty = file_with(&[]);
        assert!(matches!(
            load_initrd(&mem, 32 * MIB, &kernel_ending_at(20 * MIB), &mut empty),
            Err(Error::EmptyInitrd)
        ));
    }
}
