//! A snapshot's two files: writing them from a paused VM, and reading them
//! back into a state and a guest memory mapping.
//!
//! The memory file is guest RAM, region after region (offsets in the
//! state), written sparse: a page of zeros is a hole, so a mostly idle
//! guest's snapshot takes the disk its used memory does. A restore maps it
//! `MAP_PRIVATE`: pages are read from the file (the page cache) when the
//! guest touches them, and a page the guest writes becomes its own copy.
//! Clones restored from one memory file share its unwritten pages.
//!
//! A Diff snapshot (the VM tracking dirty pages) writes only the pages
//! written since the previous snapshot, Full or Diff, at their offsets,
//! zeros included (a page the guest cleared must overwrite the base's).
//! The memory file is opened without truncating: when it is the previous
//! snapshot's (same size), the Diff updates it in place and the pair is a
//! complete snapshot again; any other path becomes a sparse file of the
//! memory's size holding only the dirty pages, a layer to merge onto its
//! base (see README). Every snapshot clears the dirty state, as in
//! Firecracker; a Diff that fails gives the pages it took back.
//!
//! What it refuses: a state or memory file that is not a regular file
//! (a named pipe is refused at once, never waited on); a memory file
//! shorter than the regions it must hold; regions other than the ones this
//! vmm lays out for the VM's memory size (a state naming other guest
//! addresses is not mapped).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::vstate::memory::{GuestMemoryMmap, GuestRegionMmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, FileOffset, GuestAddress};

use super::format::{self, FormatError};
use super::state::{MemoryRegion, MicrovmState};
use crate::arch::layout::ram_ranges;
use crate::builder::{DevicesPaused, SaveError, VmController};
use crate::config::VmConfig;
use crate::vmm_config::snapshot::SnapshotType;
use crate::vstate::memory::{self as guest_memory, dirty_runs};

/// Pages are compared with zero, and holes left, at this size.
const PAGE: usize = 4096;
/// Guest memory is copied out in chunks of this size.
const CHUNK: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Save(#[from] SaveError),
    #[error("cannot create the snapshot file {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the snapshot file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read guest memory at {0:#x}")]
    ReadMemory(u64),
    #[error("cannot open the snapshot file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot file {path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: FormatError,
    },
    #[error("the snapshot's memory layout does not fit a VM of {mib} MiB: {reason}")]
    Layout { mib: u64, reason: String },
    #[error(
        "the memory file {path} is {found} bytes, shorter than the {needed} bytes of guest memory \
         the snapshot holds"
    )]
    MemoryFileTooShort {
        path: PathBuf,
        found: u64,
        needed: u64,
    },
    #[error(
        "the memory file {0} is the file this VM's memory is mapped from; a Full snapshot \
         needs another path"
    )]
    MemoryFileInUse(PathBuf),
    #[error("Diff snapshots are not allowed on uVMs with dirty page tracking disabled.")]
    DirtyTrackingOff,
    #[error("cannot map the memory file {path}: {reason}")]
    Map { path: PathBuf, reason: String },
}

/// Writes a snapshot of `vm` (paused) of `snapshot_type` to `state_path`
/// and `mem_path`, `config` being its configuration as it is now. The
/// device workers are paused while both are written and go on afterwards,
/// whatever the outcome. Both files are synced before this returns.
/// Returns the bytes of guest memory written (a Full snapshot's holes
/// left out).
pub fn create(
    vm: &VmController,
    config: VmConfig,
    state_path: &Path,
    mem_path: &Path,
    snapshot_type: SnapshotType,
) -> Result<u64, Error> {
    if snapshot_type == SnapshotType::Diff && !vm.tracks_dirty_pages() {
        return Err(Error::DirtyTrackingOff);
    }
    let paused = vm.pause_devices()?;
    let state = vm.save_state(&paused, config)?;
    let with_path = |e| match e {
        Error::Write { source, .. } => Error::Write {
            path: mem_path.to_path_buf(),
            source,
        },
        other => other,
    };
    let written = match snapshot_type {
        SnapshotType::Full => create_full(vm, &paused, &state.memory, mem_path),
        SnapshotType::Diff => create_diff(vm, &paused, &state.memory, mem_path),
    }
    .map_err(with_path)?;
    let mut state_file = create_file(state_path)?;
    let write_error = |source| Error::Write {
        path: state_path.to_path_buf(),
        source,
    };
    format::write(&mut state_file, &state).map_err(|e| match e {
        FormatError::Io(source) => write_error(source),
        other => Error::Format {
            path: state_path.to_path_buf(),
            source: other,
        },
    })?;
    state_file.flush().map_err(write_error)?;
    state_file.sync_all().map_err(write_error)?;
    drop(paused);
    Ok(written)
}

