//! Everything configured before boot, and the one conversion into the
//! builder's [`VmConfig`].

use serde::Serialize;

use super::balloon::BalloonBody;
use super::boot_source::BootSourceConfig;
use super::cpu_config::CpuTemplate;
use super::devices::{self, DriveBody, EntropyBody, NetworkInterfaceBody, VsockBody};
use super::logger::LoggerConfig;
use super::machine_config::{HugePages, MachineConfig};
use super::metrics::MetricsConfig;
use super::mmds::MmdsConfig;
use super::serial::SerialBody;
use crate::config::{self, ConsoleOutput, VmConfig, DEFAULT_CMDLINE};

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
    /// After boot, the running balloon's current target and interval
    /// (the controller keeps them up to date on PATCH).
    pub balloon: Option<BalloonBody>,
    /// `PUT /mmds/config`, its address filled in.
    pub mmds_config: Option<MmdsConfig>,
    /// `PUT /serial`: where the console goes, over the command line's.
    /// Not a resource of the VM itself: it applies to a snapshot's load
    /// too, as in Firecracker.
    pub serial: Option<SerialBody>,
    /// `PUT /cpu-config`: the custom CPU template.
    pub cpu_config: Option<CpuTemplate>,
}

impl VmResources {
    /// The builder's configuration: this VM's resources over `base`, which
    /// carries what only the command line sets (console, KVM device).
    pub fn vm_config(&self, base: &VmConfig) -> Result<VmConfig, Error> {
        self.config(base, false)
    }

    /// The configuration of the VM these resources started, as it is now
    /// (PATCHes applied), for a snapshot: as [`Self::vm_config`], but the
    /// vsock socket the VM bound is not refused for existing.
    pub fn running_config(&self, base: &VmConfig) -> Result<VmConfig, Error> {
        self.config(base, true)
    }

