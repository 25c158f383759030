//! Firecracker's `--config-file` format: the resources of `GET /vm/config`
//! in one JSON document, applied in order and booted without an API call.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::balloon::BalloonBody;
use super::boot_source::BootSourceConfig;
use super::cpu_config::CpuTemplate;
use super::devices::{DriveBody, EntropyBody, NetworkInterfaceBody, VsockBody};
use super::logger::LoggerConfig;
use super::machine_config::MachineConfig;
use super::metrics::MetricsConfig;
use super::mmds::MmdsConfig;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config file {path}: \"{section}\" is not supported by this VMM yet; remove it or leave it empty")]
    Unsupported {
        path: PathBuf,
        section: &'static str,
    },
}

/// The document. Unknown keys are refused, as Firecracker does, so a typo
/// does not silently drop a device.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(rename = "boot-source")]
    pub boot_source: BootSourceConfig,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    // Sections for devices this VMM does not have yet: accepted when empty
    // (`[]` or `null`), as `GET /vm/config` writes them, refused otherwise.
    #[serde(default)]
    pub drives: Vec<DriveBody>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceBody>,
    #[serde(default)]
    pmem: Vec<serde_json::Value>,
    #[serde(default)]
    pub vsock: Option<VsockBody>,
    #[serde(default)]
    pub entropy: Option<EntropyBody>,
    #[serde(default)]
    pub balloon: Option<BalloonBody>,
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<MmdsConfig>,
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<CpuTemplate>,
    #[serde(rename = "memory-hotplug", default)]
    memory_hotplug: Option<serde_json::Value>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, Error> {
        let file: ConfigFile = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let unsupported = [
            ("pmem", !file.pmem.is_empty()),
            ("memory-hotplug", file.memory_hotplug.is_some()),
        ];
        if let Some((section, _)) = unsupported.into_iter().find(|(_, present)| *present) {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                section,
            });
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse(text, Path::new("vm.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn firecracker_example_config() {
        let file = parse(
            r#"{
              "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0 reboot=k", "initrd_path": null},
              "drives": [],
              "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false},
              "cpu-config": null, "balloon": null, "network-interfaces": [],
              "vsock": null, "logger": null, "metrics": null, "mmds-config": null, "entropy": null
            }"#,
        )
        .unwrap();
        assert_eq!(file.machine_config.unwrap().vcpu_count, 2);
    }

    #[test]
    fn devices_and_unknown_keys_are_refused() {
        let drive = r#"{"boot-source": {"kernel_image_path": "k"},
            "drives": [{"drive_id": "rootfs", "path_on_host": "r.ext4", "is_root_device": true, "is_read_only": false}]}"#;
        assert_eq!(parse(drive).unwrap().drives[0].drive_id, "rootfs");
        let bad_drive =
            r#"{"boot-source": {"kernel_image_path": "k"}, "drives": [{"drive_id": "rootfs"}]}"#;
        assert!(parse(bad_drive).unwrap_err().contains("missing field"));
        let vsock = r#"{"boot-source": {"kernel_image_path": "k"}, "vsock": {"guest_cid": 3, "uds_path": "v"}}"#;
        assert_eq!(parse(vsock).unwrap().vsock.unwrap().guest_cid, 3);
        let balloon = r#"{"boot-source": {"kernel_image_path": "k"},
            "balloon": {"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1}}"#;
        let balloon = parse(balloon).unwrap().balloon.unwrap();
        assert_eq!((balloon.amount_mib, balloon.deflate_on_oom), (64, true));
        let bad_balloon =
            r#"{"boot-source": {"kernel_image_path": "k"}, "balloon": {"amount_mib": 64}}"#;
        assert!(parse(bad_balloon).unwrap_err().contains("deflate_on_oom"));
        let mmds = r#"{"boot-source": {"kernel_image_path": "k"},
            "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]}}"#;
        let mmds = parse(mmds).unwrap().mmds_config.unwrap();
        assert_eq!(mmds.network_interfaces, ["eth0"]);
        let pmem = r#"{"boot-source": {"kernel_image_path": "k"}, "pmem": [{"id": "p"}]}"#;
        assert!(parse(pmem).unwrap_err().contains("\"pmem\""));
        let typo = r#"{"boot-source": {"kernel_image_path": "k"}, "machine_config": {}}"#;
        assert!(parse(typo).unwrap_err().contains("unknown field"));
        assert!(parse(r#"{"drives": []}"#)
            .unwrap_err()
            .contains("boot-source"));
        assert!(parse("{").is_err());
    }
}