/// All of guest memory to a new `mem_path`; the dirty state, if tracked,
/// cleared once it is written. The file a restored VM's memory is mapped
/// from is refused before anything is written: emptying it would take
/// the pages the guest has not yet written from under its mapping.
fn create_full(
    vm: &VmController,
    paused: &DevicesPaused<'_>,
    regions: &[MemoryRegion],
    mem_path: &Path,
) -> Result<u64, Error> {
    let mem_file =
        crate::image_file::create_or_update(mem_path).map_err(|source| Error::Create {
            path: mem_path.to_path_buf(),
            source,
        })?;
    if maps_memory_from(vm.memory(), &mem_file).map_err(write_error)? {
        return Err(Error::MemoryFileInUse(mem_path.to_path_buf()));
    }
    mem_file.set_len(0).map_err(write_error)?;
    let written = write_memory(vm.memory(), regions, &mem_file)?;
    vm.take_dirty_pages(paused)?;
    Ok(written)
}

/// The pages dirtied since the last snapshot to `mem_path`, kept if it
/// has the memory's size, made so otherwise. When the write fails, the
/// pages taken are marked dirty again.
fn create_diff(
    vm: &VmController,
    paused: &DevicesPaused<'_>,
    regions: &[MemoryRegion],
    mem_path: &Path,
) -> Result<u64, Error> {
    let file = crate::image_file::create_or_update(mem_path).map_err(|source| Error::Create {
        path: mem_path.to_path_buf(),
        source,
    })?;
    let dirty = vm.take_dirty_pages(paused)?;
    write_dirty(vm.memory(), regions, &dirty, &file).inspect_err(|_| {
        guest_memory::restore_own_dirty(vm.memory(), &dirty);
    })
}

