//! The VMM side of the control API: typed actions in, typed data or a typed
//! error out. Nothing here knows about HTTP, so the config file drives the
//! same code path as the socket.

use std::sync::mpsc::Sender;

use serde::Serialize;

use crate::config::VmConfig;
use crate::rate_limiter::RateLimiterUpdate;
use crate::vmm_config::boot_source::{self, BootSourceConfig};
use crate::vmm_config::config_file::ConfigFile;
use crate::vmm_config::devices::{
    self, DriveBody, DriveUpdateBody, EntropyBody, NetworkInterfaceBody,
    NetworkInterfaceUpdateBody, VsockBody,
};
use crate::vmm_config::logger::{self, LoggerConfig};
use crate::vmm_config::machine_config::{self, MachineConfig, MachineConfigUpdate};
use crate::vmm_config::metrics::{self, Metrics, MetricsConfig};
use crate::vmm_config::rate_limiter::RateLimiterConfig;
use crate::vmm_config::resources::{self, FullVmConfig, VmResources};
use crate::{vmm_log, RunningVm, VmController};

/// Reported as `app_name` in the instance information.
pub const APP_NAME: &str = "stratum-vmm";
/// Firecracker's instance id when none is given.
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// One request to the VMM, whatever its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmAction {
    GetInstanceInfo,
    GetVersion,
    GetMachineConfig,
    GetVmConfig,
    PutBootSource(BootSourceConfig),
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutLogger(LoggerConfig),
    PutMetrics(MetricsConfig),
    InstanceStart,
    FlushMetrics,
    PutDrive(String, DriveBody),
    PutNetworkInterface(String, NetworkInterfaceBody),
    /// `PATCH /drives/{id}`: a running drive's rate limiter.
    PatchDrive(String, DriveUpdateBody),
    /// `PATCH /network-interfaces/{id}`: a running interface's limiters.
    PatchNetworkInterface(String, NetworkInterfaceUpdateBody),
    PutEntropy(EntropyBody),
    PutVsock(VsockBody),
    /// `PATCH /vm`: true pauses, false resumes.
    PatchVmPaused(bool),
    SendCtrlAltDel,
    /// Our addition (`PUT /stratum/actions`): end the VM at once.
    HardStop,
    /// Our addition (`GET /stratum/stats`): the running VM's counters.
    GetStats,
}

