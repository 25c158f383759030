//! Device bodies of the Firecracker API and config file: `Drive`,
//! `NetworkInterface`, `Vsock` and `EntropyDevice`, with their checks, and their
//! conversion into the builder's device configuration; and the bodies of
//! `PATCH /drives/{id}` and `PATCH /network-interfaces/{id}` (`PartialDrive`,
//! `PartialNetworkInterface`), which update the rate limiters of a running
//! VM and swap a running drive's image.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::rate_limiter::{ConfigError, RateLimiterConfig};
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
    #[error("drive {0}: path_on_host must not be empty")]
    EmptyPath(String),
    #[error("A root block device already exists ({0}).")]
    SecondRoot(String),
    #[error("network interface {0}: {1}")]
    Net(String, String),
    #[error("{device}: invalid {field}: {error}")]
    RateLimiter {
        /// "drive ID", "network interface ID" or "entropy".
        device: String,
        /// The body's field: rate_limiter, rx_rate_limiter, tx_rate_limiter.
        field: &'static str,
        error: ConfigError,
    },
    #[error("Invalid block device ID: no drive {0} was configured.")]
    NoSuchDrive(String),
    #[error("Invalid network interface ID: no network interface {0} was configured.")]
    NoSuchInterface(String),
    #[error("The guest MAC {0} is already in use by another interface.")]
    DuplicateMac(String),
    #[error("The host device {0} is already in use by another interface.")]
    DuplicateTap(String),
    #[error("Cannot create backend for vsock device: {0}")]
    Vsock(String),
}

/// Checks a limiter of a body; `device` and `field` name it in the error.
fn check_limiter(
    device: impl FnOnce() -> String,
    field: &'static str,
    limiter: Option<&RateLimiterConfig>,
) -> Result<(), Error> {
    match limiter {
        Some(limiter) => limiter.validate().map_err(|error| Error::RateLimiter {
            device: device(),
            field,
            error,
        }),
        None => Ok(()),
    }
}

/// The id in the path must be the body's.
fn check_path_id(path_id: Option<&str>, body_id: &str) -> Result<(), Error> {
    match path_id {
        Some(path_id) if path_id != body_id => Err(Error::IdMismatch {
            path: path_id.to_string(),
            body: body_id.to_string(),
        }),
        _ => Ok(()),
    }
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
    pub rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl DriveBody {
    /// Checks the body as Firecracker does at PUT: the id, the options we
    /// implement, and that the image can be opened the way it will be.
    pub fn validate(&self, path_id: Option<&str>) -> Result<(), Error> {
        check_id(&self.drive_id)?;
        check_path_id(path_id, &self.drive_id)?;
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
        check_limiter(
            || format!("drive {}", self.drive_id),
            "rate_limiter",
            self.rate_limiter.as_ref(),
        )?;
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
            rate_limiter: self.rate_limiter,
        }
    }
}

