//! vCPUs: their initial state and the thread that runs each one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

use crate::arch::{cpuid, interrupts, msr, regs};
use crate::devices::{Buses, PowerOffBy, ResetBy, VmEvent, VmEventSender};
use crate::loader::LoadedKernel;
use crate::vmm_config::cpu_config::{self, CpuTemplate};
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
    #[error("{0}")]
    Template(#[from] cpu_config::Error),
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Spawn {
        index: u8,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {what} of vCPU {index}: {source}")]
    Save {
        index: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("the snapshot's {what} of vCPU {index} does not fit this KVM: {reason}")]
    BadState {
        index: u8,
        what: &'static str,
        reason: String,
    },
}

pub struct Vcpu {
    index: u8,
    /// Shared with the [`VcpuHandle`]: the vCPU's thread holds the lock
    /// while the guest runs; a paused vCPU's state is read through it.
    fd: Arc<Mutex<VcpuFd>>,
    stats: Arc<VcpuStats>,
}

/// A vCPU's architectural state as KVM holds it: what a snapshot saves
/// and a restore sets, in KVM's own structures.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    /// The guest's TSC frequency, where KVM reports one: a restore on a
    /// host of another frequency sets it, so the guest's clock holds.
    pub tsc_khz: Option<u32>,
}

/// A started vCPU's file descriptor, for reading its state while the VM
/// is paused (its thread is then parked and does not hold the lock).
#[derive(Clone)]
pub struct VcpuHandle {
    index: u8,
    fd: Arc<Mutex<VcpuFd>>,
}

fn lock(fd: &Mutex<VcpuFd>) -> MutexGuard<'_, VcpuFd> {
    fd.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl VcpuHandle {
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Reads the vCPU's state. `msr_indices`: the MSRs KVM can save
    /// (KVM_GET_MSR_INDEX_LIST). The VM must be paused: a running vCPU's
    /// thread holds the lock for as long as the guest runs.
    pub fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState, Error> {
        let fd = lock(&self.fd);
        let index = self.index;
        let err = |what: &'static str| {
            move |source| Error::Save {
                index,
                what,
                source,
            }
        };
        // The order Firecracker reads in: the MP state first, as reading it
        // makes KVM settle pending APIC events into the state read after.
        let mp_state = fd.get_mp_state().map_err(err("MP state"))?;
        let regs = fd.get_regs().map_err(err("registers"))?;
        let sregs = fd.get_sregs().map_err(err("sregs"))?;
        let xsave = fd.get_xsave().map_err(err("XSAVE area"))?;
        let xcrs = fd.get_xcrs().map_err(err("XCRs"))?;
        let debug_regs = fd.get_debug_regs().map_err(err("debug registers"))?;
        let lapic = fd.get_lapic().map_err(err("LAPIC"))?;
        let msrs = save_msrs(&fd, index, msr_indices)?;
        let vcpu_events = fd.get_vcpu_events().map_err(err("events"))?;
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(err("CPUID"))?
            .as_slice()
            .to_vec();
        let tsc_khz = fd.get_tsc_khz().ok();
        Ok(VcpuState {
            cpuid,
            msrs,
            regs,
            sregs,
            xsave,
            xcrs,
            debug_regs,
            lapic,
            mp_state,
            vcpu_events,
            tsc_khz,
        })
    }
}

