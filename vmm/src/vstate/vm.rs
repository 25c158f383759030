//! The KVM VM: opening /dev/kvm, checking what it can do, registering guest
//! memory (with KVM's dirty log when dirty pages are tracked, read and
//! cleared by [`Vm::dirty_log`]) and creating the in-kernel interrupt
//! controllers and PIT.

use std::os::unix::io::FromRawFd;
use std::path::Path;

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::cpuid;
use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// The only KVM API version there has ever been.
const KVM_API_VERSION: i32 = 12;

/// Capabilities without which this VMM cannot run a guest.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::UserMemory, "user memory regions"),
    (Cap::SetTssAddr, "TSS address"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::Irqfd, "irqfd"),
    (Cap::Ioeventfd, "ioeventfd"),
    (Cap::ExtCpuid, "KVM_GET_SUPPORTED_CPUID"),
    (Cap::ImmediateExit, "immediate exit"),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open {path}: {source}; KVM needs hardware virtualization enabled and \
         the kvm module loaded (on a host without it, use the nested test host: see README)"
    )]
    OpenKvm {
        path: String,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("unsupported KVM API version {0} (expected {KVM_API_VERSION})")]
    ApiVersion(i32),
    #[error("this KVM lacks a required capability: {0}")]
    MissingCapability(&'static str),
    #[error("cannot create the VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("{requested} vCPUs asked for, but this KVM allows at most {max}")]
    TooManyVcpus { requested: u8, max: usize },
    #[error("cannot register guest memory with KVM: {0}")]
    RegisterMemory(#[source] kvm_ioctls::Error),
    #[error("cannot set up the in-kernel irqchip and PIT: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    #[error("cannot get the CPUID KVM supports: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error("cannot connect a queue notification at {addr:#x}: {source}")]
    Ioeventfd {
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot connect an interrupt line to IRQ {irq}: {source}")]
    Irqfd {
        irq: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot read the VM's {what}: {source}")]
    SaveState {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set the VM's {what} from the snapshot: {source}")]
    RestoreState {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot read KVM's dirty page log of memory slot {slot}: {source}")]
    DirtyLog {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot list the MSRs KVM saves: {0}")]
    MsrIndexList(#[source] kvm_ioctls::Error),
}

/// The in-kernel devices' state and the guest's clock: what a snapshot
/// keeps of the VM besides its vCPUs, memory and our devices.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// An open /dev/kvm whose API version and capabilities were checked.
pub struct Hypervisor {
    kvm: Kvm,
}

impl Hypervisor {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let open_error = |source| Error::OpenKvm {
            path: path.display().to_string(),
            source,
        };
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| open_error(kvm_ioctls::Error::new(libc::EINVAL)))?;
        let fd = Kvm::open_with_cloexec_at(&c_path, true).map_err(open_error)?;
        // SAFETY: `fd` was just opened on the KVM device and is owned by nobody else.
        let kvm = unsafe { Kvm::from_raw_fd(fd) };
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(Error::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(Error::MissingCapability(name));
            }
        }
        Ok(Self { kvm })
    }

    /// The most vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The MSRs KVM can save and restore, for a snapshot's vCPU state.
    /// Whether KVM has capability `cap` (KVM_CHECK_EXTENSION above 0).
    pub fn has_capability(&self, cap: u32) -> bool {
        self.kvm.check_extension_raw(libc::c_ulong::from(cap)) > 0
    }

    pub fn msr_index_list(&self) -> Result<Vec<u32>, Error> {
        self.kvm
            .get_msr_index_list()
            .map(|list| list.as_slice().to_vec())
            .map_err(Error::MsrIndexList)
    }

    /// What KVM can offer a guest, plus the features that KVM implements
    /// but leaves to the VMM to announce.
    pub fn supported_cpuid(&self) -> Result<CpuId, Error> {
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::SupportedCpuid)?;
        if self.kvm.check_extension(Cap::TscDeadlineTimer) {
            cpuid::enable_tsc_deadline(&mut cpuid);
        }
        Ok(cpuid)
    }

    pub fn create_vm(&self, vcpus: u8) -> Result<Vm, Error> {
        if usize::from(vcpus) > self.max_vcpus() {
            return Err(Error::TooManyVcpus {
                requested: vcpus,
                max: self.max_vcpus(),
            });
        }
        let fd = self.kvm.create_vm().map_err(Error::CreateVm)?;
        Ok(Vm { fd })
    }
}

/// A KVM VM file descriptor.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Tells KVM where each guest memory region lives in this process, one
    /// slot a region in `mem`'s order, logging the guest's writes to them
    /// when `mem` tracks dirty pages.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), Error> {
        let flags = if crate::vstate::memory::tracks_dirty_pages(mem) {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        };
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let host_addr = mem
                .get_host_address(region.start_addr())
                .map_err(|_| Error::RegisterMemory(kvm_ioctls::Error::new(libc::EFAULT)))?;
            let region_desc = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host_addr as u64,
            };
            // SAFETY: the mapping described by `region_desc` belongs to `mem`,
            // which the caller keeps alive for as long as the VM runs.
            unsafe { self.fd.set_user_memory_region(region_desc) }
                .map_err(Error::RegisterMemory)?;
        }
        Ok(())
    }

    /// KVM's log of the pages the guest wrote since the last call (or since
    /// the slot was registered), one bitmap a region of `mem` (as
    /// [`Self::register_memory`] numbered them), and clears it. Only for
    /// memory registered with dirty logging.
    pub fn dirty_log(&self, mem: &GuestMemoryMmap) -> Result<Vec<Vec<u64>>, Error> {
        (0u32..)
            .zip(mem.iter())
            .map(|(slot, region)| {
                let size = usize::try_from(region.len()).map_err(|_| Error::DirtyLog {
                    slot,
                    source: kvm_ioctls::Error::new(libc::EOVERFLOW),
                })?;
                self.fd
                    .get_dirty_log(slot, size)
                    .map_err(|source| Error::DirtyLog { slot, source })
            })
            .collect()
    }

    /// Creates the in-kernel PIC, IOAPIC and PIT. Must happen before vCPUs
    /// are created so that each gets its in-kernel LAPIC.
    pub fn setup_irqchip(&self) -> Result<(), Error> {
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(Error::Irqchip)?;
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS)
            .map_err(Error::Irqchip)?;
        self.fd.create_irq_chip().map_err(Error::Irqchip)?;
        // The dummy speaker port keeps port 0x61 in the kernel, where Linux
        // pokes it while calibrating timers.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(Error::Irqchip)
    }

    /// Reads the in-kernel devices' state and the clock (the vCPUs paused).
    pub fn save_state(&self) -> Result<VmState, Error> {
        let chip = |chip_id: u32, what: &'static str| {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map(|()| chip)
                .map_err(|source| Error::SaveState { what, source })
        };
        let save = |what| move |source| Error::SaveState { what, source };
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER, "master PIC")?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE, "slave PIC")?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC, "IOAPIC")?,
            pit: self.fd.get_pit2().map_err(save("PIT"))?,
            clock: self.fd.get_clock().map_err(save("clock"))?,
        })
    }

    /// Sets a snapshot's in-kernel device state and clock, after
    /// [`Self::setup_irqchip`] created the devices.
    pub fn restore_state(&self, state: &VmState) -> Result<(), Error> {
        let restore = |what| move |source| Error::RestoreState { what, source };
        for (chip, what) in [
            (&state.pic_master, "master PIC"),
            (&state.pic_slave, "slave PIC"),
            (&state.ioapic, "IOAPIC"),
        ] {
            self.fd.set_irqchip(chip).map_err(restore(what))?;
        }
        self.fd.set_pit2(&state.pit).map_err(restore("PIT"))?;
        // The guest's clock goes on from where it was saved, as in
        // Firecracker: without KVM_CLOCK_REALTIME, no jump by the time the
        // snapshot lay on disk (the guest agent or NTP sets the wall
        // clock).
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd.set_clock(&clock).map_err(restore("clock"))
    }

    /// Makes a guest write of `datamatch` to MMIO address `addr` signal
    /// `event` inside KVM, without an exit to the VMM.
    pub fn connect_mmio_notify(
        &self,
        event: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), Error> {
        self.fd
            .register_ioevent(event, &IoEventAddress::Mmio(addr), datamatch)
            .map_err(|source| Error::Ioeventfd { addr, source })
    }

    /// Makes every write to `line` raise interrupt `irq` in the guest.
    pub fn connect_irq(&self, line: &EventFd, irq: u32) -> Result<(), Error> {
        self.fd
            .register_irqfd(line, irq)
            .map_err(|source| Error::Irqfd { irq, source })
    }
}