/// Whether the image opens as it will at boot (read-only or read-write).
fn open_check(path: &Path, read_only: bool) -> Result<(), String> {
    crate::image_file::open(path, !read_only)
        .map(drop)
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
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl NetworkInterfaceBody {
    pub fn validate(&self, path_id: Option<&str>) -> Result<(), Error> {
        check_id(&self.iface_id)?;
        check_path_id(path_id, &self.iface_id)?;
        check_net_limiters(
            &self.iface_id,
            self.rx_rate_limiter.as_ref(),
            self.tx_rate_limiter.as_ref(),
        )?;
        self.to_nic().map(|_| ())
    }

    pub fn to_nic(&self) -> Result<NetConfig, Error> {
        self.nic(true)
    }

    /// The builder's configuration of an interface that runs (its TAP
    /// open): a snapshot's record of it, without looking the TAP up — which
    /// the API thread of a running VM may not do (seccomp).
    pub fn running_nic(&self) -> Result<NetConfig, Error> {
        self.nic(false)
    }

    fn nic(&self, check_tap: bool) -> Result<NetConfig, Error> {
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
        if check_tap && crate::devices::virtio::tap::is_known_missing(&self.host_dev_name) {
            return Err(Error::Net(
                self.iface_id.clone(),
                format!("TAP device {} does not exist", self.host_dev_name),
            ));
        }
        Ok(NetConfig {
            id: self.iface_id.clone(),
            tap: self.host_dev_name.clone(),
            mac,
            rx_rate_limiter: self.rx_rate_limiter,
            tx_rate_limiter: self.tx_rate_limiter,
        })
    }
}

fn check_net_limiters(
    iface_id: &str,
    rx: Option<&RateLimiterConfig>,
    tx: Option<&RateLimiterConfig>,
) -> Result<(), Error> {
    let device = || format!("network interface {iface_id}");
    check_limiter(device, "rx_rate_limiter", rx)?;
    check_limiter(device, "tx_rate_limiter", tx)
}

/// Firecracker's `PartialDrive`, the body of `PATCH /drives/{id}`: what
/// may change on a running VM: the image (`path_on_host`, opened as the
/// drive was: read-only or read-write) and the rate limiter. Fields left
/// out stay as they are.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdateBody {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<PathBuf>,
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl DriveUpdateBody {
    /// Checks what can be checked without the running drive: the id
    /// against the path's, a path that names something, the limiter. The
    /// new image itself is opened when it replaces the old one, on the
    /// drive's own terms (its read-only flag), so opening it here too
    /// would only be a second open that proves nothing.
    pub fn validate(&self, path_id: &str) -> Result<(), Error> {
        check_id(&self.drive_id)?;
        check_path_id(Some(path_id), &self.drive_id)?;
        if self
            .path_on_host
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(Error::EmptyPath(self.drive_id.clone()));
        }
        check_limiter(
            || format!("drive {}", self.drive_id),
            "rate_limiter",
            self.rate_limiter.as_ref(),
        )
    }
}

