//! The VMM side of the control API: typed actions in, typed data or a typed
//! error out. Nothing here knows about HTTP, so the config file drives the
//! same code path as the socket.

use std::sync::mpsc::Sender;

use serde::Serialize;
use serde_json::Value;

use crate::builder::UpdateError;
use crate::config::VmConfig;
use crate::devices::virtio::balloon::BalloonStats;
use crate::mmds::{data_store, Mmds};
use crate::rate_limiter::RateLimiterUpdate;
use crate::vmm_config::balloon::{self, BalloonBody, BalloonStatsUpdateBody, BalloonUpdateBody};
use crate::vmm_config::boot_source::{self, BootSourceConfig};
use crate::vmm_config::config_file::ConfigFile;
use crate::vmm_config::cpu_config::CpuTemplate;
use crate::vmm_config::devices::{
    self, DriveBody, DriveUpdateBody, EntropyBody, NetworkInterfaceBody,
    NetworkInterfaceUpdateBody, VsockBody,
};
use crate::vmm_config::logger::{self, LoggerConfig};
use crate::vmm_config::machine_config::{self, MachineConfig, MachineConfigUpdate};
use crate::vmm_config::metrics::{self, Metrics, MetricsConfig};
use crate::vmm_config::mmds::{self as mmds_config, MmdsConfig};
use crate::vmm_config::rate_limiter::RateLimiterConfig;
use crate::vmm_config::resources::{self, FullVmConfig, VmResources};
use crate::vmm_config::serial::{self, SerialBody};
use crate::vmm_config::snapshot::{CreateSnapshotBody, LoadSnapshotBody};
use crate::{vmm_log, RunningVm, VmController};

