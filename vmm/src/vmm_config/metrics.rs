//! `metrics`: counters of API requests, flushed as one JSON line on
//! `FlushMetrics`, in Firecracker's group and field names. Like
//! Firecracker's counters, each line holds what happened since the previous
//! flush.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the metrics file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reinitialization of metrics is not allowed: metrics already go to {0}")]
    AlreadyConfigured(PathBuf),
    #[error("metrics are not configured: PUT /metrics first")]
    NotConfigured,
    #[error("cannot write metrics: {0}")]
    Write(#[source] std::io::Error),
}

/// The body of `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: PathBuf,
}

/// The requests we count, one per endpoint and method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    GetInstanceInfo,
    GetVersion,
    GetMachineConfig,
    GetVmConfig,
    PutActions,
    PutBootSource,
    PutLogger,
    PutMachineConfig,
    PutMetrics,
    PatchMachineConfig,
    PutDrive,
    PutNetworkInterface,
    PutEntropy,
    PutVsock,
    PatchVm,
    PatchDrive,
    PatchNetworkInterface,
    PutSnapshotCreate,
    PutSnapshotLoad,
    GetMmds,
    /// `PUT /mmds` and `PUT /mmds/config`, counted together as in
    /// Firecracker.
    PutMmds,
    PatchMmds,
    PutSerial,
    PutCpuConfig,
}

#[derive(Debug, Default, Serialize)]
struct GetRequests {
    instance_info_count: u64,
    vmm_version_count: u64,
    machine_cfg_count: u64,
    vm_config_count: u64,
    mmds_count: u64,
}

#[derive(Debug, Default, Serialize)]
struct PutRequests {
    actions_count: u64,
    actions_fails: u64,
    boot_source_count: u64,
    boot_source_fails: u64,
    logger_count: u64,
    logger_fails: u64,
    machine_cfg_count: u64,
    machine_cfg_fails: u64,
    metrics_count: u64,
    metrics_fails: u64,
    drive_count: u64,
    drive_fails: u64,
    network_count: u64,
    network_fails: u64,
    entropy_count: u64,
    entropy_fails: u64,
    vsock_count: u64,
    vsock_fails: u64,
    /// Ours: Firecracker times snapshots (`latencies_us`) rather than
    /// counting them.
    snapshot_create_count: u64,
    snapshot_create_fails: u64,
    snapshot_load_count: u64,
    snapshot_load_fails: u64,
    mmds_count: u64,
    mmds_fails: u64,
    serial_count: u64,
    serial_fails: u64,
    cpu_cfg_count: u64,
    cpu_cfg_fails: u64,
}

#[derive(Debug, Default, Serialize)]
struct PatchRequests {
    drive_count: u64,
    drive_fails: u64,
    machine_cfg_count: u64,
    machine_cfg_fails: u64,
    network_count: u64,
    network_fails: u64,
    vm_count: u64,
    vm_fails: u64,
    mmds_count: u64,
    mmds_fails: u64,
}

#[derive(Debug, Default, Serialize)]
struct Counters {
    get_api_requests: GetRequests,
    put_api_requests: PutRequests,
    patch_api_requests: PatchRequests,
}

/// Firecracker's `api_server` group: how long the process took to serve
/// its API, from the launcher's `--start-time-us` (monotonic clock) and
/// `--start-time-cpu-us` plus `--parent-cpu-time-us` (CPU time); kept
/// across flushes, as Firecracker's store metrics are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StartupTimes {
    pub process_startup_time_us: u64,
    pub process_startup_time_cpu_us: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    utc_timestamp_ms: u128,
    api_server: StartupTimes,
    #[serde(flatten)]
    counters: &'a Counters,
    /// The guest side of MMDS (taken at each flush).
    mmds: crate::mmds::metrics::Flushed,
}

#[derive(Debug, Default)]
pub struct Metrics {
    sink: Option<(PathBuf, File)>,
    counters: Counters,
    startup: StartupTimes,
}