/// Firecracker's `PartialNetworkInterface`, the body of `PATCH
/// /network-interfaces/{id}`: new rate limiters for a running VM. A
/// limiter left out stays as it is; within a limiter, so does a bucket
/// left out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdateBody {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl NetworkInterfaceUpdateBody {
    pub fn validate(&self, path_id: &str) -> Result<(), Error> {
        check_id(&self.iface_id)?;
        check_path_id(Some(path_id), &self.iface_id)?;
        check_net_limiters(
            &self.iface_id,
            self.rx_rate_limiter.as_ref(),
            self.tx_rate_limiter.as_ref(),
        )
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
    /// The builder's configuration of a vsock device that runs (its socket
    /// bound): a snapshot's record of it, without the checks of a new one.
    pub fn running_config(&self) -> VsockConfig {
        VsockConfig {
            guest_cid: self.guest_cid,
            uds_path: self.uds_path.clone(),
        }
    }

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
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl EntropyBody {
    pub fn validate(&self) -> Result<(), Error> {
        check_limiter(
            || "entropy".to_string(),
            "rate_limiter",
            self.rate_limiter.as_ref(),
        )
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
    fn entropy_takes_a_rate_limiter() {
        assert_eq!(EntropyBody::default().validate(), Ok(()));
        let limited: EntropyBody = serde_json::from_str(
            r#"{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#,
        )
        .unwrap();
        assert_eq!(limited.validate(), Ok(()));
        let absurd: EntropyBody = serde_json::from_str(
            r#"{"rate_limiter": {"ops": {"size": 1, "refill_time": 18446744073709551615}}}"#,
        )
        .unwrap();
        let error = absurd.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("entropy: invalid rate_limiter: ops: refill_time"),
            "{error}"
        );
    }

    #[test]
    fn drive_rate_limiters_are_parsed_checked_and_passed_on() {
        let image = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let body = |limiter: &str| -> Result<DriveBody, String> {
            let json = format!(
                r#"{{"drive_id": "data", "path_on_host": {:?}, "is_root_device": false,
                    "rate_limiter": {limiter}}}"#,
                image.as_path()
            );
            serde_json::from_str(&json).map_err(|e| e.to_string())
        };
        let limited = body(r#"{"bandwidth": {"size": 4194304, "refill_time": 1000}}"#).unwrap();
        assert_eq!(limited.validate(Some("data")), Ok(()));
        let config = limited.to_drive().rate_limiter.unwrap();
        assert_eq!(config.bandwidth.map(|b| b.size), Some(4 << 20));
        assert_eq!(config.ops, None);
        // null, as Firecracker's clients send for no limiter.
        assert_eq!(body("null").unwrap().rate_limiter, None);
        assert!(body(r#"{"bandwidth": {"size": 1}}"#)
            .unwrap_err()
            .contains("missing field `refill_time`"));
        assert!(body(r#"{"iops": {"size": 1, "refill_time": 1}}"#)
            .unwrap_err()
            .contains("unknown field `iops`"));
        let absurd = body(r#"{"bandwidth": {"size": 1, "refill_time": 99999999999999}}"#).unwrap();
        assert!(matches!(
            absurd.validate(None),
            Err(Error::RateLimiter {
                field: "rate_limiter",
                ..
            })
        ));
    }

    #[test]
    fn interface_rate_limiters_are_checked_before_the_tap() {
        let nic: NetworkInterfaceBody = serde_json::from_str(
            r#"{"iface_id": "eth0", "host_dev_name": "nosuchtap9",
                "rx_rate_limiter": {"ops": {"size": 100, "refill_time": 1000}},
                "tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 99999999999999}}}"#,
        )
        .unwrap();
        let error = nic.validate(Some("eth0")).unwrap_err().to_string();
        assert!(
            error.starts_with("network interface eth0: invalid tx_rate_limiter: bandwidth"),
            "{error}"
        );
        let mut fine = nic.clone();
        fine.tx_rate_limiter = None;
        // Past the limiters: the TAP is missing.
        assert!(matches!(fine.validate(None), Err(Error::Net(..))));
    }

    #[test]
    fn patch_bodies() {
        let drive: DriveUpdateBody = serde_json::from_str(
            r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 10, "refill_time": 100}}}"#,
        )
        .unwrap();
        assert_eq!(drive.validate("data"), Ok(()));
        assert!(matches!(
            drive.validate("other"),
            Err(Error::IdMismatch { .. })
        ));
        // A new image is taken, alone or with a limiter; whether it opens
        // is for the swap to find out.
        let swap: DriveUpdateBody =
            serde_json::from_str(r#"{"drive_id": "data", "path_on_host": "/other.img"}"#).unwrap();
        assert_eq!(swap.validate("data"), Ok(()));
        assert_eq!(swap.path_on_host.as_deref(), Some(Path::new("/other.img")));
        let both: DriveUpdateBody = serde_json::from_str(
            r#"{"drive_id": "data", "path_on_host": "/other.img",
                "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 99999999999999}}}"#,
        )
        .unwrap();
        assert!(matches!(
            both.validate("data"),
            Err(Error::RateLimiter {
                field: "rate_limiter",
                ..
            })
        ));
        let empty: DriveUpdateBody =
            serde_json::from_str(r#"{"drive_id": "data", "path_on_host": ""}"#).unwrap();
        let error = empty.validate("data").unwrap_err().to_string();
        assert!(error.contains("path_on_host"), "{error}");
        assert!(serde_json::from_str::<DriveUpdateBody>(
            r#"{"drive_id": "data", "path_on_host": 7}"#
        )
        .is_err());
        let bare: DriveUpdateBody = serde_json::from_str(r#"{"drive_id": "data"}"#).unwrap();
        assert_eq!(bare.validate("data"), Ok(()));
        assert!(serde_json::from_str::<DriveUpdateBody>(
            r#"{"drive_id": "data", "is_read_only": true}"#
        )
        .is_err());
        let nic: NetworkInterfaceUpdateBody = serde_json::from_str(
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}"#,
        )
        .unwrap();
        assert_eq!(nic.validate("eth0"), Ok(()));
        let bad: NetworkInterfaceUpdateBody = serde_json::from_str(
            r#"{"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 99999999999999}}}"#,
        )
        .unwrap();
        assert!(matches!(
            bad.validate("eth0"),
            Err(Error::RateLimiter {
                field: "tx_rate_limiter",
                ..
            })
        ));
        assert!(serde_json::from_str::<NetworkInterfaceUpdateBody>(
            r#"{"iface_id": "eth0", "host_dev_name": "tap1"}"#
        )
        .is_err());
    }
}
