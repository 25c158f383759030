//! Everything configured before boot, and the one conversion into the
//! builder's [`VmConfig`].

use serde::Serialize;

use super::boot_source::BootSourceConfig;
use super::devices::{self, DriveBody, EntropyBody, NetworkInterfaceBody, VsockBody};
use super::logger::LoggerConfig;
use super::machine_config::{HugePages, MachineConfig};
use super::metrics::MetricsConfig;
use crate::config::{self, VmConfig, DEFAULT_CMDLINE};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no boot source: PUT /boot-source with a kernel_image_path before InstanceStart")]
    NoBootSource,
    #[error("{0}")]
    Config(#[from] config::Error),
    #[error("{0}")]
    Device(#[from] devices::Error),
}

/// The VM as configured through the API or a config file, before it boots.
#[derive(Debug, Clone, Default)]
pub struct VmResources {
    pub boot_source: Option<BootSourceConfig>,
    pub machine_config: MachineConfig,
    pub logger: Option<LoggerConfig>,
    pub drives: Vec<DriveBody>,
    pub network_interfaces: Vec<NetworkInterfaceBody>,
    pub vsock: Option<VsockBody>,
    pub entropy: Option<EntropyBody>,
}

impl VmResources {
    /// The builder's configuration: this VM's resources over `base`, which
    /// carries what only the command line sets (console, KVM device).
    pub fn vm_config(&self, base: &VmConfig) -> Result<VmConfig, Error> {
        let boot = self.boot_source.as_ref().ok_or(Error::NoBootSource)?;
        let mut cmdline = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        // As Firecracker does: the root drive becomes the guest's root
        // filesystem. Drives are vda, vdb, ... in the order they were added.
        if let Some((index, root)) = self
            .drives
            .iter()
            .enumerate()
            .find(|(_, d)| d.is_root_device)
        {
            let letter = char::from(b"abcdefghijklmnopqrstuvwxyz"[index % 26]);
            let mode = if root.is_read_only { "ro" } else { "rw" };
            cmdline.push_str(&format!(" root=/dev/vd{letter} {mode}"));
        }
        let nics = self
            .network_interfaces
            .iter()
            .map(NetworkInterfaceBody::to_nic)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VmConfig {
            kernel: boot.kernel_image_path.clone(),
            initrd: boot.initrd_path.clone(),
            cmdline,
            drives: self.drives.iter().map(DriveBody::to_drive).collect(),
            nics,
            vsock: self.vsock.as_ref().map(VsockBody::to_config).transpose()?,
            entropy: self.entropy.is_some(),
            entropy_rate_limiter: self.entropy.as_ref().and_then(|e| e.rate_limiter),
            ..self.sized(base)
        })
    }

    /// Checks `machine_config` against the limits that depend on the host
    /// (its RAM), with the same rules as the command line.
    pub fn check_machine(machine_config: &MachineConfig, base: &VmConfig) -> Result<(), Error> {
        let resources = VmResources {
            machine_config: machine_config.clone(),
            ..Default::default()
        };
        resources.sized(base).validate()?;
        Ok(())
    }

    fn sized(&self, base: &VmConfig) -> VmConfig {
        VmConfig {
            vcpus: u16::from(self.machine_config.vcpu_count),
            memory_mib: self.machine_config.mem_size_mib,
            huge_pages: self.machine_config.huge_pages == HugePages::Hugetlbfs2M,
            ..base.clone()
        }
    }

    /// `GET /vm/config`: Firecracker's full configuration document, which
    /// is also a valid config file. Device sections are empty until the
    /// VMM has those devices.
    pub fn full_config(&self, metrics: Option<MetricsConfig>) -> FullVmConfig {
        FullVmConfig {
            balloon: None,
            drives: self.drives.clone(),
            boot_source: self.boot_source.clone(),
            cpu_config: None,
            logger: self.logger.clone(),
            machine_config: self.machine_config.clone(),
            metrics,
            mmds_config: None,
            network_interfaces: self.network_interfaces.clone(),
            pmem: Vec::new(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
        }
    }
}

/// Firecracker's `FullVmConfiguration`. Sections we do not have yet are
/// typed as opaque JSON so the shape is right and the devices can replace
/// them with their own types.
#[derive(Debug, Clone, Serialize)]
pub struct FullVmConfig {
    pub balloon: Option<serde_json::Value>,
    pub drives: Vec<DriveBody>,
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(rename = "cpu-config")]
    pub cpu_config: Option<serde_json::Value>,
    pub logger: Option<LoggerConfig>,
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    pub metrics: Option<MetricsConfig>,
    #[serde(rename = "mmds-config")]
    pub mmds_config: Option<serde_json::Value>,
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterfaceBody>,
    pub pmem: Vec<serde_json::Value>,
    pub vsock: Option<VsockBody>,
    pub entropy: Option<EntropyBody>,
}