impl Metrics {
    pub fn configure(&mut self, config: &MetricsConfig) -> Result<(), Error> {
        if let Some((path, _)) = &self.sink {
            return Err(Error::AlreadyConfigured(path.clone()));
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            // Same reasons as the logger: a named pipe without a reader
            // yet opens, and neither it nor a full one hangs the API.
            .custom_flags(libc::O_NONBLOCK)
            .open(&config.metrics_path)
            .map_err(|source| Error::Open {
                path: config.metrics_path.clone(),
                source,
            })?;
        self.sink = Some((config.metrics_path.clone(), file));
        Ok(())
    }

    /// Records how long the process took to serve its API.
    pub fn set_startup_times(&mut self, times: StartupTimes) {
        self.startup = times;
    }

    pub fn config(&self) -> Option<MetricsConfig> {
        self.sink.as_ref().map(|(path, _)| MetricsConfig {
            metrics_path: path.clone(),
        })
    }

    pub fn record(&mut self, request: Request, ok: bool) {
        let fail = u64::from(!ok);
        let (get, put, patch) = (
            &mut self.counters.get_api_requests,
            &mut self.counters.put_api_requests,
            &mut self.counters.patch_api_requests,
        );
        let (count, fails) = match request {
            Request::GetInstanceInfo => (&mut get.instance_info_count, None),
            Request::GetVersion => (&mut get.vmm_version_count, None),
            Request::GetMachineConfig => (&mut get.machine_cfg_count, None),
            Request::GetVmConfig => (&mut get.vm_config_count, None),
            Request::PutActions => (&mut put.actions_count, Some(&mut put.actions_fails)),
            Request::PutBootSource => {
                (&mut put.boot_source_count, Some(&mut put.boot_source_fails))
            }
            Request::PutLogger => (&mut put.logger_count, Some(&mut put.logger_fails)),
            Request::PutMachineConfig => {
                (&mut put.machine_cfg_count, Some(&mut put.machine_cfg_fails))
            }
            Request::PutMetrics => (&mut put.metrics_count, Some(&mut put.metrics_fails)),
            Request::PatchMachineConfig => (
                &mut patch.machine_cfg_count,
                Some(&mut patch.machine_cfg_fails),
            ),
            Request::PutDrive => (&mut put.drive_count, Some(&mut put.drive_fails)),
            Request::PutNetworkInterface => (&mut put.network_count, Some(&mut put.network_fails)),
            Request::PutEntropy => (&mut put.entropy_count, Some(&mut put.entropy_fails)),
            Request::PutVsock => (&mut put.vsock_count, Some(&mut put.vsock_fails)),
            Request::PutSnapshotCreate => (
                &mut put.snapshot_create_count,
                Some(&mut put.snapshot_create_fails),
            ),
            Request::PutSnapshotLoad => (
                &mut put.snapshot_load_count,
                Some(&mut put.snapshot_load_fails),
            ),
            Request::PatchVm => (&mut patch.vm_count, Some(&mut patch.vm_fails)),
            Request::PatchDrive => (&mut patch.drive_count, Some(&mut patch.drive_fails)),
            Request::PatchNetworkInterface => {
                (&mut patch.network_count, Some(&mut patch.network_fails))
            }
            Request::GetMmds => (&mut get.mmds_count, None),
            Request::PutMmds => (&mut put.mmds_count, Some(&mut put.mmds_fails)),
            Request::PutSerial => (&mut put.serial_count, Some(&mut put.serial_fails)),
            Request::PutCpuConfig => (&mut put.cpu_cfg_count, Some(&mut put.cpu_cfg_fails)),
            Request::PatchMmds => (&mut patch.mmds_count, Some(&mut patch.mmds_fails)),
        };
        *count += 1;
        if let Some(fails) = fails {
            *fails += fail;
        }
    }

    /// Writes one JSON line and starts counting afresh.
    pub fn flush(&mut self) -> Result<(), Error> {
        let Some((_, file)) = &mut self.sink else {
            return Err(Error::NotConfigured);
        };
        let line = Line {
            utc_timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
            api_server: self.startup,
            counters: &self.counters,
            mmds: crate::mmds::metrics::Flushed,
        };
        // Serialising plain integers cannot fail.
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(Error::Write)?;
        self.counters = Counters::default();
        Ok(())
    }
}
