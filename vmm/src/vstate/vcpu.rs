//! vCPUs: their initial state and the thread that runs each one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_sregs, CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;

use crate::arch::{cpuid, interrupts, msr, regs};
use crate::devices::{Buses, PowerOffBy, ResetBy, VmEvent, VmEventSender};
use crate::loader::LoadedKernel;
use crate::vstate::control::VcpuControl;
use crate::vstate::vm::Vm;

/// KVM_EXIT_INTERNAL_ERROR suberror: the instruction emulator gave up.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create vCPU {index}: {source}")]
    Create {
        index: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set {what} of vCPU {index}: {source}")]
    Configure {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot build the boot MSR list: {0}")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    #[error("KVM accepted only {set} of {wanted} boot MSRs of vCPU {index}")]
    Msrs {
        index: u8,
        set: usize,
        wanted: usize,
    },
    #[error("cannot set up the boot registers: {0}")]
    BootRegisters(#[from] regs::Error),
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Spawn {
        index: u8,
        #[source]
        source: std::io::Error,
    },
}

pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    stats: Arc<VcpuStats>,
}

/// How often a vCPU left the guest for the VMM, by reason: the cost a
/// guest's device traffic puts on the VMM. Relaxed counters, read by the
/// control API while the vCPU runs.
#[derive(Debug, Default)]
pub struct VcpuStats {
    io_in: AtomicU64,
    io_out: AtomicU64,
    mmio_read: AtomicU64,
    mmio_write: AtomicU64,
    interrupted: AtomicU64,
}

/// A snapshot of [`VcpuStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ExitCounts {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    /// `KVM_RUN` interrupted by a signal (a pause kick, for instance).
    pub interrupted: u64,
}