    /// The resources of a VM restored from a snapshot, from the
    /// configuration the snapshot holds: what `GET /vm/config` shows and a
    /// later snapshot records.
    pub fn from_restored(config: &VmConfig) -> Self {
        let root = root_drive(&config.cmdline);
        VmResources {
            boot_source: Some(BootSourceConfig {
                kernel_image_path: config.kernel.clone(),
                initrd_path: config.initrd.clone(),
                boot_args: Some(without_root(&config.cmdline)),
            }),
            machine_config: MachineConfig {
                vcpu_count: u8::try_from(config.vcpus).unwrap_or(u8::MAX),
                mem_size_mib: config.memory_mib,
                huge_pages: if config.huge_pages {
                    HugePages::Hugetlbfs2M
                } else {
                    HugePages::None
                },
                track_dirty_pages: config.track_dirty_pages,
                ..MachineConfig::default()
            },
            logger: None,
            drives: config
                .drives
                .iter()
                .enumerate()
                .map(|(index, drive)| DriveBody {
                    drive_id: drive.id.clone(),
                    path_on_host: drive.path.clone(),
                    is_root_device: root == Some(index),
                    is_read_only: drive.read_only,
                    partuuid: None,
                    cache_type: None,
                    io_engine: None,
                    rate_limiter: drive.rate_limiter,
                    socket: None,
                })
                .collect(),
            network_interfaces: config
                .nics
                .iter()
                .map(|nic| NetworkInterfaceBody {
                    iface_id: nic.id.clone(),
                    host_dev_name: nic.tap.clone(),
                    guest_mac: nic.mac.map(|m| {
                        m.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":")
                    }),
                    rx_rate_limiter: nic.rx_rate_limiter,
                    tx_rate_limiter: nic.tx_rate_limiter,
                })
                .collect(),
            vsock: config.vsock.as_ref().map(|v| VsockBody {
                vsock_id: None,
                guest_cid: v.guest_cid,
                uds_path: v.uds_path.clone(),
            }),
            entropy: config.entropy.then_some(EntropyBody {
                rate_limiter: config.entropy_rate_limiter,
            }),
            balloon: config.balloon.map(|b| BalloonBody {
                amount_mib: b.amount_mib,
                deflate_on_oom: b.deflate_on_oom,
                stats_polling_interval_s: b.stats_polling_interval_s,
                free_page_hinting: false,
                free_page_reporting: false,
            }),
            mmds_config: config.mmds.clone(),
            serial: None,
            cpu_config: config.cpu_template.clone(),
        }
    }

    /// `base` with `PUT /serial` applied: its path replaces the command
    /// line's console, whose input (the VMM's stdin) then goes unused, as
    /// in Firecracker; its bucket limits the output wherever it goes.
    pub fn console_base(&self, base: &VmConfig) -> VmConfig {
        let Some(serial) = &self.serial else {
            return base.clone();
        };
        let mut config = base.clone();
        if let Some(path) = &serial.serial_out_path {
            config.console = ConsoleOutput::Named(path.clone());
            config.console_input = false;
        }
        config.console_rate_limit = serial.enabled_rate_limiter();
        config
    }

    /// Whether anything of the VM itself was configured (not counting the
    /// logger): a snapshot may only be loaded into a VMM where nothing was.
    pub fn has_vm_resources(&self) -> bool {
        self.boot_source.is_some()
            || self.machine_config != MachineConfig::default()
            || !self.drives.is_empty()
            || !self.network_interfaces.is_empty()
            || self.vsock.is_some()
            || self.entropy.is_some()
            || self.balloon.is_some()
            || self.mmds_config.is_some()
            || self.cpu_config.is_some()
    }

    fn config(&self, base: &VmConfig, running: bool) -> Result<VmConfig, Error> {
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
            .map(|nic| {
                if running {
                    nic.running_nic()
                } else {
                    nic.to_nic()
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VmConfig {
            kernel: boot.kernel_image_path.clone(),
            initrd: boot.initrd_path.clone(),
            cmdline,
            drives: self.drives.iter().map(DriveBody::to_drive).collect(),
            nics,
            vsock: match &self.vsock {
                Some(vsock) if running => Some(vsock.running_config()),
                Some(vsock) => Some(vsock.to_config()?),
                None => None,
            },
            entropy: self.entropy.is_some(),
            entropy_rate_limiter: self.entropy.as_ref().and_then(|e| e.rate_limiter),
            balloon: self.balloon.as_ref().map(BalloonBody::to_config),
            mmds: self.mmds_config.clone(),
            cpu_template: self.cpu_config.clone(),
            ..self.sized(&self.console_base(base))
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
            track_dirty_pages: self.machine_config.track_dirty_pages,
            ..base.clone()
        }
    }

    /// `GET /vm/config`: Firecracker's full configuration document, which
    /// is also a valid config file. Sections of what the VMM does not have
    /// yet are empty.
    pub fn full_config(&self, metrics: Option<MetricsConfig>) -> FullVmConfig {
        FullVmConfig {
            balloon: self.balloon.clone(),
            drives: self.drives.clone(),
            boot_source: self.boot_source.clone(),
            cpu_config: self.cpu_config.clone(),
            logger: self.logger.clone(),
            machine_config: self.machine_config.clone(),
            metrics,
            mmds_config: self.mmds_config.clone(),
            network_interfaces: self.network_interfaces.clone(),
            pmem: Vec::new(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
        }
    }
}

/// The index of the drive `root=/dev/vdX` names, as [`VmResources::vm_config`]
/// appends it.
fn root_drive(cmdline: &str) -> Option<usize> {
    let device = cmdline
        .split_whitespace()
        .filter_map(|arg| arg.strip_prefix("root=/dev/vd"))
        .next_back()?;
    let letter = *device.as_bytes().first()?;
    (device.len() == 1 && letter.is_ascii_lowercase()).then(|| usize::from(letter - b'a'))
}

/// `cmdline` without the `root=/dev/vdX rw|ro` [`VmResources::vm_config`]
/// appended, so that it is not appended twice.
fn without_root(cmdline: &str) -> String {
    let mut words: Vec<&str> = cmdline.split_whitespace().collect();
    if let Some(at) = words.iter().rposition(|w| w.starts_with("root=/dev/vd")) {
        let end = if matches!(words.get(at + 1), Some(&"rw" | &"ro")) {
            at + 2
        } else {
            at + 1
        };
        words.drain(at..end);
    }
    words.join(" ")
}

/// Firecracker's `FullVmConfiguration`. Sections we do not have yet are
/// typed as opaque JSON so the shape is right and the devices can replace
/// them with their own types.
#[derive(Debug, Clone, Serialize)]
pub struct FullVmConfig {
    pub balloon: Option<BalloonBody>,
    pub drives: Vec<DriveBody>,
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(rename = "cpu-config")]
    pub cpu_config: Option<CpuTemplate>,
    pub logger: Option<LoggerConfig>,
    #[serde(rename = "machine-config")]
    pub machine_config: MachineConfig,
    pub metrics: Option<MetricsConfig>,
    #[serde(rename = "mmds-config")]
    pub mmds_config: Option<MmdsConfig>,
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterfaceBody>,
    pub pmem: Vec<serde_json::Value>,
    pub vsock: Option<VsockBody>,
    pub entropy: Option<EntropyBody>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmds::MmdsVersion;

    /// The service's configuration goes into the builder's, a snapshot's
    /// state (serialised, its data store left out) and back.
    #[test]
    fn mmds_config_survives_a_snapshot() {
        let mmds = MmdsConfig {
            version: MmdsVersion::V2,
            network_interfaces: vec!["eth0".into()],
            ipv4_address: Some("169.254.170.2".parse().unwrap()),
            imds_compat: true,
        };
        let resources = VmResources {
            boot_source: Some(BootSourceConfig {
                kernel_image_path: "vmlinux".into(),
                initrd_path: None,
                boot_args: None,
            }),
            mmds_config: Some(mmds.clone()),
            ..Default::default()
        };
        let mut config = resources.vm_config(&VmConfig::default()).unwrap();
        assert_eq!(config.mmds, Some(mmds.clone()));
        config.mmds_store = Some(crate::mmds::Mmds::new(10));
        let text = serde_json::to_string(&config).unwrap();
        assert!(!text.contains("mmds_store"), "{text}");
        let restored: VmConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(restored.mmds, Some(mmds.clone()));
        assert!(restored.mmds_store.is_none());
        assert_eq!(
            VmResources::from_restored(&restored).mmds_config,
            Some(mmds)
        );
        // A state saved before the service existed has none.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("mmds");
        let old: VmConfig = serde_json::from_value(old).unwrap();
        assert!(old.mmds.is_none());
    }
}
