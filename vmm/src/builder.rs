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

use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::CMDLINE_MAX_SIZE;
use crate::arch::layout::{VIRTIO_FIRST_IRQ, VIRTIO_LAST_IRQ, VIRTIO_MMIO_START};
use crate::arch::{acpi, boot, mptable};
use crate::config::{self, ConsoleOutput, DriveConfig, NetConfig, VmConfig, VsockConfig};
use crate::devices::legacy::acpi_pm::{ACPI_PM_PORT, ACPI_PM_PORT_LEN};
use crate::devices::legacy::i8042::{I8042_KBD_IRQ, I8042_PORT, I8042_PORT_LEN};
use crate::devices::legacy::serial::{self, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use crate::devices::legacy::{AcpiPm, ConsoleLog, SerialConsole, I8042};
use crate::devices::pseudo::boot_timer::{BootTime, BootTimer, BOOT_TIMER_ADDR, BOOT_TIMER_LEN};
use crate::devices::virtio::block::{Block, Disk, DiskError};
use crate::devices::virtio::mmio::{self, MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::{Net, NetLimiters};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::tap::Tap;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{
    Interrupt, SharedMemory, VirtioDevice, TYPE_BLOCK, TYPE_NET, TYPE_RNG, TYPE_VSOCK,
};
use crate::devices::{bus, Bus, Buses, IrqLine, VmEvent, VmEventSender};
use crate::loader::{self, LoadedInitrd, LoadedKernel};
use crate::rate_limiter::{self, RateLimiterUpdate, SharedRateLimiter};
use crate::vmm_config::rate_limiter::RateLimiterConfig;
use crate::vstate::control::{self, VcpuControl};
use crate::vstate::vcpu::{self, ExitCounts, Vcpu, VcpuStats};
use crate::vstate::{memory, vm};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid VM configuration: {0}")]
    Config(#[from] config::Error),
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
}

/// Why a running device's rate limiter cannot be updated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateError {
    #[error("The drive {0} does not exist.")]
    NoSuchDrive(String),
    #[error("The network interface {0} does not exist.")]
    NoSuchInterface(String),
}

/// A VM whose vCPUs are running.
pub struct RunningVm {
    events: Receiver<VmEvent>,
    controller: VmController,
    // Guest memory and the VM must outlive the vCPU threads; the process
    // exits while they still run, so these are never dropped before.
    _memory: Arc<GuestMemoryMmap>,
    _vm: vm::Vm,
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
        match self.limiters(id, TYPE_BLOCK) {
            Some(DeviceLimiters::Block(limiter)) => {
                limiter.update(update);
                Ok(())
            }
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
        match self.limiters(id, TYPE_NET) {
            Some(DeviceLimiters::Net(limiters)) => {
                limiters.rx.update(rx);
                limiters.tx.update(tx);
                Ok(())
            }
            _ => Err(UpdateError::NoSuchInterface(id.to_string())),
        }
    }

    fn limiters(&self, id: &str, device_type: u32) -> Option<&DeviceLimiters> {
        self.inner
            .devices
            .iter()
            .find(|d| d.id == id && d.kind == device_kind(device_type))
            .map(|d| &d.limiters)
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
    File::open(path).map_err(|source| Error::Open {
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
    let console = open_console(&config.console, config.console_max_bytes)?;
    let disks = open_drives(&config.drives)?;
    let taps = open_taps(&config.nics)?;
    let (vsock, socket_files) = open_vsock(config.vsock.as_ref())?;

    let mem_size = config.memory_bytes();
    let mem = Arc::new(memory::create_guest_memory(mem_size, config.huge_pages)?);
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

    let hypervisor = vm::Hypervisor::open(&config.kvm_device)?;
    let vm = hypervisor.create_vm(vcpu_count)?;
    vm.register_memory(&mem)?;
    vm.setup_irqchip()?;

    let (sender, events) = channel();
    let stop = VmEventSender(sender);
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        irq_line(&vm, COM1_IRQ)?,
        console,
    )));
    let i8042 = Arc::new(Mutex::new(I8042::new(
        stop.clone(),
        irq_line(&vm, I8042_KBD_IRQ)?,
    )));
    let pio = legacy_bus(serial.clone(), i8042.clone(), AcpiPm::new(stop.clone()))?;
    let (mut mmio, devices) = virtio_bus(&vm, &mem, virtio)?;
    let boot_time = BootTime::default();
    mmio.insert(
        Arc::new(Mutex::new(BootTimer::new(build_start, boot_time.clone()))),
        BOOT_TIMER_ADDR,
        BOOT_TIMER_LEN,
    )?;
    let buses = Arc::new(Buses { pio, mmio });

    let supported_cpuid = hypervisor.supported_cpuid()?;
    let mut vcpus = Vec::with_capacity(usize::from(vcpu_count));
    let mut vcpu_stats = Vec::with_capacity(usize::from(vcpu_count));
    for index in 0..vcpu_count {
        let vcpu = Vcpu::new(&vm, index)?;
        vcpu.configure(&supported_cpuid, vcpu_count)?;
        if index == 0 {
            vcpu.set_boot_state(&mem, &kernel)?;
        }
        vcpu_stats.push(vcpu.stats());
        vcpus.push(vcpu);
    }
    control::install_kick_handler()?;
    // Device workers start when a vCPU activates a device: through this
    // thread, so they do not inherit the vCPU's filter (see seccomp.rs).
    crate::seccomp::start_spawner()?;
    let run = Arc::new(VcpuControl::default());
    let handles = vcpus
        .into_iter()
        .map(|vcpu| vcpu.start(buses.clone(), run.clone(), stop.clone()))
        .collect::<Result<Vec<_>, _>>()?;
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

fn open_console(
    console: &ConsoleOutput,
    max_bytes: u64,
) -> Result<Box<dyn std::io::Write + Send>, Error> {
    match console {
        ConsoleOutput::Stdout => {
            // A raw duplicate of fd 1, not `Stdout`: that one buffers lines,
            // and a guest's prompt has no newline.
            let fd = std::os::fd::AsFd::as_fd(&std::io::stdout())
                .try_clone_to_owned()
                .map_err(|source| Error::Open {
                    what: "console",
                    path: "stdout".into(),
                    source,
                })?;
            Ok(Box::new(File::from(fd)))
        }
        ConsoleOutput::File(path) => ConsoleLog::create(path, max_bytes)
            .map(|f| Box::new(f) as Box<dyn std::io::Write + Send>)
            .map_err(|source| Error::Open {
                what: "console file",
                path: path.clone(),
                source,
            }),
    }
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

/// A virtio device and the MMIO window and IRQ it gets.
struct VirtioSlot {
    /// The drive or interface id, or "entropy".
    id: String,
    device: Box<dyn VirtioDevice>,
    limiters: DeviceLimiters,
    base: u64,
    irq: u32,
}

/// The rate limiters of a device, which the controller updates.
enum DeviceLimiters {
    None,
    Block(SharedRateLimiter),
    Net(NetLimiters),
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
/// then vsock and the entropy device. Done before
/// the command line is written, since the guest learns of them there.
fn place_virtio_devices(
    config: &VmConfig,
    disks: Vec<Disk>,
    taps: Vec<(Tap, [u8; 6])>,
    vsock: Option<Vsock>,
) -> Result<Vec<VirtioSlot>, Error> {
    let mut devices: Vec<(String, Box<dyn VirtioDevice>, DeviceLimiters)> = Vec::new();
    for (drive, disk) in config.drives.iter().zip(disks) {
        // Every drive has a limiter, so that PATCH can limit it later.
        let limiter = limiter(format!("drive {}", drive.id), drive.rate_limiter.as_ref())?;
        devices.push((
            drive.id.clone(),
            Box::new(Block::new(disk, limiter.clone())),
            DeviceLimiters::Block(limiter),
        ));
    }
    for (nic, (tap, mac)) in config.nics.iter().zip(taps) {
        let name = format!("network interface {}", nic.id);
        let limiters = NetLimiters {
            rx: limiter(name.clone(), nic.rx_rate_limiter.as_ref())?,
            tx: limiter(name, nic.tx_rate_limiter.as_ref())?,
        };
        devices.push((
            nic.id.clone(),
            Box::new(Net::new(tap, mac, limiters.clone())),
            DeviceLimiters::Net(limiters),
        ));
    }
    if let Some(vsock) = vsock {
        devices.push(("vsock".into(), Box::new(vsock), DeviceLimiters::None));
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
        devices.push(("entropy".into(), Box::new(rng), DeviceLimiters::None));
    }
    let count = devices.len();
    devices
        .into_iter()
        .zip(0u32..)
        .map(|((id, device, limiters), index)| {
            let irq = VIRTIO_FIRST_IRQ + index;
            if irq > VIRTIO_LAST_IRQ {
                return Err(Error::TooManyDevices(count));
            }
            Ok(VirtioSlot {
                id,
                device,
                limiters,
                base: VIRTIO_MMIO_START + u64::from(index) * MMIO_WINDOW_SIZE,
                irq,
            })
        })
        .collect()
}

/// Puts each virtio device's transport on the MMIO bus, with its queue
/// notifications as ioeventfds and its interrupt as an irqfd.
fn virtio_bus(
    vm: &vm::Vm,
    mem: &SharedMemory,
    slots: Vec<VirtioSlot>,
) -> Result<(Bus, Vec<DeviceHandle>), Error> {
    let mut mmio = Bus::new();
    let mut handles = Vec::new();
    for slot in slots {
        let interrupt = Arc::new(Interrupt::new(irq_line(vm, slot.irq)?));
        handles.push(DeviceHandle {
            id: slot.id,
            kind: device_kind(slot.device.device_type()),
            interrupt: interrupt.clone(),
            limiters: slot.limiters,
        });
        let transport = MmioTransport::new(slot.device, mem.clone(), interrupt)?;
        for (queue, event) in (0u32..).zip(transport.queue_notify_events()) {
            vm.connect_mmio_notify(event, slot.base + QUEUE_NOTIFY_OFFSET, queue)?;
        }
        mmio.insert(Arc::new(Mutex::new(transport)), slot.base, MMIO_WINDOW_SIZE)?;
    }
    Ok((mmio, handles))
}

fn device_kind(device_type: u32) -> &'static str {
    match device_type {
        TYPE_BLOCK => "block",
        TYPE_NET => "net",
        TYPE_RNG => "rng",
        TYPE_VSOCK => "vsock",
        _ => "other",
    }
}

/// What the controller keeps of a device: its name, its interrupt
/// counter and its rate limiters.
struct DeviceHandle {
    id: String,
    kind: &'static str,
    interrupt: Arc<Interrupt>,
    limiters: DeviceLimiters,
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
