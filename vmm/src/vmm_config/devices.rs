//! Device bodies of the Firecracker API and config file: `Drive`,
//! `NetworkInterface`, `Vsock` and `EntropyDevice`, with their checks, and their
//! conversion into the builder's device configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{
    parse_mac, DriveConfig, NetConfig, VsockConfig, DRIVE_SERIAL_MAX, UDS_PATH_MAX,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("The id from the path ({path}) does not match the id from the body ({body}).")]
    IdMismatch { path: String, body: String },
    #[error("invalid id {0:?}: use 1 to 64 letters, digits, '_' or '-'")]
    Id(String),
    #[error("Unable to open the drive {drive_id}: {path}: {reason}")]
    DrivePath {
        drive_id: String,
        path: String,
        reason: String,
    },
    #[error("drive {0}: {1} is not supported by this VMM")]
    DriveOption(String, &'static str),
    #[error("A root block device already exists ({0}).")]
    SecondRoot(String),
    #[error("network interface {0}: {1}")]
    Net(String, String),
    #[error("{0}: rate limiters are not supported by this VMM yet")]
    RateLimiter(String),
    #[error("The guest MAC {0} is already in use by another interface.")]
    DuplicateMac(String),
    #[error("The host device {0} is already in use by another interface.")]
    DuplicateTap(String),
    #[error("Cannot create backend for vsock device: {0}")]
    Vsock(String),
}

fn check_id(id: &str) -> Result<(), Error> {
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(Error::Id(id.to_string()))
    }
}

/// Firecracker's `Drive`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriveBody {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl DriveBody {
    /// Checks the body as Firecracker does at PUT: the id, the options we
    /// implement, and that the image can be opened the way it will be.
    pub fn validate(&self, path_id: Option<&str>) -> Result<(), Error> {
        check_id(&self.drive_id)?;
        if let Some(path_id) = path_id {
            if path_id != self.drive_id {
                return Err(Error::IdMismatch {
                    path: path_id.to_string(),
                    body: self.drive_id.clone(),
                });
            }
        }
        let option = |what| Error::DriveOption(self.drive_id.clone(), what);
        if self.socket.is_some() {
            return Err(option("a vhost-user socket"));
        }
        if self.partuuid.is_some() {
            return Err(option("partuuid"));
        }
        if self.io_engine.as_deref().is_some_and(|e| e != "Sync") {
            return Err(option("an io_engine other than Sync"));
        }
        if self
            .cache_type
            .as_deref()
            .is_some_and(|c| c != "Unsafe" && c != "Writeback")
        {
            return Err(option("this cache_type"));
        }
        if self.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(Error::RateLimiter(self.drive_id.clone()));
        }
        open_check(&self.path_on_host, self.is_read_only).map_err(|reason| Error::DrivePath {
            drive_id: self.drive_id.clone(),
            path: self.path_on_host.display().to_string(),
            reason,
        })
    }

    pub fn to_drive(&self) -> DriveConfig {
        let mut serial = self.drive_id.clone();
        serial.truncate(DRIVE_SERIAL_MAX);
        DriveConfig {
            id: self.drive_id.clone(),
            path: self.path_on_host.clone(),
            read_only: self.is_read_only,
            serial: Some(serial),
        }
    }
}

/// Whether the image opens as it will at boot (read-only or read-write).
fn open_check(path: &Path, read_only: bool) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if metadata.is_dir() {
        return Err("is a directory".into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Firecracker's `NetworkInterface`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceBody {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

impl NetworkInterfaceBody {
    pub fn validate(&self, path_id: Option<&str>) -> Result<(), Error> {
        check_id(&self.iface_id)?;
        if let Some(path_id) = path_id {
            if path_id != self.iface_id {
                return Err(Error::IdMismatch {
                    path: path_id.to_string(),
                    body: self.iface_id.clone(),
                });
            }
        }
        let limited = |r: &Option<serde_json::Value>| r.as_ref().is_some_and(|r| !r.is_null());
        if limited(&self.rx_rate_limiter) || limited(&self.tx_rate_limiter) {
            return Err(Error::RateLimiter(self.iface_id.clone()));
        }
        self.to_nic().map(|_| ())
    }

    pub fn to_nic(&self) -> Result<NetConfig, Error> {
        let mac = self
            .guest_mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|e| Error::Net(self.iface_id.clone(), e))?;
        if self.host_dev_name.is_empty() || self.host_dev_name.len() > 15 {
            return Err(Error::Net(
                self.iface_id.clone(),
                format!(
                    "host_dev_name {:?} is not a TAP device name",
                    self.host_dev_name
                ),
            ));
        }
        if !Path::new("/sys/class/net")
            .join(&self.host_dev_name)
            .exists()
        {
            return Err(Error::Net(
                self.iface_id.clone(),
                format!("TAP device {} does not exist", self.host_dev_name),
            ));
        }
        Ok(NetConfig {
            id: self.iface_id.clone(),
            tap: self.host_dev_name.clone(),
            mac,
        })
    }
}

/// Firecracker's `Vsock`. `vsock_id` is accepted and ignored, as
/// Firecracker does since it deprecated it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VsockBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

impl VsockBody {
    /// Checks the body as far as it can be before the socket is bound at
    /// boot: the CID, the path's length, a free path in an existing
    /// directory.
    pub fn to_config(&self) -> Result<VsockConfig, Error> {
        let fail = |reason: String| Err(Error::Vsock(reason));
        if self.guest_cid < 3 || self.guest_cid == u32::MAX {
            return fail(format!(
                "guest_cid {} is reserved; use 3 or more",
                self.guest_cid
            ));
        }
        let path = &self.uds_path;
        if path.as_os_str().is_empty() || path.as_os_str().len() > UDS_PATH_MAX {
            return fail(format!("uds_path must be 1 to {UDS_PATH_MAX} bytes"));
        }
        if path.symlink_metadata().is_ok() {
            return fail(format!("{} already exists", path.display()));
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return fail(format!("directory {} does not exist", parent.display()));
        }
        Ok(VsockConfig {
            guest_cid: self.guest_cid,
            uds_path: path.clone(),
        })
    }
}

/// Firecracker's `EntropyDevice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

impl EntropyBody {
    pub fn validate(&self) -> Result<(), Error> {
        if self.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
            return Err(Error::RateLimiter("entropy".into()));
        }
        Ok(())
    }
}