/// What a successful action returns.
#[derive(Debug)]
pub enum VmmData {
    Empty,
    InstanceInfo(InstanceInfo),
    Version(VersionInfo),
    MachineConfig(MachineConfig),
    FullConfig(Box<FullVmConfig>),
    Stats(crate::builder::VmStats),
    /// 204, then the VM is stopped: stopping first would let the process
    /// exit before the client has its answer.
    StopAfterReply(VmController),
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("The requested operation is not supported after starting the microVM: {0}.")]
    NotAllowedAfterBoot(&'static str),
    #[error("invalid machine configuration: {0}")]
    MachineConfig(#[from] machine_config::Error),
    #[error("invalid boot source: {0}")]
    BootSource(#[from] boot_source::Error),
    #[error("{0}")]
    Resources(#[from] resources::Error),
    #[error("cannot start the microVM: {0}")]
    Start(String),
    #[error("{0}")]
    Logger(#[from] logger::Error),
    #[error("{0}")]
    Metrics(#[from] metrics::Error),
    #[error("{0}")]
    Device(#[from] devices::Error),
    #[error("The requested operation is not supported before starting the microVM: {0}.")]
    NotAllowedBeforeBoot(&'static str),
    #[error("cannot pause the microVM: {0}")]
    Pause(String),
    #[error("{0}")]
    Update(#[from] crate::builder::UpdateError),
}

/// Firecracker's `InstanceInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
}

/// Firecracker's `FirecrackerVersion`, the body of `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub firecracker_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// Holds the configuration until boot and the instance state after it.
///
/// A started VM is handed to `started` (the main thread, which waits for it
/// to end and exits the process with its status): the controller never
/// blocks on the guest.
pub struct Controller {
    id: String,
    base: VmConfig,
    resources: VmResources,
    metrics: Metrics,
    state: InstanceState,
    started: Sender<RunningVm>,
    vm: Option<VmController>,
}

impl Controller {
    /// `base` carries what only the command line sets (console, KVM device);
    /// everything else comes from actions.
    pub fn new(id: &str, base: VmConfig, started: Sender<RunningVm>) -> Self {
        logger::set_instance_id(id);
        Self {
            id: id.to_string(),
            base,
            resources: VmResources::default(),
            metrics: Metrics::default(),
            state: InstanceState::NotStarted,
            started,
            vm: None,
        }
    }

    pub fn state(&self) -> InstanceState {
        self.state
    }

    /// Runs `action`. On error nothing changed.
    pub fn handle(&mut self, action: VmmAction) -> Result<VmmData, ActionError> {
        let counted = counted(&action);
        let result = self.dispatch(action);
        self.metrics.record(counted, result.is_ok());
        if let Err(error) = &result {
            vmm_log!(Warning, "{error}");
        }
        result
    }

    /// Applies a config file's sections in the order Firecracker does
    /// (logger and metrics first, so the rest is logged), then boots.
    pub fn boot_from_config_file(&mut self, file: ConfigFile) -> Result<(), ActionError> {
        if let Some(logger) = file.logger {
            self.handle(VmmAction::PutLogger(logger))?;
        }
        if let Some(metrics) = file.metrics {
            self.handle(VmmAction::PutMetrics(metrics))?;
        }
        if let Some(machine) = file.machine_config {
            self.handle(VmmAction::PutMachineConfig(machine))?;
        }
        for drive in file.drives {
            self.handle(VmmAction::PutDrive(drive.drive_id.clone(), drive))?;
        }
        for nic in file.network_interfaces {
            self.handle(VmmAction::PutNetworkInterface(nic.iface_id.clone(), nic))?;
        }
        if let Some(vsock) = file.vsock {
            self.handle(VmmAction::PutVsock(vsock))?;
        }
        if let Some(entropy) = file.entropy {
            self.handle(VmmAction::PutEntropy(entropy))?;
        }
        self.handle(VmmAction::PutBootSource(file.boot_source))?;
        self.handle(VmmAction::InstanceStart)?;
        Ok(())
    }

    fn dispatch(&mut self, action: VmmAction) -> Result<VmmData, ActionError> {
        match action {
            VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
                app_name: APP_NAME.to_string(),
                id: self.id.clone(),
                state: self.state,
                vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            })),
            VmmAction::GetVersion => Ok(VmmData::Version(VersionInfo {
                firecracker_version: env!("CARGO_PKG_VERSION").to_string(),
            })),
            VmmAction::GetMachineConfig => Ok(VmmData::MachineConfig(
                self.resources.machine_config.clone(),
            )),
            VmmAction::GetVmConfig => Ok(VmmData::FullConfig(Box::new(
                self.resources.full_config(self.metrics.config()),
            ))),
            VmmAction::PutBootSource(config) => {
                self.before_boot("PUT /boot-source")?;
                config.validate()?;
                self.resources.boot_source = Some(config);
                Ok(VmmData::Empty)
            }
            VmmAction::PutMachineConfig(config) => {
                self.before_boot("PUT /machine-config")?;
                self.set_machine_config(config.validated()?)
            }
            VmmAction::PatchMachineConfig(update) => {
                self.before_boot("PATCH /machine-config")?;
                let next = self.resources.machine_config.updated(&update)?;
                self.set_machine_config(next)
            }
            VmmAction::PutLogger(config) => {
                self.before_boot("PUT /logger")?;
                logger::configure(&config)?;
                vmm_log!(Info, "logger configured");
                self.resources.logger = Some(config);
                Ok(VmmData::Empty)
            }
            VmmAction::PutMetrics(config) => {
                self.before_boot("PUT /metrics")?;
                self.metrics.configure(&config)?;
                Ok(VmmData::Empty)
            }
            VmmAction::FlushMetrics => {
                self.metrics.flush()?;
                Ok(VmmData::Empty)
            }
            VmmAction::InstanceStart => self.start(),
            VmmAction::PutDrive(id, mut drive) => {
                self.before_boot("PUT /drives")?;
                drive.validate(Some(&id))?;
                // Buckets that are off are left out, as GET /vm/config
                // shows a running limiter.
                drive.rate_limiter = drive.rate_limiter.and_then(RateLimiterConfig::into_option);
                let mut drives = self.resources.drives.clone();
                devices::upsert(&mut drives, drive, |d| d.drive_id == id);
                devices::check_drives(&drives)?;
                self.resources.drives = drives;
                Ok(VmmData::Empty)
            }
            VmmAction::PutNetworkInterface(id, mut nic) => {
                self.before_boot("PUT /network-interfaces")?;
                nic.validate(Some(&id))?;
                nic.rx_rate_limiter = nic.rx_rate_limiter.and_then(RateLimiterConfig::into_option);
                nic.tx_rate_limiter = nic.tx_rate_limiter.and_then(RateLimiterConfig::into_option);
                let mut nics = self.resources.network_interfaces.clone();
                devices::upsert(&mut nics, nic, |n| n.iface_id == id);
                devices::check_nics(&nics)?;
                self.resources.network_interfaces = nics;
                Ok(VmmData::Empty)
            }
            VmmAction::PatchDrive(id, update) => self.patch_drive(&id, &update),
            VmmAction::PatchNetworkInterface(id, update) => {
                self.patch_network_interface(&id, &update)
            }
            VmmAction::PutEntropy(mut entropy) => {
                self.before_boot("PUT /entropy")?;
                entropy.validate()?;
                entropy.rate_limiter = entropy
                    .rate_limiter
                    .and_then(RateLimiterConfig::into_option);
                self.resources.entropy = Some(entropy);
                Ok(VmmData::Empty)
            }
            VmmAction::PutVsock(vsock) => {
                self.before_boot("PUT /vsock")?;
                vsock.to_config()?;
                self.resources.vsock = Some(vsock);
                Ok(VmmData::Empty)
            }
            VmmAction::PatchVmPaused(pause) => {
                let vm = self.running_vm("PATCH /vm")?;
                if pause {
                    vm.pause().map_err(|e| ActionError::Pause(e.to_string()))?;
                    self.state = InstanceState::Paused;
                } else {
                    vm.resume();
                    self.state = InstanceState::Running;
                }
                Ok(VmmData::Empty)
            }
            VmmAction::SendCtrlAltDel => {
                self.running_vm("SendCtrlAltDel")?.send_ctrl_alt_del();
                Ok(VmmData::Empty)
            }
            VmmAction::HardStop => Ok(VmmData::StopAfterReply(self.running_vm("Stop")?)),
            VmmAction::GetStats => Ok(VmmData::Stats(
                self.running_vm("GET /stratum/stats")?.stats(),
            )),
        }
    }

    /// `PATCH /drives/{id}`: as in Firecracker, only on a running VM (a
    /// drive not yet booted is changed with PUT). The limiter's buckets the
    /// body names are replaced by full ones; `GET /vm/config` shows the
    /// result.
    fn patch_drive(&mut self, id: &str, update: &DriveUpdateBody) -> Result<VmmData, ActionError> {
        let vm = self.running_vm("PATCH /drives")?;
        update.validate(id)?;
        let index = self
            .resources
            .drives
            .iter()
            .position(|d| d.drive_id == id)
            .ok_or_else(|| devices::Error::NoSuchDrive(id.to_string()))?;
        if let Some(limiter) = &update.rate_limiter {
            let live = live_update(&format!("drive {id}"), "rate_limiter", limiter)?;
            vm.update_drive_rate_limiter(id, live)?;
            let drive = &mut self.resources.drives[index];
            drive.rate_limiter = RateLimiterConfig::patched(drive.rate_limiter, limiter);
        }
        Ok(VmmData::Empty)
    }

    /// `PATCH /network-interfaces/{id}`: as [`Self::patch_drive`], for the
    /// receive and transmit limiters.
    fn patch_network_interface(
        &mut self,
        id: &str,
        update: &NetworkInterfaceUpdateBody,
    ) -> Result<VmmData, ActionError> {
        let vm = self.running_vm("PATCH /network-interfaces")?;
        update.validate(id)?;
        let index = self
            .resources
            .network_interfaces
            .iter()
            .position(|n| n.iface_id == id)
            .ok_or_else(|| devices::Error::NoSuchInterface(id.to_string()))?;
        let unchanged = RateLimiterConfig::default();
        let rx = update.rx_rate_limiter.as_ref().unwrap_or(&unchanged);
        let tx = update.tx_rate_limiter.as_ref().unwrap_or(&unchanged);
        let device = format!("network interface {id}");
        vm.update_net_rate_limiters(
            id,
            live_update(&device, "rx_rate_limiter", rx)?,
            live_update(&device, "tx_rate_limiter", tx)?,
        )?;
        let nic = &mut self.resources.network_interfaces[index];
        nic.rx_rate_limiter = RateLimiterConfig::patched(nic.rx_rate_limiter, rx);
        nic.tx_rate_limiter = RateLimiterConfig::patched(nic.tx_rate_limiter, tx);
        Ok(VmmData::Empty)
    }

    /// The running VM's controller, or the error for `operation` before boot.
    fn running_vm(&self, operation: &'static str) -> Result<VmController, ActionError> {
        self.vm
            .clone()
            .ok_or(ActionError::NotAllowedBeforeBoot(operation))
    }

    fn before_boot(&self, operation: &'static str) -> Result<(), ActionError> {
        match self.state {
            InstanceState::NotStarted => Ok(()),
            InstanceState::Running | InstanceState::Paused => {
                Err(ActionError::NotAllowedAfterBoot(operation))
            }
        }
    }

    fn set_machine_config(&mut self, config: MachineConfig) -> Result<VmmData, ActionError> {
        VmResources::check_machine(&config, &self.base)?;
        self.resources.machine_config = config;
        Ok(VmmData::Empty)
    }

    fn start(&mut self) -> Result<VmmData, ActionError> {
        self.before_boot("InstanceStart")?;
        let config = self.resources.vm_config(&self.base)?;
        vmm_log!(
            Info,
            "starting the microVM: kernel {}, {} vCPUs, {} MiB",
            config.kernel.display(),
            config.vcpus,
            config.memory_mib
        );
        let vm = crate::build_and_start(&config)
            .map_err(|error| ActionError::Start(error_chain(&error)))?;
        self.state = InstanceState::Running;
        self.vm = Some(vm.controller());
        vmm_log!(Info, "the microVM is running");
        // The receiver lives as long as the process's main thread; if it is
        // gone the process is exiting anyway.
        let _ = self.started.send(vm);
        Ok(VmmData::Empty)
    }
}

/// The live update `limiter` (the `field` of `device`'s PATCH body) asks
/// for. The body was validated already: this cannot fail but says why if
/// it does.
fn live_update(
    device: &str,
    field: &'static str,
    limiter: &RateLimiterConfig,
) -> Result<RateLimiterUpdate, ActionError> {
    RateLimiterUpdate::from_config(limiter).map_err(|error| {
        ActionError::Device(devices::Error::RateLimiter {
            device: device.to_string(),
            field,
            error,
        })
    })
}

fn counted(action: &VmmAction) -> metrics::Request {
    use metrics::Request;
    match action {
        VmmAction::GetInstanceInfo => Request::GetInstanceInfo,
        VmmAction::GetVersion => Request::GetVersion,
        VmmAction::GetMachineConfig => Request::GetMachineConfig,
        VmmAction::GetVmConfig | VmmAction::GetStats => Request::GetVmConfig,
        VmmAction::PutBootSource(_) => Request::PutBootSource,
        VmmAction::PutMachineConfig(_) => Request::PutMachineConfig,
        VmmAction::PatchMachineConfig(_) => Request::PatchMachineConfig,
        VmmAction::PutLogger(_) => Request::PutLogger,
        VmmAction::PutMetrics(_) => Request::PutMetrics,
        VmmAction::InstanceStart
        | VmmAction::FlushMetrics
        | VmmAction::SendCtrlAltDel
        | VmmAction::HardStop => Request::PutActions,
        VmmAction::PutDrive(..) => Request::PutDrive,
        VmmAction::PutNetworkInterface(..) => Request::PutNetworkInterface,
        VmmAction::PutEntropy(_) => Request::PutEntropy,
        VmmAction::PutVsock(_) => Request::PutVsock,
        VmmAction::PatchVmPaused(_) => Request::PatchVm,
        VmmAction::PatchDrive(..) => Request::PatchDrive,
        VmmAction::PatchNetworkInterface(..) => Request::PatchNetworkInterface,
    }
}

/// An error and its causes on one line, each cause once (many of our errors
/// already quote their source).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn controller() -> Controller {
        let (sender, _receiver) = channel();
        Controller::new("test", VmConfig::default(), sender)
    }

    #[test]
    fn failed_updates_change_nothing() {
        let mut c = controller();
        let bad = MachineConfig {
            vcpu_count: 0,
            ..Default::default()
        };
        assert!(c.handle(VmmAction::PutMachineConfig(bad)).is_err());
        let huge = MachineConfig {
            mem_size_mib: u64::MAX >> 20,
            ..Default::default()
        };
        assert!(c.handle(VmmAction::PutMachineConfig(huge)).is_err());
        let Ok(VmmData::MachineConfig(now)) = c.handle(VmmAction::GetMachineConfig) else {
            panic!("GET /machine-config failed");
        };
        assert_eq!(now, MachineConfig::default());
    }

    #[test]
    fn start_needs_a_boot_source() {
        let mut c = controller();
        let error = c.handle(VmmAction::InstanceStart).unwrap_err();
        assert!(error.to_string().contains("boot source"), "{error}");
        assert_eq!(c.state(), InstanceState::NotStarted);
    }
}