/// The TSC deadline timer's MSR: KVM takes its value relative to the
/// guest's TSC as it is when the value is set, so it is saved (and so set)
/// after the TSC itself (Firecracker orders them the same way).
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Reads every MSR of `indices` KVM will give, in chunks of what one
/// KVM_GET_MSRS takes. KVM stops a read at the first MSR it refuses (one
/// the list names but this vCPU's CPUID hides): that one is skipped and
/// the read goes on after it. The TSC deadline comes last.
fn save_msrs(fd: &VcpuFd, index: u8, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, Error> {
    let mut ordered: Vec<u32> = indices
        .iter()
        .copied()
        .filter(|&msr| msr != MSR_IA32_TSC_DEADLINE)
        .collect();
    if indices.contains(&MSR_IA32_TSC_DEADLINE) {
        ordered.push(MSR_IA32_TSC_DEADLINE);
    }
    let indices = ordered.as_slice();
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&msr| kvm_msr_entry {
                index: msr,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| Error::BadState {
            index,
            what: "MSR list",
            reason: e.to_string(),
        })?;
        let read = fd.get_msrs(&mut msrs).map_err(|source| Error::Save {
            index,
            what: "MSRs",
            source,
        })?;
        saved.extend_from_slice(&msrs.as_slice()[..read.min(chunk.len())]);
        // Past what was read, and past the one MSR KVM refused, if any.
        rest = &rest[(read + 1).min(rest.len())..];
    }
    Ok(saved)
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
            fd: Arc::new(Mutex::new(fd)),
            stats: Arc::default(),
        })
    }

    /// What reads this vCPU's state once it runs (see [`VcpuHandle`]).
    pub fn handle(&self) -> VcpuHandle {
        VcpuHandle {
            index: self.index,
            fd: self.fd.clone(),
        }
    }

    /// Sets a snapshot's state, in place of [`Self::configure`] and
    /// [`Self::set_boot_state`], in the order KVM needs (Firecracker's):
    /// CPUID first; the registers before the events (setting registers
    /// clears a pending exception the events restore); sregs before the
    /// LAPIC (they hold the APIC base); the LAPIC before the MSRs (the TSC
    /// deadline MSR is dropped unless the LAPIC timer is in deadline mode).
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), Error> {
        let fd = lock(&self.fd);
        let index = self.index;
        let bad = |what: &'static str| {
            move |e: vmm_sys_util::fam::Error| Error::BadState {
                index,
                what,
                reason: e.to_string(),
            }
        };
        let cpuid = CpuId::from_entries(&state.cpuid).map_err(bad("CPUID"))?;
        fd.set_cpuid2(&cpuid)
            .map_err(self.configure_error("CPUID"))?;
        if let Some(khz) = state.tsc_khz {
            // Only where the frequency differs: setting it makes KVM scale
            // the TSC, which costs on every read.
            if fd.get_tsc_khz().ok() != Some(khz) {
                fd.set_tsc_khz(khz)
                    .map_err(self.configure_error("TSC frequency"))?;
            }
        }
        fd.set_mp_state(state.mp_state)
            .map_err(self.configure_error("MP state"))?;
        fd.set_regs(&state.regs)
            .map_err(self.configure_error("registers"))?;
        fd.set_sregs(&state.sregs)
            .map_err(self.configure_error("sregs"))?;
        // SAFETY: the XSAVE area comes from KVM_GET_XSAVE of the same
        // size; set_xsave copies it into the kernel, which validates it.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(self.configure_error("XSAVE area"))?;
        fd.set_xcrs(&state.xcrs)
            .map_err(self.configure_error("XCRs"))?;
        fd.set_debug_regs(&state.debug_regs)
            .map_err(self.configure_error("debug registers"))?;
        fd.set_lapic(&state.lapic)
            .map_err(self.configure_error("LAPIC"))?;
        for chunk in state.msrs.chunks(KVM_MAX_MSR_ENTRIES) {
            let msrs = Msrs::from_entries(chunk).map_err(bad("MSRs"))?;
            let set = fd.set_msrs(&msrs).map_err(self.configure_error("MSRs"))?;
            if set != chunk.len() {
                return Err(Error::BadState {
                    index,
                    what: "MSRs",
                    reason: format!(
                        "KVM refused MSR {:#x}",
                        chunk.get(set).map_or(0, |m| m.index)
                    ),
                });
            }
        }
        fd.set_vcpu_events(&state.vcpu_events)
            .map_err(self.configure_error("events"))?;
        Ok(())
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

    /// State every vCPU needs: CPUID, MSRs, FPU and LAPIC wiring, with
    /// a custom CPU template's modifiers applied over ours.
    pub fn configure(
        &self,
        supported_cpuid: &CpuId,
        vcpu_count: u8,
        template: Option<&CpuTemplate>,
    ) -> Result<(), Error> {
        let fd = lock(&self.fd);
        let mut cpuid = supported_cpuid.clone();
        cpuid::filter_cpuid(&mut cpuid, self.index, vcpu_count);
        if let Some(template) = template {
            template.apply_to_cpuid(&mut cpuid)?;
        }
        fd.set_cpuid2(&cpuid)
            .map_err(self.configure_error("CPUID"))?;

        let msrs = msr::boot_msrs().map_err(Error::MsrList)?;
        let set = fd.set_msrs(&msrs).map_err(self.configure_error("MSRs"))?;
        if set != msrs.as_slice().len() {
            return Err(Error::Msrs {
                index: self.index,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        if let Some(template) = template {
            self.apply_msr_modifiers(&fd, template)?;
        }
        fd.set_fpu(&regs::boot_fpu())
            .map_err(self.configure_error("FPU"))?;

        let mut lapic = fd.get_lapic().map_err(self.configure_error("LAPIC"))?;
        interrupts::set_lint(&mut lapic);
        fd.set_lapic(&lapic).map_err(self.configure_error("LAPIC"))
    }

    /// The template's MSR modifiers over the values KVM and our boot MSRs
    /// gave this vCPU: read, rewritten bit by bit, written back.
    fn apply_msr_modifiers(&self, fd: &VcpuFd, template: &CpuTemplate) -> Result<(), Error> {
        let entries: Vec<kvm_msr_entry> = template
            .msr_modifiers
            .iter()
            .map(|m| kvm_msr_entry {
                index: m.addr,
                ..Default::default()
            })
            .collect();
        for chunk in entries.chunks(KVM_MAX_MSR_ENTRIES) {
            let mut msrs = Msrs::from_entries(chunk).map_err(Error::MsrList)?;
            let read = fd
                .get_msrs(&mut msrs)
                .map_err(self.configure_error("MSRs"))?;
            if read != chunk.len() {
                let unknown = chunk.get(read).map_or(0, |e| e.index);
                return Err(Error::Template(cpu_config::Error::Msr(unknown)));
            }
            for entry in msrs.as_mut_slice() {
                if let Some(m) = template
                    .msr_modifiers
                    .iter()
                    .find(|m| m.addr == entry.index)
                {
                    entry.data = m.bitmap.apply(entry.data);
                }
            }
            let set = fd.set_msrs(&msrs).map_err(self.configure_error("MSRs"))?;
            if set != chunk.len() {
                let refused = chunk.get(set).map_or(0, |e| e.index);
                return Err(Error::Template(cpu_config::Error::Msr(refused)));
            }
        }
        Ok(())
    }

    /// Registers of the boot vCPU at the kernel's entry point. The others
    /// wait in the in-kernel LAPIC for the guest's startup IPI.
    pub fn set_boot_state(
        &self,
        mem: &GuestMemoryMmap,
        kernel: &LoadedKernel,
    ) -> Result<(), Error> {
        let fd = lock(&self.fd);
        let mut sregs: kvm_sregs = fd.get_sregs().map_err(self.configure_error("sregs"))?;
        regs::setup_segments(mem, &mut sregs, kernel.protocol)?;
        if kernel.protocol == regs::BootProtocol::Linux64 {
            regs::setup_page_tables(mem, &mut sregs)?;
        }
        fd.set_sregs(&sregs)
            .map_err(self.configure_error("sregs"))?;
        fd.set_regs(&regs::boot_regs(kernel.protocol, kernel.entry))
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

    /// Runs the guest until it asks to stop or fails; returns why. The fd's
    /// lock is held from one park to the next: a parked vCPU's state can
    /// be read through its [`VcpuHandle`].
    ///
    /// Before it parks, a vCPU lets KVM finish what it had started: an
    /// emulated I/O instruction whose exit was handled completes only at
    /// the next KVM_RUN. That run is made with `immediate_exit` (KVM
    /// completes the instruction and returns at once), so the state a
    /// snapshot reads is between two instructions, not in the middle of one
    /// (restored, such an instruction would run twice or be lost).
    fn run_loop(&mut self, buses: &Buses, control: &VcpuControl) -> Option<VmEvent> {
        let (pio, mmio) = (&buses.pio, &buses.mmio);
        let stats = self.stats.clone();
        let shared = self.fd.clone();
        loop {
            let settling = control.pause_requested();
            let mut fd = lock(&shared);
            fd.set_kvm_immediate_exit(u8::from(settling));
            let mut settled = false;
            match fd.run() {
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
                Ok(VcpuExit::Shutdown) => return Some(self.triple_fault(&fd)),
                Ok(VcpuExit::SystemEvent(kind, _)) => return Some(self.system_event(kind)),
                Ok(VcpuExit::InternalError) => return Some(self.internal_error(&mut fd)),
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
                    settled = settling;
                }
                Err(e) => return Some(self.failed(format!("KVM_RUN failed: {e}"))),
            }
            drop(fd);
            if settled {
                control.park_while_paused();
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
    fn triple_fault(&self, fd: &VcpuFd) -> VmEvent {
        let regs = fd.get_regs();
        let sregs = fd.get_sregs();
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

    fn internal_error(&self, fd: &mut VcpuFd) -> VmEvent {
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the kernel filled the
        // `internal` member of the exit union.
        let suberror = unsafe { fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
        let rip = fd.get_regs().map(|r| r.rip).unwrap_or(0);
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