/// Whether a region of `mem` is mapped from `file` (the same inode).
fn maps_memory_from(mem: &GuestMemoryMmap, file: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let target = file.metadata()?;
    for region in mem.iter() {
        if let Some(backing) = region.file_offset() {
            let backing = backing.file().metadata()?;
            if (backing.dev(), backing.ino()) == (target.dev(), target.ino()) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn create_file(path: &Path) -> Result<File, Error> {
    crate::image_file::create(path).map_err(|source| Error::Create {
        path: path.to_path_buf(),
        source,
    })
}

/// Copies each region of `mem` to `file` at its offset, leaving pages of
/// zeros as holes, then sizes and syncs the file. Returns the bytes
/// written.
fn write_memory(
    mem: &GuestMemoryMmap,
    regions: &[MemoryRegion],
    file: &File,
) -> Result<u64, Error> {
    let mut chunk = vec![0u8; CHUNK];
    let mut written = 0;
    for region in regions {
        let mut done = 0u64;
        while done < region.size {
            let len = usize::try_from((region.size - done).min(CHUNK as u64)).unwrap_or(CHUNK);
            let buf = &mut chunk[..len];
            let addr = region.guest_base + done;
            mem.read_slice(buf, GuestAddress(addr))
                .map_err(|_| Error::ReadMemory(addr))?;
            written +=
                write_nonzero_runs(file, buf, region.file_offset + done).map_err(write_error)?;
            done += len as u64;
        }
    }
    file.set_len(file_end(regions)).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    Ok(written)
}

/// A write error whose path the caller fills in.
fn write_error(source: std::io::Error) -> Error {
    Error::Write {
        path: PathBuf::new(),
        source,
    }
}

/// Where the last region ends in the memory file.
fn file_end(regions: &[MemoryRegion]) -> u64 {
    regions
        .iter()
        .map(|r| r.file_offset + r.size)
        .max()
        .unwrap_or(0)
}

/// Writes the pages `dirty` marks (one bitmap a region, in `regions`'
/// order) to `file` at their offsets, zeros too, after making the file
/// the memory's size: one of another size is emptied first (it is not a
/// base this memory can be layered on). Syncs the file and returns the
/// bytes written.
fn write_dirty(
    mem: &GuestMemoryMmap,
    regions: &[MemoryRegion],
    dirty: &[Vec<u64>],
    file: &File,
) -> Result<u64, Error> {
    let end = file_end(regions);
    let found = file.metadata().map_err(write_error)?.len();
    if found != end {
        file.set_len(0).map_err(write_error)?;
        file.set_len(end).map_err(write_error)?;
    }
    let mut chunk = vec![0u8; CHUNK];
    let mut written = 0;
    for (region, words) in regions.iter().zip(dirty) {
        let pages = usize::try_from(region.size / PAGE as u64).unwrap_or(usize::MAX);
        for (first, count) in dirty_runs(words, pages) {
            written += write_pages(mem, region, first, count, &mut chunk, file)?;
        }
    }
    file.sync_all().map_err(write_error)?;
    Ok(written)
}

/// Copies `count` pages of `region` from page `first` on into `file`, a
/// chunk at a time.
fn write_pages(
    mem: &GuestMemoryMmap,
    region: &MemoryRegion,
    first: usize,
    count: usize,
    chunk: &mut [u8],
    file: &File,
) -> Result<u64, Error> {
    let start = first as u64 * PAGE as u64;
    let total = count as u64 * PAGE as u64;
    let mut done = 0u64;
    while done < total {
        let len = usize::try_from((total - done).min(chunk.len() as u64)).unwrap_or(CHUNK);
        let buf = &mut chunk[..len];
        let addr = region.guest_base + start + done;
        mem.read_slice(buf, GuestAddress(addr))
            .map_err(|_| Error::ReadMemory(addr))?;
        file.write_all_at(buf, region.file_offset + start + done)
            .map_err(write_error)?;
        done += len as u64;
    }
    Ok(total)
}

/// Writes the runs of pages of `buf` that are not all zeros at their
/// place from `offset` on; returns the bytes written.
fn write_nonzero_runs(file: &File, buf: &[u8], offset: u64) -> std::io::Result<u64> {
    let mut written = 0u64;
    let mut run_start: Option<usize> = None;
    for (index, page) in buf.chunks(PAGE).enumerate() {
        let at = index * PAGE;
        let zero = page.iter().all(|&b| b == 0);
        match (run_start, zero) {
            (None, false) => run_start = Some(at),
            (Some(start), true) => {
                file.write_all_at(&buf[start..at], offset + start as u64)?;
                written += (at - start) as u64;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        file.write_all_at(&buf[start..], offset + start as u64)?;
        written += (buf.len() - start) as u64;
    }
    Ok(written)
}

/// Reads and checks a snapshot's state file.
pub fn read_state(path: &Path) -> Result<MicrovmState, Error> {
    let mut file = crate::image_file::open(path, false).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    format::read(&mut file).map_err(|source| Error::Format {
        path: path.to_path_buf(),
        source,
    })
}

/// Maps the memory file as `state`'s guest memory, private to this VM,
/// tracking the pages written to it from now on when `track_dirty`.
pub fn map_memory(
    state: &MicrovmState,
    path: &Path,
    track_dirty: bool,
) -> Result<GuestMemoryMmap, Error> {
    let mem_size = state.config.memory_bytes();
    check_layout(&state.memory, mem_size)?;
    let file = crate::image_file::open(path, false).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let needed = file_end(&state.memory);
    let found = file
        .metadata()
        .map_err(|source| Error::Open {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if found < needed {
        return Err(Error::MemoryFileTooShort {
            path: path.to_path_buf(),
            found,
            needed,
        });
    }
    let file = Arc::new(file);
    let map_error = |reason: String| Error::Map {
        path: path.to_path_buf(),
        reason,
    };
    let regions = state
        .memory
        .iter()
        .map(|region| {
            let size = usize::try_from(region.size)
                .map_err(|_| map_error("a region exceeds the address space".into()))?;
            let mapping = MmapRegionBuilder::new_with_bitmap(
                size,
                guest_memory::dirty_bitmap(size, track_dirty),
            )
            .with_file_offset(FileOffset::from_arc(file.clone(), region.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| map_error(e.to_string()))?;
            GuestRegionMmap::new(mapping, GuestAddress(region.guest_base))
                .ok_or_else(|| map_error("a region ends past the guest address space".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|e| map_error(e.to_string()))
}

/// The regions must be the ones this vmm lays out for `mem_size`, each
/// at a page-aligned file offset, none overlapping another in the file.
fn check_layout(regions: &[MemoryRegion], mem_size: u64) -> Result<(), Error> {
    let layout_error = |reason: String| Error::Layout {
        mib: mem_size >> 20,
        reason,
    };
    let expected = ram_ranges(mem_size);
    if regions.len() != expected.len() {
        return Err(layout_error(format!(
            "{} regions, where {} are laid out",
            regions.len(),
            expected.len()
        )));
    }
    let mut file_end = 0u64;
    for (region, range) in regions.iter().zip(&expected) {
        if region.guest_base != range.start || region.size != range.size {
            return Err(layout_error(format!(
                "a region at {:#x}+{:#x}, where {:#x}+{:#x} is laid out",
                region.guest_base, region.size, range.start, range.size
            )));
        }
        if region.file_offset % PAGE as u64 != 0 || region.file_offset < file_end {
            return Err(layout_error(format!(
                "a region at file offset {:#x} (page-aligned, after {file_end:#x} expected)",
                region.file_offset
            )));
        }
        file_end = region
            .file_offset
            .checked_add(region.size)
            .ok_or_else(|| layout_error("a region ends past 2^64".into()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn zero_pages_become_holes_and_the_rest_lands_in_place() {
        let dir = std::env::temp_dir().join(format!("vmm-snapshot-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        let file = crate::image_file::create(&path).unwrap();
        let mut buf = vec![0u8; 8 * PAGE];
        buf[PAGE + 7] = 1;
        buf[2 * PAGE] = 2;
        buf[7 * PAGE + PAGE - 1] = 3;
        write_nonzero_runs(&file, &buf, PAGE as u64).unwrap();
        file.set_len(9 * PAGE as u64).unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 9 * PAGE);
        assert_eq!(&back[PAGE..], &buf[..]);
        // Three pages written: two in one run, one alone.
        let blocks = std::fs::metadata(&path).unwrap();
        assert!(std::os::unix::fs::MetadataExt::blocks(&blocks) * 512 <= 4 * PAGE as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_this_vmms_layout_is_accepted() {
        let mib = |n: u64| n << 20;
        let good = vec![MemoryRegion {
            guest_base: 0,
            size: mib(256),
            file_offset: 0,
        }];
        check_layout(&good, mib(256)).unwrap();
        let mut moved = good.clone();
        moved[0].guest_base = mib(1);
        assert!(check_layout(&moved, mib(256)).is_err());
        assert!(check_layout(&good, mib(512)).is_err());
        let mut unaligned = good.clone();
        unaligned[0].file_offset = 7;
        assert!(check_layout(&unaligned, mib(256)).is_err());
        assert!(check_layout(&[], mib(256)).is_err());
        // Above the MMIO hole: two regions, in file order.
        let big = mib(4096);
        let ranges = ram_ranges(big);
        let mut two: Vec<MemoryRegion> = ranges
            .iter()
            .scan(0, |offset, r| {
                let region = MemoryRegion {
                    guest_base: r.start,
                    size: r.size,
                    file_offset: *offset,
                };
                *offset += r.size;
                Some(region)
            })
            .collect();
        check_layout(&two, big).unwrap();
        two[1].file_offset = 0;
        assert!(check_layout(&two, big).is_err(), "overlapping in the file");
    }
}
