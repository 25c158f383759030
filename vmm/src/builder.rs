//! Turns a [`VmConfig`] into a running VM.
//!
//! Everything that depends only on the user's input (files, memory size,
//! kernel format, initrd fit) is checked before /dev/kvm is opened, so bad
//! input fails fast and the same way on any host.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::vstate::memory::GuestMemoryMmap;
use kvm_bindings::CpuId;
use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::CMDLINE_MAX_SIZE;
use crate::arch::layout::{VIRTIO_FIRST_IRQ, VIRTIO_LAST_IRQ, VIRTIO_MMIO_START};
use crate::arch::{acpi, boot, mptable};
use crate::config::{self, ConsoleOutput, DriveConfig, NetConfig, VmConfig, VsockConfig};
use crate::devices::legacy::acpi_pm::{ACPI_PM_PORT, ACPI_PM_PORT_LEN};
use crate::devices::legacy::i8042::{I8042_KBD_IRQ, I8042_PORT, I8042_PORT_LEN};
use crate::devices::legacy::serial::{self, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use crate::devices::legacy::{console_log, AcpiPm, ConsoleLog, SerialConsole, I8042};
use crate::devices::pseudo::boot_timer::{
    BootTime, BootTimer, BOOT_TIMER_ADDR, BOOT_TIMER_LEN, FIRECRACKER_BOOT_TIMER_ADDR,
};
use crate::devices::virtio::balloon::{Balloon, BalloonError, BalloonStats, SharedBalloon};
use crate::devices::virtio::block::{Block, Disk, DiskError, SharedDisk};
use crate::devices::virtio::mmio::{self, MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{MmdsPort, Net, NetLimiters};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::tap::Tap;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{
    Interrupt, SharedMemory, VirtioDevice, TYPE_BALLOON, TYPE_BLOCK, TYPE_NET, TYPE_RNG, TYPE_VSOCK,
};
use crate::devices::{bus, Bus, Buses, IrqLine, VmEvent, VmEventSender};
use crate::loader::{self, LoadedInitrd, LoadedKernel};
use crate::mmds::stack::MmdsStack;
use crate::mmds::Mmds;
use crate::rate_limiter::{self, RateLimiterUpdate, SharedRateLimiter};
use crate::snapshot::state::{MemoryRegion, MicrovmState, VirtioDeviceState};
use crate::vmm_config::cpu_config::{self, CpuTemplate};
use crate::vmm_config::rate_limiter::RateLimiterConfig;
use crate::vstate::control::{self, VcpuControl};
use crate::vstate::vcpu::{self, ExitCounts, Vcpu, VcpuHandle, VcpuStats};
use crate::vstate::{memory, vm};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid VM configuration: {0}")]
    Config(#[from] config::Error),
    #[error("cannot set up the metadata service on network interface {id}: {source}")]
    Mmds {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("network interface {id}: {source}")]
    Net {
        id: String,
        #[source]
        source: crate::devices::virtio::tap::Error,
    },
    #[error("drive {id}: cannot open disk image {path}: {source}")]
    Drive {
        id: String,
        path: PathBuf,
        #[source]
        source: DiskError,
    },
    #[error("{0}")]
    Vsock(#[from] crate::devices::virtio::vsock::Error),
    #[error("{0}")]
    Memory(#[from] memory::Error),
    #[error("kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        #[source]
        source: loader::Error,
    },
    #[error("initrd {path}: {source}")]
    Initrd {
        path: PathBuf,
        #[source]
        source: loader::Error,
    },
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("{0}")]
    MpTable(#[from] mptable::Error),
    #[error("{0}")]
    Acpi(#[from] acpi::Error),
    #[error("{0}")]
    BootParams(#[from] boot::Error),
    #[error("{0}")]
    Kvm(#[from] vm::Error),
    #[error("{0}")]
    Vcpu(#[from] vcpu::Error),
    #[error("cannot create an event file descriptor: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("device set-up: {0}")]
    Bus(#[from] bus::Error),
    #[error("{0}")]
    VcpuControl(#[from] control::Error),
    #[error("{0}")]
    Seccomp(#[from] crate::seccomp::Error),
    #[error("virtio device set-up: {0}")]
    Virtio(#[from] mmio::Error),
    #[error("{0} virtio devices asked for; at most {max} fit", max = VIRTIO_LAST_IRQ - VIRTIO_FIRST_IRQ + 1)]
    TooManyDevices(usize),
    #[error("{device}: {source}")]
    RateLimiter {
        device: String,
        #[source]
        source: rate_limiter::Error,
    },
    #[error("the snapshot does not fit the VM it describes: {0}")]
    Snapshot(String),
    #[error("{0}")]
    CpuTemplate(#[from] cpu_config::Error),
    #[error("cannot restore device {id}: {source}")]
    RestoreDevice {
        id: String,
        #[source]
        source: mmio::Error,
    },
    #[error("cannot create the balloon's statistics timer: {0}")]
    BalloonTimer(#[source] std::io::Error),
}

/// Why a running device cannot be updated.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("The drive {0} does not exist.")]
    NoSuchDrive(String),
    #[error("Unable to patch the drive {id}: cannot open path_on_host {path}: {source}")]
    DriveImage {
        id: String,
        path: PathBuf,
        #[source]
        source: DiskError,
    },
    #[error("The network interface {0} does not exist.")]
    NoSuchInterface(String),
    /// Firecracker's text for a device the VM does not have.
    #[error("Failed perform action on device: Device not found")]
    NoBalloon,
    #[error("Balloon: {0}")]
    Balloon(#[from] BalloonError),
}

/// A VM whose vCPUs are running.
pub struct RunningVm {
    events: Receiver<VmEvent>,
    controller: VmController,
    // Guest memory and the VM must outlive the vCPU threads; the process
    // exits while they still run, so these are never dropped before.
    _memory: Arc<GuestMemoryMmap>,
    _vm: Arc<vm::Vm>,
    /// Socket files the devices bound, removed when the VM ends: the
    /// process exits without dropping the devices.
    socket_files: Vec<PathBuf>,
}

impl RunningVm {
    /// A handle to pause, resume or stop the VM from another thread (the
    /// control API's).
    pub fn controller(&self) -> VmController {
        self.controller.clone()
    }

    /// Blocks until the first reason for the VM to stop.
    pub fn wait(self) -> VmEvent {
        let event = self.events.recv().unwrap_or(VmEvent::VcpuFailed {
            index: 0,
            error: "every vCPU thread ended without a reason".into(),
        });
        for path in &self.socket_files {
            let _ = std::fs::remove_file(path);
        }
        event
    }
}

/// Controls a running VM; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct VmController {
    inner: Arc<ControllerInner>,
}

struct ControllerInner {
    vcpus: Vec<JoinHandle<()>>,
    run: Arc<VcpuControl>,
    i8042: Arc<Mutex<I8042>>,
    stop: VmEventSender,
    vcpu_stats: Vec<Arc<VcpuStats>>,
    devices: Vec<DeviceHandle>,
    started: Instant,
    boot_time: BootTime,
    /// What a snapshot reads (see `snapshot`).
    serial: Arc<Mutex<SerialConsole>>,
    vcpu_handles: Vec<VcpuHandle>,
    msr_indices: Vec<u32>,
    memory: Arc<GuestMemoryMmap>,
    vm: Arc<vm::Vm>,
    config: VmConfig,
}

/// Counters of a running VM (`GET /stratum/stats`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VmStats {
    /// Time since the vCPUs started.
    pub uptime_ms: u64,
    /// From the start of the VM's build to the guest's boot-timer write
    /// (its init is up); absent until the guest writes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_boot_time_us: Option<u64>,
    pub vcpus: Vec<VcpuExits>,
    pub devices: Vec<DeviceStats>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VcpuExits {
    pub index: usize,
    pub exits: ExitCounts,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceStats {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub interrupts: u64,
}

impl VmController {
    /// Applies `update` to the rate limiter of the drive `id` (`PATCH
    /// /drives/{id}`).
    pub fn update_drive_rate_limiter(
        &self,
        id: &str,
        update: RateLimiterUpdate,
    ) -> Result<(), UpdateError> {
        let (limiter, _) = self.drive(id)?;
        limiter.update(update);
        Ok(())
    }

    /// Makes the file at `path` the image of the drive `id` (`PATCH
    /// /drives/{id}` with `path_on_host`); returns its capacity in
    /// sectors. The file is opened on the calling thread, non-blocking
    /// and only if it is a regular file or a block device (see
    /// `image_file`), so a caller holding a lock never waits on it. If it
    /// cannot be opened the drive keeps its image.
    pub fn update_drive_image(&self, id: &str, path: &Path) -> Result<u64, UpdateError> {
        let (_, disk) = self.drive(id)?;
        disk.replace(path)
            .map_err(|source| UpdateError::DriveImage {
                id: id.to_string(),
                path: path.to_path_buf(),
                source,
            })
    }

    /// The rate limiter and the image of the drive `id`.
    fn drive(&self, id: &str) -> Result<(&SharedRateLimiter, &SharedDisk), UpdateError> {
        match self.controls(id, TYPE_BLOCK) {
            Some(DeviceControls::Block { limiter, disk }) => Ok((limiter, disk)),
            _ => Err(UpdateError::NoSuchDrive(id.to_string())),
        }
    }

    /// Applies `rx` and `tx` to the rate limiters of the network
    /// interface `id` (`PATCH /network-interfaces/{id}`).
    pub fn update_net_rate_limiters(
        &self,
        id: &str,
        rx: RateLimiterUpdate,
        tx: RateLimiterUpdate,
    ) -> Result<(), UpdateError> {
        match self.controls(id, TYPE_NET) {
            Some(DeviceControls::Net(limiters)) => {
                limiters.rx.update(rx);
                limiters.tx.update(tx);
                Ok(())
            }
            _ => Err(UpdateError::NoSuchInterface(id.to_string())),
        }
    }

    /// `PATCH /balloon`: the balloon's new target (see
    /// [`SharedBalloon::set_target_mib`]).
    pub fn update_balloon(&self, amount_mib: u32) -> Result<(), UpdateError> {
        Ok(self.balloon()?.set_target_mib(amount_mib)?)
    }

    /// `PATCH /balloon/statistics`: the statistics' new interval.
    pub fn update_balloon_stats_interval(&self, interval_s: u16) -> Result<(), UpdateError> {
        Ok(self.balloon()?.set_stats_interval(interval_s)?)
    }

    /// `GET /balloon/statistics`.
    pub fn balloon_stats(&self) -> Result<BalloonStats, UpdateError> {
        Ok(self.balloon()?.stats()?)
    }

    fn balloon(&self) -> Result<&SharedBalloon, UpdateError> {
        match self.controls(BALLOON_ID, TYPE_BALLOON) {
            Some(DeviceControls::Balloon(balloon)) => Ok(balloon),
            _ => Err(UpdateError::NoBalloon),
        }
    }

    fn controls(&self, id: &str, device_type: u32) -> Option<&DeviceControls> {
        self.inner
            .devices
            .iter()
            .find(|d| d.id == id && d.kind == device_kind(device_type))
            .map(|d| &d.controls)
    }
}

/// Why a running VM's state cannot be read for a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("the microVM must be paused before a snapshot is created")]
    NotPaused,
    #[error("device {id} did not pause: {source}")]
    PauseDevice {
        id: String,
        #[source]
        source: crate::devices::virtio::worker::PauseTimeout,
    },
    #[error("{0}")]
    Vm(#[from] vm::Error),
    #[error("{0}")]
    Vcpu(#[from] vcpu::Error),
    #[error("device {id}: {source}")]
    Device {
        id: String,
        #[source]
        source: mmio::Error,
    },
}

/// Keeps every device worker paused while a snapshot is made; resumes
/// them when dropped, whatever became of the snapshot.
pub struct DevicesPaused<'a> {
    vm: &'a VmController,
}

impl Drop for DevicesPaused<'_> {
    fn drop(&mut self) {
        for device in &self.vm.inner.devices {
            if let Some(worker) = device.transport().device().worker() {
                worker.resume();
            }
        }
    }
}

impl VmController {
    /// Pauses every device's worker (the vCPUs must be paused already), so
    /// that nothing writes guest memory or moves a queue until the guard
    /// is dropped.
    pub fn pause_devices(&self) -> Result<DevicesPaused<'_>, SaveError> {
        if !self.is_paused() {
            return Err(SaveError::NotPaused);
        }
        let guard = DevicesPaused { vm: self };
        for device in &self.inner.devices {
            if let Some(worker) = device.transport().device().worker() {
                worker.pause().map_err(|source| SaveError::PauseDevice {
                    id: device.id.clone(),
                    source,
                })?;
            }
        }
        Ok(guard)
    }

    /// The VM's state but for its memory, with `config` (the VM's current
    /// configuration, as PATCHes left it) as its configuration. The
    /// devices must be paused ([`Self::pause_devices`]). Memory regions
    /// are laid out one after the other in the memory file.
    pub fn save_state(
        &self,
        _paused: &DevicesPaused<'_>,
        mut config: VmConfig,
    ) -> Result<MicrovmState, SaveError> {
        let inner = &self.inner;
        // The MACs the guest knows, also those picked at random at boot.
        for nic in &mut config.nics {
            if let Some(built) = inner.config.nics.iter().find(|n| n.id == nic.id) {
                nic.mac = built.mac;
            }
        }
        let vcpus = inner
            .vcpu_handles
            .iter()
            .map(|vcpu| vcpu.save_state(&inner.msr_indices))
            .collect::<Result<Vec<_>, _>>()?;
        let virtio = inner
            .devices
            .iter()
            .map(|device| {
                let transport = device
                    .transport()
                    .state()
                    .map_err(|source| SaveError::Device {
                        id: device.id.clone(),
                        source,
                    })?;
                Ok(VirtioDeviceState {
                    id: device.id.clone(),
                    base: device.base,
                    irq: device.irq,
                    transport,
                })
            })
            .collect::<Result<Vec<_>, SaveError>>()?;
        let mut file_offset = 0;
        let memory = inner
            .memory
            .iter()
            .map(|region| {
                let saved = MemoryRegion {
                    guest_base: region.start_addr().raw_value(),
                    size: region.len(),
                    file_offset,
                };
                file_offset += region.len();
                saved
            })
            .collect();
        Ok(MicrovmState {
            config,
            memory,
            vm: inner.vm.save_state()?,
            vcpus,
            serial: inner
                .serial
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .state(),
            i8042: inner
                .i8042
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .state(),
            virtio,
        })
    }

    /// Guest memory, for a snapshot's memory file.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.inner.memory
    }

    /// Whether the VM tracks dirty pages (`track_dirty_pages`).
    pub fn tracks_dirty_pages(&self) -> bool {
        memory::tracks_dirty_pages(&self.inner.memory)
    }

    /// The pages written since the last call (or since the VM was built
    /// or restored), one bitmap a memory region: KVM's log of the guest's
    /// writes OR the bitmap of the devices' writes through vm-memory. Both
    /// are cleared. The devices must be paused, so that no page is written
    /// between the two reads; empty bitmaps when nothing is tracked.
    pub fn take_dirty_pages(
        &self,
        _paused: &DevicesPaused<'_>,
    ) -> Result<Vec<Vec<u64>>, SaveError> {
        let mem = &self.inner.memory;
        if !memory::tracks_dirty_pages(mem) {
            return Ok(mem.iter().map(|_| Vec::new()).collect());
        }
        let kvm = self.inner.vm.dirty_log(mem)?;
        let own = memory::take_own_dirty(mem);
        Ok(kvm
            .iter()
            .zip(&own)
            .map(|(kvm, own)| memory::or_bitmaps(kvm, own))
            .collect())
    }
}

impl std::fmt::Debug for VmController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmController")
            .field("vcpus", &self.inner.vcpus.len())
            .finish_non_exhaustive()
    }
}

impl VmController {
    /// Stops all vCPUs; the guest's clocks stop with them.
    pub fn pause(&self) -> Result<(), control::Error> {
        self.inner.run.pause(&self.inner.vcpus)
    }

    pub fn resume(&self) {
        self.inner.run.resume();
    }

    pub fn is_paused(&self) -> bool {
        self.inner.run.is_paused()
    }

    /// Asks the guest to shut down as a PC's Ctrl+Alt+Del does; the VM
    /// ends once the guest resets or powers off.
    pub fn send_ctrl_alt_del(&self) {
        self.inner
            .i8042
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send_ctrl_alt_del();
    }

    pub fn stats(&self) -> VmStats {
        let inner = &self.inner;
        VmStats {
            uptime_ms: u64::try_from(inner.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            guest_boot_time_us: inner.boot_time.get(),
            vcpus: inner
                .vcpu_stats
                .iter()
                .enumerate()
                .map(|(index, stats)| VcpuExits {
                    index,
                    exits: stats.snapshot(),
                })
                .collect(),
            devices: inner
                .devices
                .iter()
                .map(|d| DeviceStats {
                    id: d.id.clone(),
                    kind: d.kind,
                    interrupts: d.interrupt.raised(),
                })
                .collect(),
        }
    }

    /// Ends the VM at once, whatever the guest is doing.
    pub fn stop(&self) {
        self.inner.stop.send(VmEvent::Stopped);
    }
}

fn open(what: &'static str, path: &Path) -> Result<File, Error> {
    crate::image_file::open(path, false).map_err(|source| Error::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Validates `config`, loads the guest and starts its vCPUs.
pub fn build_and_start(config: &VmConfig) -> Result<RunningVm, Error> {
    let build_start = Instant::now();
    config.validate()?;
    let vcpu_count =
        u8::try_from(config.vcpus).map_err(|_| config::Error::TooManyVcpus(config.vcpus))?;
    let mut kernel_file = open("kernel", &config.kernel)?;
    let mut initrd_file = match &config.initrd {
        Some(path) => Some((path, open("initrd", path)?)),
        None => None,
    };
    let console = open_console(config)?;
    let disks = open_drives(&config.drives)?;
    let taps = open_taps(&config.nics)?;
    let (vsock, socket_files) = open_vsock(config.vsock.as_ref())?;
    // The configuration as the guest will know it: a snapshot restores
    // the MACs it has, including those picked at random here.
    let mut spec = config.clone();
    for (nic, (_, mac)) in spec.nics.iter_mut().zip(&taps) {
        nic.mac = Some(*mac);
    }

    let mem_size = config.memory_bytes();
    let mem = Arc::new(memory::create_guest_memory(
        mem_size,
        config.huge_pages,
        config.track_dirty_pages,
    )?);
    let kernel =
        loader::load_kernel(&mem, mem_size, &mut kernel_file).map_err(|source| Error::Kernel {
            path: config.kernel.clone(),
            source,
        })?;
    let initrd = match &mut initrd_file {
        Some((path, file)) => Some(load_initrd(&mem, mem_size, &kernel, path, file)?),
        None => None,
    };
    let virtio = place_virtio_devices(config, disks, taps, vsock)?;
    let virtio_windows: Vec<acpi::MmioDevice> = virtio
        .iter()
        .map(|slot| acpi::MmioDevice {
            base: slot.base,
            size: MMIO_WINDOW_SIZE,
            irq: slot.irq,
        })
        .collect();
    let mut cmdline = kernel_cmdline(&config.cmdline)?;
    if acpi_disabled(&config.cmdline) {
        declare_on_cmdline(&mut cmdline, &virtio_windows)?;
    }
    mptable::setup(&mem, vcpu_count)?;
    let rsdp = acpi::setup(&mem, vcpu_count, &virtio_windows)?;
    let boot_inputs = boot::BootInputs {
        mem_size,
        initrd,
        rsdp,
    };
    boot::write_boot_params(&mem, &kernel, &boot_inputs, &cmdline)?;

    let (hypervisor, vm) = kvm_vm(&config.kvm_device, vcpu_count, &mem)?;
    let supported_cpuid = hypervisor.supported_cpuid()?;
    let msr_indices = hypervisor.msr_index_list()?;
    if let Some(template) = &config.cpu_template {
        check_template(&hypervisor, &msr_indices, template)?;
    }
    start_machine(Machine {
        config: spec,
        build_start,
        msr_indices,
        mem,
        vm,
        console,
        virtio,
        socket_files,
        origin: Origin::Boot {
            kernel: &kernel,
            supported_cpuid,
        },
    })
}

/// Builds the VM a snapshot holds, on guest memory mapped from its memory
/// file, and starts its vCPUs (paused unless `resume`). The devices are
/// those of the snapshot's configuration, opened anew (with `overrides`
/// applied by the caller); where the console goes and the KVM device are
/// `base`'s. Everything the state file says is checked against what is
/// built from it before any vCPU runs.
pub fn restore_and_start(
    base: &VmConfig,
    state: &MicrovmState,
    mem: GuestMemoryMmap,
    resume: bool,
) -> Result<RunningVm, Error> {
    let build_start = Instant::now();
    let config = VmConfig {
        console: base.console.clone(),
        console_max_bytes: base.console_max_bytes,
        console_input: base.console_input,
        console_rate_limit: base.console_rate_limit,
        kvm_device: base.kvm_device.clone(),
        boot_timer: base.boot_timer,
        ..state.config.clone()
    };
    config.validate()?;
    let vcpu_count =
        u8::try_from(config.vcpus).map_err(|_| config::Error::TooManyVcpus(config.vcpus))?;
    if state.vcpus.len() != usize::from(vcpu_count) {
        return Err(Error::Snapshot(format!(
            "it holds {} vCPU states for a VM of {vcpu_count} vCPUs",
            state.vcpus.len()
        )));
    }
    let console = open_console(&config)?;
    let disks = open_drives(&config.drives)?;
    let taps = open_taps(&config.nics)?;
    let (vsock, socket_files) = open_vsock(config.vsock.as_ref())?;
    let virtio = place_virtio_devices(&config, disks, taps, vsock)?;
    check_virtio_places(&virtio, &state.virtio)?;

    let mem = Arc::new(mem);
    let (hypervisor, vm) = kvm_vm(&config.kvm_device, vcpu_count, &mem)?;
    vm.restore_state(&state.vm)?;
    start_machine(Machine {
        config,
        build_start,
        msr_indices: hypervisor.msr_index_list()?,
        mem,
        vm,
        console,
        virtio,
        socket_files,
        origin: Origin::Restore { state, resume },
    })
}

/// A KVM VM on `mem` with its in-kernel irqchip and PIT: what a boot and
/// a restore both start from.
fn kvm_vm(
    kvm_device: &Path,
    vcpu_count: u8,
    mem: &GuestMemoryMmap,
) -> Result<(vm::Hypervisor, vm::Vm), Error> {
    let hypervisor = vm::Hypervisor::open(kvm_device)?;
    let vm = hypervisor.create_vm(vcpu_count)?;
    vm.register_memory(mem)?;
    vm.setup_irqchip()?;
    Ok((hypervisor, vm))
}

/// The snapshot's devices must sit where this build puts them: the same
/// ids at the same addresses and IRQs, in the same order.
fn check_virtio_places(slots: &[VirtioSlot], saved: &[VirtioDeviceState]) -> Result<(), Error> {
    if slots.len() != saved.len() {
        return Err(Error::Snapshot(format!(
            "it holds {} virtio devices, its configuration makes {}",
            saved.len(),
            slots.len()
        )));
    }
    for (slot, saved) in slots.iter().zip(saved) {
        if slot.id != saved.id || slot.base != saved.base || slot.irq != saved.irq {
            return Err(Error::Snapshot(format!(
                "its device {} at {:#x} (IRQ {}) is not where its configuration puts {} ({:#x}, IRQ {})",
                saved.id, saved.base, saved.irq, slot.id, slot.base, slot.irq
            )));
        }
    }
    Ok(())
}

/// Where a VM's state comes from.
enum Origin<'a> {
    /// A fresh boot: CPUID from what KVM supports, the boot vCPU at the
    /// kernel's entry.
    Boot {
        kernel: &'a LoadedKernel,
        supported_cpuid: CpuId,
    },
    /// A snapshot, its vCPUs started paused unless `resume`.
    Restore {
        state: &'a MicrovmState,
        resume: bool,
    },
}

/// What both a boot and a restore have made when the devices and vCPUs
/// are to be set up.
struct Machine<'a> {
    /// The configuration as the guest sees it (MACs filled in).
    config: VmConfig,
    build_start: Instant,
    msr_indices: Vec<u32>,
    mem: Arc<GuestMemoryMmap>,
    vm: vm::Vm,
    console: Box<dyn std::io::Write + Send>,
    virtio: Vec<VirtioSlot>,
    socket_files: SocketFiles,
    origin: Origin<'a>,
}

/// Sets up the devices and vCPUs, fresh or from a snapshot, and starts
/// the vCPUs.
fn start_machine(machine: Machine<'_>) -> Result<RunningVm, Error> {
    let Machine {
        config,
        build_start,
        msr_indices,
        mem,
        vm,
        console,
        virtio,
        socket_files,
        origin,
    } = machine;
    let saved = match &origin {
        Origin::Boot { .. } => None,
        Origin::Restore { state, .. } => Some(*state),
    };
    let (sender, events) = channel();
    let stop = VmEventSender(sender);
    let serial_irq = irq_line(&vm, COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(match saved {
        None => SerialConsole::new(serial_irq, console),
        Some(state) => SerialConsole::from_state(&state.serial, serial_irq, console)
            .map_err(|e| Error::Snapshot(e.to_string()))?,
    }));
    let i8042_irq = irq_line(&vm, I8042_KBD_IRQ)?;
    let i8042 = Arc::new(Mutex::new(match saved {
        None => I8042::new(stop.clone(), i8042_irq),
        Some(state) => I8042::from_state(&state.i8042, stop.clone(), i8042_irq),
    }));
    let pio = legacy_bus(serial.clone(), i8042.clone(), AcpiPm::new(stop.clone()))?;
    let (mut mmio, devices) = virtio_bus(&vm, &mem, virtio, saved.map(|s| s.virtio.as_slice()))?;
    let boot_time = BootTime::default();
    mmio.insert(
        Arc::new(Mutex::new(BootTimer::new(build_start, boot_time.clone()))),
        BOOT_TIMER_ADDR,
        BOOT_TIMER_LEN,
    )?;
    if config.boot_timer {
        // A timer of its own: a Firecracker guest's signal is logged even
        // when our init's came first; the stats keep ours.
        let firecrackers = BootTimer::new(build_start, BootTime::default());
        mmio.insert(
            Arc::new(Mutex::new(firecrackers)),
            FIRECRACKER_BOOT_TIMER_ADDR,
            BOOT_TIMER_LEN,
        )?;
    }
    let buses = Arc::new(Buses { pio, mmio });

    let vcpu_count =
        u8::try_from(config.vcpus).map_err(|_| config::Error::TooManyVcpus(config.vcpus))?;
    let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
    for index in 0..vcpu_count {
        let vcpu = Vcpu::new(&vm, index)?;
        match &origin {
            Origin::Boot {
                kernel,
                supported_cpuid,
            } => {
                vcpu.configure(supported_cpuid, vcpu_count, config.cpu_template.as_ref())?;
                if index == 0 {
                    vcpu.set_boot_state(&mem, kernel)?;
                }
            }
            Origin::Restore { state, .. } => {
                let saved = state
                    .vcpus
                    .get(usize::from(index))
                    .ok_or_else(|| Error::Snapshot(format!("it has no state for vCPU {index}")))?;
                vcpu.restore_state(saved)?;
            }
        }
        vcpus.push(vcpu);
    }
    let vcpu_stats = vcpus.iter().map(Vcpu::stats).collect();
    let vcpu_handles = vcpus.iter().map(Vcpu::handle).collect();
    control::install_kick_handler()?;
    // Device workers start when a vCPU activates a device: through this
    // thread, so they do not inherit the vCPU's filter (see seccomp.rs).
    crate::seccomp::start_spawner()?;
    let paused = matches!(origin, Origin::Restore { resume: false, .. });
    let run = Arc::new(VcpuControl::new(paused));
    let handles = vcpus
        .into_iter()
        .map(|vcpu| vcpu.start(buses.clone(), run.clone(), stop.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    if saved.is_some() {
        for device in &devices {
            device.transport().device_mut().after_restore();
        }
    }
    let vm = Arc::new(vm);
    let controller = VmController {
        inner: Arc::new(ControllerInner {
            vcpus: handles,
            run,
            i8042,
            stop,
            vcpu_stats,
            devices,
            started: Instant::now(),
            boot_time,
            serial: serial.clone(),
            vcpu_handles,
            msr_indices,
            memory: mem.clone(),
            vm: vm.clone(),
            config: config.clone(),
        }),
    };
    if config.console_input {
        forward_stdin(serial);
    }
    crate::seccomp::mark_vm_started();
    Ok(RunningVm {
        events,
        controller,
        _memory: mem,
        _vm: vm,
        socket_files: socket_files.into_paths(),
    })
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    path: &Path,
    file: &mut File,
) -> Result<LoadedInitrd, Error> {
    loader::load_initrd(mem, mem_size, kernel, file).map_err(|source| Error::Initrd {
        path: path.to_path_buf(),
        source,
    })
}

fn kernel_cmdline(text: &str) -> Result<Cmdline, Error> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| Error::Cmdline(e.to_string()))?;
    if !text.trim().is_empty() {
        cmdline
            .insert_str(text.trim())
            .map_err(|e| Error::Cmdline(e.to_string()))?;
    }
    Ok(cmdline)
}

fn open_console(config: &VmConfig) -> Result<Box<dyn std::io::Write + Send>, Error> {
    let (path, what) = match &config.console {
        ConsoleOutput::Stdout => (Path::new("stdout"), "console"),
        ConsoleOutput::File(path) => (path.as_path(), "console file"),
        ConsoleOutput::Named(path) => (path.as_path(), "serial_out_path"),
    };
    let open_error = |source| Error::Open {
        what,
        path: path.to_path_buf(),
        source,
    };
    let max_bytes = config.console_max_bytes;
    let output: Box<dyn std::io::Write + Send> = match &config.console {
        ConsoleOutput::Stdout => {
            // A raw duplicate of fd 1, not `Stdout`: that one buffers lines,
            // and a guest's prompt has no newline.
            let fd = std::os::fd::AsFd::as_fd(&std::io::stdout())
                .try_clone_to_owned()
                .map_err(open_error)?;
            Box::new(File::from(fd))
        }
        ConsoleOutput::File(path) => {
            Box::new(ConsoleLog::create(path, max_bytes).map_err(open_error)?)
        }
        ConsoleOutput::Named(path) => {
            console_log::open_named(path, max_bytes).map_err(open_error)?
        }
    };
    match config.console_rate_limit {
        None => Ok(output),
        Some(bucket) => {
            let limited = console_log::RateLimited::new(output, &bucket).map_err(|e| {
                open_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            Ok(Box::new(limited))
        }
    }
}

/// What a custom CPU template needs of this host's KVM, checked before
/// any vCPU exists: the capabilities it adds, the MSRs it modifies.
fn check_template(
    hypervisor: &vm::Hypervisor,
    msr_indices: &[u32],
    template: &CpuTemplate,
) -> Result<(), Error> {
    if let Some(missing) = template
        .required_capabilities()
        .find(|cap| !hypervisor.has_capability(*cap))
    {
        return Err(cpu_config::Error::MissingCapability(missing).into());
    }
    template.check_msrs(msr_indices)?;
    Ok(())
}

/// An interrupt line wired to guest IRQ `irq` through an irqfd.
fn irq_line(vm: &vm::Vm, irq: u32) -> Result<IrqLine, Error> {
    let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.connect_irq(&fd, irq)?;
    Ok(IrqLine(fd))
}

fn legacy_bus(
    serial: Arc<Mutex<SerialConsole>>,
    i8042: Arc<Mutex<I8042>>,
    acpi_pm: AcpiPm,
) -> Result<Bus, Error> {
    let mut pio = Bus::new();
    pio.insert(serial, COM1_PORT.into(), COM1_PORT_LEN.into())?;
    pio.insert(i8042, I8042_PORT.into(), I8042_PORT_LEN)?;
    pio.insert(
        Arc::new(Mutex::new(acpi_pm)),
        ACPI_PM_PORT,
        ACPI_PM_PORT_LEN,
    )?;
    Ok(pio)
}

/// Whether the guest is told to ignore ACPI.
fn acpi_disabled(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|arg| arg == "acpi=off")
}

/// Declares virtio devices with `virtio_mmio.device=` for a guest without
/// ACPI. With ACPI they are in the DSDT instead: a hardware-reduced ACPI
/// platform has no legacy PIC, so Linux cannot take an IRQ given on the
/// command line, only one the firmware describes.
fn declare_on_cmdline(cmdline: &mut Cmdline, devices: &[acpi::MmioDevice]) -> Result<(), Error> {
    for device in devices {
        cmdline
            .add_virtio_mmio_device(device.size, GuestAddress(device.base), device.irq, None)
            .map_err(|e| Error::Cmdline(e.to_string()))?;
    }
    Ok(())
}

/// The balloon's device id (there is at most one), as Firecracker's.
const BALLOON_ID: &str = "balloon";

/// A virtio device and the MMIO window and IRQ it gets.
struct VirtioSlot {
    /// The drive or interface id, "vsock", "entropy" or "balloon".
    id: String,
    device: Box<dyn VirtioDevice>,
    controls: DeviceControls,
    base: u64,
    irq: u32,
}

/// What the controller may change on a running device: its rate
/// limiters, and a drive's image.
enum DeviceControls {
    None,
    Block {
        limiter: SharedRateLimiter,
        disk: SharedDisk,
    },
    Net(NetLimiters),
    /// The balloon's target, statistics interval and statistics.
    Balloon(SharedBalloon),
}

/// A rate limiter for `device` built from `config` (unlimited without).
fn limiter(device: String, config: Option<&RateLimiterConfig>) -> Result<SharedRateLimiter, Error> {
    SharedRateLimiter::from_config(config).map_err(|source| Error::RateLimiter { device, source })
}

/// Attaches to each interface's TAP device.
fn open_taps(nics: &[NetConfig]) -> Result<Vec<(Tap, [u8; 6])>, Error> {
    nics.iter()
        .map(|nic| {
            let tap = Tap::open(&nic.tap).map_err(|source| Error::Net {
                id: nic.id.clone(),
                source,
            })?;
            Ok((tap, nic.mac.unwrap_or_else(random_local_mac)))
        })
        .collect()
}

/// A random locally administered unicast MAC, as a NIC without a
/// configured address gets one.
fn random_local_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most 6 bytes into `mac`.
    unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Binds the vsock device's host socket; the guard removes its file again
/// if a later step fails.
fn open_vsock(config: Option<&VsockConfig>) -> Result<(Option<Vsock>, SocketFiles), Error> {
    let Some(v) = config else {
        return Ok((None, SocketFiles(Vec::new())));
    };
    let vsock = Vsock::new(u64::from(v.guest_cid), &v.uds_path)?;
    Ok((Some(vsock), SocketFiles(vec![v.uds_path.clone()])))
}

/// Socket files a build created, removed if the build fails. Once the VM
/// runs, [`RunningVm::wait`] removes them on the main thread: the devices
/// holding the sockets may be dropped last by a vCPU thread, whose seccomp
/// filter rightly has no `unlink`.
struct SocketFiles(Vec<PathBuf>);

impl SocketFiles {
    /// The running VM takes them over.
    fn into_paths(mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Opens each drive's image (read-only drives O_RDONLY).
fn open_drives(drives: &[DriveConfig]) -> Result<Vec<Disk>, Error> {
    drives
        .iter()
        .map(|drive| {
            Disk::open(&drive.path, drive.read_only, drive.serial.as_deref()).map_err(|source| {
                Error::Drive {
                    id: drive.id.clone(),
                    path: drive.path.clone(),
                    source,
                }
            })
        })
        .collect()
}

/// The configured virtio devices, each with its place: the drives in
/// order (the guest's vda, vdb, ...), the network interfaces in order,
/// then vsock, the entropy device and the balloon. Done before
/// the command line is written, since the guest learns of them there.
fn place_virtio_devices(
    config: &VmConfig,
    disks: Vec<Disk>,
    taps: Vec<(Tap, [u8; 6])>,
    vsock: Option<Vsock>,
) -> Result<Vec<VirtioSlot>, Error> {
    let mut devices: Vec<(String, Box<dyn VirtioDevice>, DeviceControls)> = Vec::new();
    for (drive, disk) in config.drives.iter().zip(disks) {
        // Every drive has a limiter, so that PATCH can limit it later.
        let limiter = limiter(format!("drive {}", drive.id), drive.rate_limiter.as_ref())?;
        let block = Block::new(disk, limiter.clone());
        let controls = DeviceControls::Block {
            limiter,
            disk: block.disk(),
        };
        devices.push((drive.id.clone(), Box::new(block), controls));
    }
    let mmds = mmds_store(config);
    for (nic, (tap, mac)) in config.nics.iter().zip(taps) {
        let name = format!("network interface {}", nic.id);
        let limiters = NetLimiters {
            rx: limiter(name.clone(), nic.rx_rate_limiter.as_ref())?,
            tx: limiter(name, nic.tx_rate_limiter.as_ref())?,
        };
        let mut net = Net::new(tap, mac, limiters.clone());
        if let (Some(service), Some(store)) = (&config.mmds, &mmds) {
            if service.serves(&nic.id) {
                let stack = MmdsStack::new(store.clone(), service.address(), random_seed());
                let port = MmdsPort::new(stack).map_err(|source| Error::Mmds {
                    id: nic.id.clone(),
                    source,
                })?;
                net = net.with_mmds(port);
            }
        }
        devices.push((nic.id.clone(), Box::new(net), DeviceControls::Net(limiters)));
    }
    if let Some(vsock) = vsock {
        devices.push(("vsock".into(), Box::new(vsock), DeviceControls::None));
    }
    if config.entropy {
        // Firecracker has no PATCH for the entropy device: a limiter only
        // when one is configured.
        let rng = match config
            .entropy_rate_limiter
            .filter(RateLimiterConfig::is_enabled)
        {
            Some(config) => Rng::with_rate_limiter(limiter("entropy".into(), Some(&config))?),
            None => Rng::new(),
        };
        devices.push(("entropy".into(), Box::new(rng), DeviceControls::None));
    }
    if let Some(balloon) = &config.balloon {
        let shared = SharedBalloon::new(balloon, config.memory_mib).map_err(Error::BalloonTimer)?;
        if config.huge_pages {
            crate::vmm_log!(
                Warning,
                "balloon: guest memory is in 2 MiB hugetlbfs pages; inflated 4 KiB pages \
                 stay backed on the host"
            );
        }
        devices.push((
            BALLOON_ID.into(),
            Box::new(Balloon::new(shared.clone())),
            DeviceControls::Balloon(shared),
        ));
    }
    let count = devices.len();
    devices
        .into_iter()
        .zip(0u32..)
        .map(|((id, device, controls), index)| {
            let irq = VIRTIO_FIRST_IRQ + index;
            if irq > VIRTIO_LAST_IRQ {
                return Err(Error::TooManyDevices(count));
            }
            Ok(VirtioSlot {
                id,
                device,
                controls,
                base: VIRTIO_MMIO_START + u64::from(index) * MMIO_WINDOW_SIZE,
                irq,
            })
        })
        .collect()
}

/// The data store the interfaces serving MMDS share, configured as
/// `config` says: the API's, or a new empty one.
fn mmds_store(config: &VmConfig) -> Option<Mmds> {
    let service = config.mmds.as_ref()?;
    let store = config
        .mmds_store
        .clone()
        .unwrap_or_else(|| Mmds::new(crate::api::http::DEFAULT_MAX_BODY_SIZE));
    store.lock().configure(service.version, service.imds_compat);
    Some(store)
}

/// A seed for a TCP stack's initial sequence numbers: random, or the
/// clock if the kernel's source fails.
fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        // The low 64 bits are plenty for a seed.
        return u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or_default();
    }
    u64::from_le_bytes(bytes)
}

/// Puts each virtio device's transport on the MMIO bus, with its queue
/// notifications as ioeventfds and its interrupt as an irqfd. With
/// `saved` (a restore, its places checked), each transport is set to its
/// saved state, and a device that ran runs again.
fn virtio_bus(
    vm: &vm::Vm,
    mem: &SharedMemory,
    slots: Vec<VirtioSlot>,
    saved: Option<&[VirtioDeviceState]>,
) -> Result<(Bus, Vec<DeviceHandle>), Error> {
    let mut mmio = Bus::new();
    let mut handles = Vec::new();
    for (index, slot) in slots.into_iter().enumerate() {
        let interrupt = Arc::new(Interrupt::new(irq_line(vm, slot.irq)?));
        let kind = device_kind(slot.device.device_type());
        let transport = match saved.and_then(|saved| saved.get(index)) {
            Some(saved) => MmioTransport::restore(
                slot.device,
                mem.clone(),
                interrupt.clone(),
                &saved.transport,
            )
            .map_err(|source| Error::RestoreDevice {
                id: slot.id.clone(),
                source,
            })?,
            None => MmioTransport::new(slot.device, mem.clone(), interrupt.clone())?,
        };
        for (queue, event) in (0u32..).zip(transport.queue_notify_events()) {
            vm.connect_mmio_notify(event, slot.base + QUEUE_NOTIFY_OFFSET, queue)?;
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(transport.clone(), slot.base, MMIO_WINDOW_SIZE)?;
        handles.push(DeviceHandle {
            id: slot.id,
            kind,
            interrupt,
            controls: slot.controls,
            base: slot.base,
            irq: slot.irq,
            transport,
        });
    }
    Ok((mmio, handles))
}

fn device_kind(device_type: u32) -> &'static str {
    match device_type {
        TYPE_BLOCK => "block",
        TYPE_NET => "net",
        TYPE_RNG => "rng",
        TYPE_VSOCK => "vsock",
        TYPE_BALLOON => "balloon",
        _ => "other",
    }
}

/// What the controller keeps of a device: its name, its interrupt
/// counter and what it may change while the VM runs.
struct DeviceHandle {
    id: String,
    kind: &'static str,
    interrupt: Arc<Interrupt>,
    controls: DeviceControls,
    base: u64,
    irq: u32,
    transport: Arc<Mutex<MmioTransport>>,
}

impl DeviceHandle {
    fn transport(&self) -> std::sync::MutexGuard<'_, MmioTransport> {
        self.transport.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Feeds the VMM's stdin to the guest console until stdin closes.
fn forward_stdin(serial: Arc<Mutex<SerialConsole>>) {
    let spawned = std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::ConsoleIn);
            serial::forward_input(std::io::stdin().lock(), &serial);
        });
    // Without console input the VM still runs; nothing to undo.
    drop(spawned);
}