/// Reported as `app_name` in the instance information.
pub const APP_NAME: &str = "stratum-vmm";
/// The Firecracker release whose API this one follows: `GET /version`
/// reports it and `vmm --version` prints it as Firecracker does, so that
/// launchers that check Firecracker's version accept us. What differs is
/// listed in the README's compatibility table.
pub const FIRECRACKER_API_VERSION: &str = "1.16.1";
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
    /// `PATCH /drives/{id}`: a running drive's image and rate limiter.
    PatchDrive(String, DriveUpdateBody),
    /// `PATCH /network-interfaces/{id}`: a running interface's limiters.
    PatchNetworkInterface(String, NetworkInterfaceUpdateBody),
    PutEntropy(EntropyBody),
    PutVsock(VsockBody),
    /// `GET /balloon`: the balloon's configuration (its current target
    /// after boot).
    GetBalloon,
    PutBalloon(BalloonBody),
    /// `PATCH /balloon`: a running balloon's new target.
    PatchBalloon(BalloonUpdateBody),
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`: a running balloon's new interval.
    PatchBalloonStats(BalloonStatsUpdateBody),
    /// `PATCH /vm`: true pauses, false resumes.
    PatchVmPaused(bool),
    SendCtrlAltDel,
    /// Our addition (`PUT /stratum/actions`): end the VM at once.
    HardStop,
    /// Our addition (`GET /stratum/stats`): the running VM's counters.
    GetStats,
    /// `PUT /snapshot/create`: the paused VM's state and memory to files.
    CreateSnapshot(CreateSnapshotBody),
    /// `PUT /snapshot/load`: a VM from a snapshot, in a VMM not configured.
    LoadSnapshot(LoadSnapshotBody),
    /// `GET /mmds`: the metadata document.
    GetMmds,
    /// `PUT /mmds`: a new metadata document.
    PutMmds(Value),
    /// `PATCH /mmds`: a JSON merge patch of the document.
    PatchMmds(Value),
    /// `PUT /mmds/config`: the interfaces, address and version of the
    /// metadata service.
    PutMmdsConfig(MmdsConfig),
    /// `PUT /serial`: where the console goes, and its rate limiter.
    PutSerial(SerialBody),
    /// `PUT /cpu-config`: a custom CPU template.
    PutCpuConfig(CpuTemplate),
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
    Balloon(BalloonBody),
    BalloonStats(BalloonStats),
    /// The metadata document (`{}` before any PUT, as Firecracker).
    Mmds(Value),
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
    #[error("{0}")]
    SnapshotBody(#[from] crate::vmm_config::snapshot::Error),
    #[error("Cannot create the snapshot: {0}")]
    CreateSnapshot(String),
    #[error("Loading a microVM snapshot not allowed after configuring boot-specific resources.")]
    LoadSnapshotNotAllowed,
    #[error("Cannot load the snapshot: {0}")]
    LoadSnapshot(String),
    #[error("cannot pause the microVM: {0}")]
    Pause(String),
    #[error("{0}")]
    Update(#[from] UpdateError),
    #[error("Balloon config error: {0}")]
    BalloonConfig(#[from] balloon::ConfigError),
    #[error("Balloon update error: {0}")]
    BalloonUpdate(#[source] UpdateError),
    /// Firecracker's wording for what its VMM object refuses (the
    /// balloon's statistics, a device the VM does not have).
    #[error("Internal VMM error: {0}")]
    Internal(#[source] UpdateError),
    #[error("MMDS error: {0}")]
    Mmds(#[source] data_store::Error),
    /// Answered 413, as Firecracker does.
    #[error("MMDS limit exceeded error: {0}")]
    MmdsLimitExceeded(#[source] data_store::Error),
    #[error("{0}")]
    MmdsConfig(#[from] mmds_config::Error),
    #[error("{0}")]
    Serial(#[from] serial::Error),
}

impl ActionError {
    /// Whether the error is answered 413 (Payload Too Large) rather than
    /// 400: a metadata document over its limit.
    pub fn is_payload_too_large(&self) -> bool {
        matches!(self, ActionError::MmdsLimitExceeded(_))
    }
}

impl From<data_store::Error> for ActionError {
    fn from(error: data_store::Error) -> Self {
        match error {
            data_store::Error::LimitExceeded => ActionError::MmdsLimitExceeded(error),
            other => ActionError::Mmds(other),
        }
    }
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
    /// The metadata data store, made at its first use (as Firecracker's).
    mmds: Option<Mmds>,
    /// Its size limit (`--mmds-size-limit`).
    mmds_size_limit: usize,
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
            mmds: None,
            mmds_size_limit: crate::api::http::DEFAULT_MAX_BODY_SIZE,
        }
    }

    /// Firecracker's `--mmds-size-limit`: the largest metadata document,
    /// serialised, in bytes. Set before the store is first used.
    pub fn set_mmds_size_limit(&mut self, limit: usize) {
        self.mmds_size_limit = limit;
    }

    pub fn state(&self) -> InstanceState {
        self.state
    }

    /// Records how long the process took to serve its API (the
    /// `api_server` metrics).
    pub fn set_startup_times(&mut self, times: crate::vmm_config::metrics::StartupTimes) {
        self.metrics.set_startup_times(times);
    }

    /// Runs `action`. On error nothing changed.
    pub fn handle(&mut self, action: VmmAction) -> Result<VmmData, ActionError> {
        let counted = counted(&action);
        let result = self.dispatch(action);
        if let Some(counted) = counted {
            self.metrics.record(counted, result.is_ok());
        }
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
        if let Some(template) = file.cpu_config {
            self.handle(VmmAction::PutCpuConfig(template))?;
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
        if let Some(balloon) = file.balloon {
            self.handle(VmmAction::PutBalloon(balloon))?;
        }
        if let Some(mmds) = file.mmds_config {
            self.handle(VmmAction::PutMmdsConfig(mmds))?;
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
                firecracker_version: FIRECRACKER_API_VERSION.to_string(),
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
                // Before boot Firecracker refuses every flush; we flush
                // configured metrics then too (a launcher may read its
                // startup times before it boots), and refuse only when
                // there is nowhere to write. After boot, with nowhere to
                // write, a flush does nothing, as in Firecracker.
                match self.metrics.flush() {
                    Err(metrics::Error::NotConfigured) if self.vm.is_some() => Ok(VmmData::Empty),
                    Err(error) => Err(error.into()),
                    Ok(()) => Ok(VmmData::Empty),
                }
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
            VmmAction::PutCpuConfig(template) => {
                self.before_boot("PUT /cpu-config")?;
                self.resources.cpu_config = Some(template);
                Ok(VmmData::Empty)
            }
            VmmAction::PutSerial(serial) => {
                self.before_boot("PUT /serial")?;
                serial.validate()?;
                self.resources.serial = Some(serial);
                Ok(VmmData::Empty)
            }
            VmmAction::PutVsock(vsock) => {
                self.before_boot("PUT /vsock")?;
                vsock.to_config()?;
                self.resources.vsock = Some(vsock);
                Ok(VmmData::Empty)
            }
            VmmAction::GetBalloon => self.get_balloon(),
            VmmAction::PutBalloon(body) => {
                self.before_boot("PUT /balloon")?;
                body.validate(self.resources.machine_config.mem_size_mib)?;
                self.resources.balloon = Some(body);
                Ok(VmmData::Empty)
            }
            VmmAction::PatchBalloon(update) => self.patch_balloon(&update),
            VmmAction::GetBalloonStats => self
                .running_vm("GET /balloon/statistics")?
                .balloon_stats()
                .map(VmmData::BalloonStats)
                .map_err(ActionError::Internal),
            VmmAction::PatchBalloonStats(update) => self.patch_balloon_stats(&update),
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
            VmmAction::CreateSnapshot(body) => self.create_snapshot(&body),
            VmmAction::LoadSnapshot(body) => self.load_snapshot(&body),
            VmmAction::GetMmds => {
                let data = self.mmds_store()?.lock().data().clone();
                Ok(VmmData::Mmds(match data {
                    Value::Null => Value::Object(serde_json::Map::new()),
                    data => data,
                }))
            }
            VmmAction::PutMmds(data) => {
                self.mmds_store()?.lock().put(data)?;
                Ok(VmmData::Empty)
            }
            VmmAction::PatchMmds(patch) => {
                self.mmds_store()?.lock().patch(&patch)?;
                Ok(VmmData::Empty)
            }
            VmmAction::PutMmdsConfig(config) => self.put_mmds_config(config),
        }
    }

    /// The metadata data store, made now if need be. After boot only a VM
    /// that serves MMDS has one, as in Firecracker: data PUT before boot
    /// without `PUT /mmds/config` is not served, and gone.
    fn mmds_store(&mut self) -> Result<Mmds, ActionError> {
        if self.vm.is_some() && self.resources.mmds_config.is_none() {
            return Err(data_store::Error::NotInitialized.into());
        }
        let limit = self.mmds_size_limit;
        Ok(self.mmds.get_or_insert_with(|| Mmds::new(limit)).clone())
    }

    /// `PUT /mmds/config`: before boot, naming configured interfaces.
    fn put_mmds_config(&mut self, config: MmdsConfig) -> Result<VmmData, ActionError> {
        self.before_boot("PUT /mmds/config")?;
        let nics = self.resources.network_interfaces.iter();
        let config = config.validated(nics.map(|n| n.iface_id.as_str()))?;
        self.mmds_store()?
            .lock()
            .configure(config.version, config.imds_compat);
        self.resources.mmds_config = Some(config);
        Ok(VmmData::Empty)
    }

    /// `PATCH /drives/{id}`: as in Firecracker, only on a running VM (a
    /// drive not yet booted is changed with PUT). A `path_on_host` becomes
    /// the drive's image (see [`VmController::update_drive_image`]); the
    /// limiter's buckets the body names are replaced by full ones; `GET
    /// /vm/config` shows the result.
    ///
    /// The new image is opened before anything changes, and nothing after
    /// it can fail: a path that does not open leaves the drive, its
    /// limiter and the configuration as they were.
    fn patch_drive(&mut self, id: &str, update: &DriveUpdateBody) -> Result<VmmData, ActionError> {
        let vm = self.running_vm("PATCH /drives")?;
        update.validate(id)?;
        let index = self
            .resources
            .drives
            .iter()
            .position(|d| d.drive_id == id)
            .ok_or_else(|| devices::Error::NoSuchDrive(id.to_string()))?;
        let limiter = match &update.rate_limiter {
            Some(limiter) => Some((
                limiter,
                live_update(&format!("drive {id}"), "rate_limiter", limiter)?,
            )),
            None => None,
        };
        if let Some(path) = &update.path_on_host {
            let sectors = vm.update_drive_image(id, path)?;
            vmm_log!(
                Info,
                "drive {id}: the image is now {} ({sectors} sectors)",
                path.display()
            );
            self.resources.drives[index].path_on_host = path.clone();
        }
        if let Some((limiter, live)) = limiter {
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

    /// `GET /balloon`: as configured before boot, with the current target
    /// and interval after. Without a balloon, Firecracker's errors: its
    /// configuration's before boot, its VMM's after.
    fn get_balloon(&self) -> Result<VmmData, ActionError> {
        match (&self.resources.balloon, &self.vm) {
            (Some(balloon), _) => Ok(VmmData::Balloon(balloon.clone())),
            (None, None) => Err(balloon::ConfigError::DeviceNotFound.into()),
            (None, Some(_)) => Err(ActionError::Internal(UpdateError::NoBalloon)),
        }
    }

    /// `PATCH /balloon`: as in Firecracker, only on a running VM whose
    /// driver runs the balloon, and within the guest's memory; the guest
    /// is told with a configuration-change interrupt.
    fn patch_balloon(&mut self, update: &BalloonUpdateBody) -> Result<VmmData, ActionError> {
        let vm = self.running_vm("PATCH /balloon")?;
        vm.update_balloon(update.amount_mib)
            .map_err(ActionError::BalloonUpdate)?;
        vmm_log!(Info, "balloon: the target is now {} MiB", update.amount_mib);
        if let Some(balloon) = &mut self.resources.balloon {
            balloon.amount_mib = update.amount_mib;
        }
        Ok(VmmData::Empty)
    }

    /// `PATCH /balloon/statistics`: a new interval on a running VM, the
    /// first request at once; statistics cannot be turned on or off.
    fn patch_balloon_stats(
        &mut self,
        update: &BalloonStatsUpdateBody,
    ) -> Result<VmmData, ActionError> {
        let vm = self.running_vm("PATCH /balloon/statistics")?;
        vm.update_balloon_stats_interval(update.stats_polling_interval_s)
            .map_err(ActionError::BalloonUpdate)?;
        if let Some(balloon) = &mut self.resources.balloon {
            balloon.stats_polling_interval_s = update.stats_polling_interval_s;
        }
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
        // Firecracker's rule: the memory holds the balloon's target.
        if let Some(balloon) = &self.resources.balloon {
            if config.mem_size_mib < u64::from(balloon.amount_mib) {
                return Err(machine_config::Error::IncompatibleBalloonSize.into());
            }
        }
        VmResources::check_machine(&config, &self.base)?;
        self.resources.machine_config = config;
        Ok(VmmData::Empty)
    }

    /// `PUT /snapshot/create`: a Full or Diff snapshot of the paused VM
    /// (see `snapshot::files`), with its configuration as PATCHes left it.
    /// A Diff needs dirty-page tracking.
    fn create_snapshot(&mut self, body: &CreateSnapshotBody) -> Result<VmmData, ActionError> {
        let vm = self.running_vm("PUT /snapshot/create")?;
        body.validate()?;
        let config = self.resources.running_config(&self.base)?;
        let written = crate::snapshot::files::create(
            &vm,
            config,
            &body.snapshot_path,
            &body.mem_file_path,
            body.snapshot_type,
        )
        .map_err(|error| ActionError::CreateSnapshot(error_chain(&error)))?;
        vmm_log!(
            Info,
            "snapshot created ({:?}, {} KiB of memory written): state {}, memory {}",
            body.snapshot_type,
            written >> 10,
            body.snapshot_path.display(),
            body.mem_file_path.display()
        );
        Ok(VmmData::Empty)
    }

    /// `PUT /snapshot/load`: only in a VMM nothing was configured in (the
    /// logger and metrics aside), as in Firecracker. The state file is
    /// read and checked, the overrides applied, the memory file mapped and
    /// the VM built before anything here changes; a failure leaves the
    /// VMM as it was, ready for another load or a boot.
    fn load_snapshot(&mut self, body: &LoadSnapshotBody) -> Result<VmmData, ActionError> {
        if self.state != InstanceState::NotStarted || self.resources.has_vm_resources() {
            return Err(ActionError::LoadSnapshotNotAllowed);
        }
        let mem_path = body.validate()?;
        let load_error =
            |error: &dyn std::error::Error| ActionError::LoadSnapshot(error_chain(error));
        let mut state =
            crate::snapshot::files::read_state(&body.snapshot_path).map_err(|e| load_error(&e))?;
        apply_overrides(&mut state.config, body)?;
        // The snapshot has the service's configuration, not its data: the
        // store is this VMM's (data PUT before the load is served).
        if state.config.mmds.is_some() {
            let limit = self.mmds_size_limit;
            state.config.mmds_store =
                Some(self.mmds.get_or_insert_with(|| Mmds::new(limit)).clone());
        }
        // As in Firecracker, the load decides, not the snapshot.
        state.config.track_dirty_pages = body.tracks_dirty_pages();
        let mem =
            crate::snapshot::files::map_memory(&state, &mem_path, state.config.track_dirty_pages)
                .map_err(|e| load_error(&e))?;
        let base = self.resources.console_base(&self.base);
        let vm = crate::builder::restore_and_start(&base, &state, mem, body.resume_vm)
            .map_err(|e| load_error(&e))?;
        let logger = self.resources.logger.take();
        let serial = self.resources.serial.take();
        self.resources = VmResources::from_restored(&state.config);
        self.resources.logger = logger;
        self.resources.serial = serial;
        self.state = if body.resume_vm {
            InstanceState::Running
        } else {
            InstanceState::Paused
        };
        self.vm = Some(vm.controller());
        vmm_log!(
            Info,
            "the microVM was restored from {} ({})",
            body.snapshot_path.display(),
            if body.resume_vm { "running" } else { "paused" }
        );
        let _ = self.started.send(vm);
        Ok(VmmData::Empty)
    }

    fn start(&mut self) -> Result<VmmData, ActionError> {
        self.before_boot("InstanceStart")?;
        let mut config = self.resources.vm_config(&self.base)?;
        config.mmds_store = self.mmds.clone();
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

/// `network_overrides` and `vsock_override` on the snapshot's configuration:
/// each names what the snapshot has, or the load is refused.
fn apply_overrides(config: &mut VmConfig, body: &LoadSnapshotBody) -> Result<(), ActionError> {
    for o in &body.network_overrides {
        let nic = config
            .nics
            .iter_mut()
            .find(|n| n.id == o.iface_id)
            .ok_or_else(|| {
                ActionError::LoadSnapshot(format!(
                    "network_overrides names {}, which the snapshot has no interface of",
                    o.iface_id
                ))
            })?;
        nic.tap = o.host_dev_name.clone();
    }
    if let Some(o) = &body.vsock_override {
        let vsock = config.vsock.as_mut().ok_or_else(|| {
            ActionError::LoadSnapshot(
                "vsock_override given, but the snapshot has no vsock device".into(),
            )
        })?;
        vsock.uds_path = o.uds_path.clone();
    }
    Ok(())
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

/// The metrics counter of `action`, if Firecracker has one.
fn counted(action: &VmmAction) -> Option<metrics::Request> {
    use metrics::Request;
    let request = match action {
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
        VmmAction::CreateSnapshot(_) => Request::PutSnapshotCreate,
        VmmAction::LoadSnapshot(_) => Request::PutSnapshotLoad,
        VmmAction::GetMmds => Request::GetMmds,
        VmmAction::PutMmds(_) | VmmAction::PutMmdsConfig(_) => Request::PutMmds,
        VmmAction::PatchMmds(_) => Request::PatchMmds,
        VmmAction::PutSerial(_) => Request::PutSerial,
        VmmAction::PutCpuConfig(_) => Request::PutCpuConfig,
        // Firecracker counts balloon requests nowhere.
        VmmAction::GetBalloon
        | VmmAction::PutBalloon(_)
        | VmmAction::PatchBalloon(_)
        | VmmAction::GetBalloonStats
        | VmmAction::PatchBalloonStats(_) => return None,
    };
    Some(request)
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