impl VcpuStats {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ExitCounts {
        ExitCounts {
            io_in: self.io_in.load(Ordering::Relaxed),
            io_out: self.io_out.load(Ordering::Relaxed),
            mmio_read: self.mmio_read.load(Ordering::Relaxed),
            mmio_write: self.mmio_write.load(Ordering::Relaxed),
            interrupted: self.interrupted.load(Ordering::Relaxed),
        }
    }
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Self, Error> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|source| Error::Create { index, source })?;
        Ok(Self {
            index,
            fd,
            stats: Arc::default(),
        })
    }

    /// The vCPU's exit counters, readable while it runs.
    pub fn stats(&self) -> Arc<VcpuStats> {
        self.stats.clone()
    }

    fn configure_error(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        let index = self.index;
        move |source| Error::Configure {
            index,
            what,
            source,
        }
    }

    /// State every vCPU needs: CPUID, MSRs, FPU and LAPIC wiring.
    pub fn configure(&self, supported_cpuid: &CpuId, vcpu_count: u8) -> Result<(), Error> {
        let mut cpuid = supported_cpuid.clone();
        cpuid::filter_cpuid(&mut cpuid, self.index, vcpu_count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.configure_error("CPUID"))?;

        let msrs = msr::boot_msrs().map_err(Error::MsrList)?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.configure_error("MSRs"))?;
        if set != msrs.as_slice().len() {
            return Err(Error::Msrs {
                index: self.index,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(self.configure_error("FPU"))?;

        let mut lapic = self.fd.get_lapic().map_err(self.configure_error("LAPIC"))?;
        interrupts::set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.configure_error("LAPIC"))
    }

    /// Registers of the boot vCPU at the kernel's entry point. The others
    /// wait in the in-kernel LAPIC for the guest's startup IPI.
    pub fn set_boot_state(
        &self,
        mem: &GuestMemoryMmap,
        kernel: &LoadedKernel,
    ) -> Result<(), Error> {
        let mut sregs: kvm_sregs = self.fd.get_sregs().map_err(self.configure_error("sregs"))?;
        regs::setup_segments(mem, &mut sregs, kernel.protocol)?;
        if kernel.protocol == regs::BootProtocol::Linux64 {
            regs::setup_page_tables(mem, &mut sregs)?;
        }
        self.fd
            .set_sregs(&sregs)
            .map_err(self.configure_error("sregs"))?;
        self.fd
            .set_regs(&regs::boot_regs(kernel.protocol, kernel.entry))
            .map_err(self.configure_error("registers"))
    }

    /// Runs the vCPU on its own thread until the VM stops.
    pub fn start(
        mut self,
        buses: Arc<Buses>,
        control: Arc<VcpuControl>,
        events: VmEventSender,
    ) -> Result<JoinHandle<()>, Error> {
        let index = self.index;
        std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                // The filter goes on before the first KVM_RUN.
                if let Err(error) = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
                    events.send(self.failed(error.to_string()));
                    return;
                }
                if let Some(event) = self.run_loop(&buses, &control) {
                    events.send(event);
                }
            })
            .map_err(|source| Error::Spawn { index, source })
    }

    /// Runs the guest until it asks to stop or fails; returns why.
    fn run_loop(&mut self, buses: &Buses, control: &VcpuControl) -> Option<VmEvent> {
        let (pio, mmio) = (&buses.pio, &buses.mmio);
        let stats = self.stats.clone();
        loop {
            control.park_while_paused();
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    VcpuStats::count(&stats.io_in);
                    if !pio.read(u64::from(port), data) {
                        // Nothing decodes this port: the bus floats high.
                        data.fill(0xff);
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    VcpuStats::count(&stats.io_out);
                    pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    VcpuStats::count(&stats.mmio_read);
                    if !mmio.read(addr, data) {
                        data.fill(0);
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    VcpuStats::count(&stats.mmio_write);
                    mmio.write(addr, data);
                }
                // With the in-kernel LAPIC, HLT only reaches us if the guest
                // halted for good (interrupts off), i.e. it is finished.
                Ok(VcpuExit::Hlt) => {
                    return Some(VmEvent::PowerOff(PowerOffBy::Halt { vcpu: self.index }))
                }
                // A triple fault: how `reboot=t` resets, and how a crashed
                // guest ends. Both stop the VM.
                Ok(VcpuExit::Shutdown) => return Some(self.triple_fault()),
                Ok(VcpuExit::SystemEvent(kind, _)) => return Some(self.system_event(kind)),
                Ok(VcpuExit::InternalError) => return Some(self.internal_error()),
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Some(self.failed(format!(
                        "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                    )))
                }
                Ok(other) => {
                    let error = format!("unexpected KVM exit: {other:?}");
                    return Some(self.failed(error));
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    VcpuStats::count(&stats.interrupted);
                }
                Err(e) => return Some(self.failed(format!("KVM_RUN failed: {e}"))),
            }
        }
    }

    fn system_event(&self, kind: u32) -> VmEvent {
        match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => VmEvent::PowerOff(PowerOffBy::KvmSystemEvent),
            KVM_SYSTEM_EVENT_RESET => VmEvent::Reset(ResetBy::KvmSystemEvent),
            KVM_SYSTEM_EVENT_CRASH => self.failed("the guest reported a crash".into()),
            other => self.failed(format!("unknown KVM system event {other}")),
        }
    }

    /// The reset a triple fault is, with where the vCPU was: a guest that
    /// faults while handling a fault leaves no other trace.
    fn triple_fault(&self) -> VmEvent {
        let regs = self.fd.get_regs();
        let sregs = self.fd.get_sregs();
        let state = match (regs, sregs) {
            // KVM on AMD INITs the vCPU before it reports the shutdown
            // (the VMCB is undefined after one): the fault's registers
            // are gone, and the reset vector would only mislead.
            (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cs.selector == 0xf000 => {
                "registers not kept (KVM re-initialised the vCPU, as it does on AMD)".to_owned()
            }
            (Ok(r), Ok(s)) => format!(
                "rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} \
                 efer {:#x} idt {:#x}+{:#x}",
                r.rip, r.rsp, r.rflags, s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer,
                s.idt.base, s.idt.limit
            ),
            (Err(e), _) | (_, Err(e)) => format!("registers unreadable: {e}"),
        };
        VmEvent::Reset(ResetBy::TripleFault {
            vcpu: self.index,
            state,
        })
    }

    fn internal_error(&mut self) -> VmEvent {
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel filled the
        // `internal` member of the exit union.
        let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let what = if suberror == KVM_INTERNAL_ERROR_EMULATION {
            "emulation failure"
        } else {
            "internal error"
        };
        self.failed(format!(
            "KVM cannot run this guest: KVM_EXIT_INTERNAL_ERROR ({what}, suberror {suberror}) \
             at rip {rip:#x}. Hint: a /dev/kvm backed by PVM runs only PVM-enabled guest \
             kernels; boot a PVM guest kernel, or run the VM in the nested test host (make run-vm)"
        ))
    }

    fn failed(&self, error: String) -> VmEvent {
        VmEvent::VcpuFailed {
            index: self.index,
            error,
        }
    }
}