/// Inserts `item` into `list`, replacing the one with the same id: a PUT
/// before boot updates a device.
pub fn upsert<T: Clone>(list: &mut Vec<T>, item: T, same: impl Fn(&T) -> bool) {
    match list.iter_mut().find(|existing| same(existing)) {
        Some(existing) => *existing = item,
        None => list.push(item),
    }
}

/// Checks a set of drives: at most one root device.
pub fn check_drives(drives: &[DriveBody]) -> Result<(), Error> {
    let roots: Vec<&DriveBody> = drives.iter().filter(|d| d.is_root_device).collect();
    if let [_, second, ..] = roots.as_slice() {
        return Err(Error::SecondRoot(second.drive_id.clone()));
    }
    Ok(())
}

/// Checks a set of interfaces: no MAC and no TAP used twice.
pub fn check_nics(nics: &[NetworkInterfaceBody]) -> Result<(), Error> {
    for (index, nic) in nics.iter().enumerate() {
        let before = &nics[..index];
        if let Some(mac) = &nic.guest_mac {
            if before.iter().any(|n| n.guest_mac.as_ref() == Some(mac)) {
                return Err(Error::DuplicateMac(mac.clone()));
            }
        }
        if before.iter().any(|n| n.host_dev_name == nic.host_dev_name) {
            return Err(Error::DuplicateTap(nic.host_dev_name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, path: &Path, root: bool) -> DriveBody {
        serde_json::from_value(serde_json::json!({
            "drive_id": id, "path_on_host": path, "is_root_device": root, "is_read_only": false
        }))
        .unwrap()
    }

    #[test]
    fn drives_are_checked_at_put() {
        let image = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let good = drive("rootfs", image.as_path(), true);
        assert_eq!(good.validate(Some("rootfs")), Ok(()));
        assert!(matches!(
            good.validate(Some("other")),
            Err(Error::IdMismatch { .. })
        ));
        let missing = drive("data", Path::new("/nonexistent/disk.img"), false);
        assert!(matches!(
            missing.validate(None),
            Err(Error::DrivePath { .. })
        ));
        let bad_id = drive("a/b", image.as_path(), false);
        assert!(matches!(bad_id.validate(None), Err(Error::Id(_))));
        let two_roots = [good.clone(), drive("second", image.as_path(), true)];
        assert_eq!(
            check_drives(&two_roots),
            Err(Error::SecondRoot("second".into()))
        );
        let unknown: Result<DriveBody, _> = serde_json::from_str(
            r#"{"drive_id": "x", "path_on_host": "p", "is_root_device": false, "oops": 1}"#,
        );
        assert!(unknown.is_err());
        assert_eq!(good.to_drive().serial.as_deref(), Some("rootfs"));
    }

    #[test]
    fn interfaces_need_an_existing_tap_and_unique_macs() {
        let nic: NetworkInterfaceBody = serde_json::from_str(
            r#"{"iface_id": "eth0", "host_dev_name": "nosuchtap9", "guest_mac": "02:00:00:00:00:01"}"#,
        )
        .unwrap();
        let error = nic.validate(Some("eth0")).unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
        let mut bad_mac = nic.clone();
        bad_mac.guest_mac = Some("zz".into());
        assert!(bad_mac.to_nic().is_err());
        let mut twin = nic.clone();
        twin.iface_id = "eth1".into();
        assert!(matches!(
            check_nics(&[nic.clone(), twin]),
            Err(Error::DuplicateMac(_))
        ));
    }

    #[test]
    fn entropy_refuses_rate_limiters() {
        assert_eq!(EntropyBody::default().validate(), Ok(()));
        let limited: EntropyBody = serde_json::from_str(
            r#"{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#,
        )
        .unwrap();
        assert!(limited.validate().is_err());
    }
}
