//! `snapshot/create` and `snapshot/load`: Firecracker's bodies, checked
//! before anything is opened.
//!
//! What is refused, and why: a userfaultfd memory backend (not built yet:
//! a 400 naming it, never a silent File backend), `clock_realtime` (the guest's
//! clock goes on from where it was saved, as Firecracker's default), and
//! huge pages other than the snapshot's own or none (a restored VM's
//! memory is the memory file, mapped private).

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{0} is not supported by this VMM yet")]
    Unsupported(&'static str),
    #[error("exactly one of mem_backend and mem_file_path must be given")]
    MemorySource,
    #[error("{0} must not be empty")]
    EmptyPath(&'static str),
    #[error("network_overrides names the interface {0} twice")]
    DuplicateOverride(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// Firecracker's `SnapshotCreateParams`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotBody {
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
}

impl CreateSnapshotBody {
    /// A Diff snapshot is checked against the VM (dirty-page tracking on)
    /// when it is made.
    pub fn validate(&self) -> Result<(), Error> {
        non_empty("snapshot_path", &self.snapshot_path)?;
        non_empty("mem_file_path", &self.mem_file_path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BackendType {
    File,
    Uffd,
}

/// Firecracker's `MemoryBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    pub backend_type: BackendType,
    pub backend_path: PathBuf,
}

/// Firecracker's `NetworkOverride`: another TAP for an interface.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// Firecracker's `VsockOverride`: another host socket for the vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum HugePagesOnLoad {
    Snapshot,
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Firecracker's `SnapshotLoadParams`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSnapshotBody {
    pub snapshot_path: PathBuf,
    #[serde(default)]
    pub mem_backend: Option<MemoryBackend>,
    /// Deprecated by Firecracker in favour of `mem_backend`.
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    /// Deprecated by Firecracker in favour of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    #[serde(default)]
    pub clock_realtime: bool,
    #[serde(default)]
    pub huge_pages: Option<HugePagesOnLoad>,
}

impl LoadSnapshotBody {
    /// The memory file, once the body is known to be one we serve.
    pub fn validate(&self) -> Result<PathBuf, Error> {
        non_empty("snapshot_path", &self.snapshot_path)?;
        if self.clock_realtime {
            return Err(Error::Unsupported("clock_realtime"));
        }
        if matches!(
            self.huge_pages,
            Some(HugePagesOnLoad::Transparent | HugePagesOnLoad::Hugetlbfs2M)
        ) {
            return Err(Error::Unsupported("huge pages on a restored VM"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for o in &self.network_overrides {
            if !seen.insert(&o.iface_id) {
                return Err(Error::DuplicateOverride(o.iface_id.clone()));
            }
        }
        if let Some(vsock) = &self.vsock_override {
            non_empty("vsock_override.uds_path", &vsock.uds_path)?;
        }
        let path = match (&self.mem_backend, &self.mem_file_path) {
            (Some(backend), None) if backend.backend_type == BackendType::Uffd => {
                return Err(Error::Unsupported("the Uffd memory backend"))
            }
            (Some(backend), None) => backend.backend_path.clone(),
            (None, Some(path)) => path.clone(),
            _ => return Err(Error::MemorySource),
        };
        non_empty("the memory file path", &path)?;
        Ok(path)
    }

    /// Whether the restored VM tracks dirty pages: `track_dirty_pages`, or
    /// the deprecated `enable_diff_snapshots` (Firecracker ORs them).
    pub fn tracks_dirty_pages(&self) -> bool {
        self.track_dirty_pages == Some(true) || self.enable_diff_snapshots == Some(true)
    }

    /// Whether the body uses a field Firecracker deprecates.
    pub fn deprecated(&self) -> bool {
        self.mem_file_path.is_some() || self.enable_diff_snapshots.is_some()
    }
}

fn non_empty(what: &'static str, path: &std::path::Path) -> Result<(), Error> {
    if path.as_os_str().is_empty() {
        return Err(Error::EmptyPath(what));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<PathBuf, String> {
        let body: LoadSnapshotBody = serde_json::from_str(json).map_err(|e| e.to_string())?;
        body.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn create_bodies() {
        let body: CreateSnapshotBody =
            serde_json::from_str(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert_eq!(body.snapshot_type, SnapshotType::Full);
        body.validate().unwrap();
        let diff: CreateSnapshotBody = serde_json::from_str(
            r#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#,
        )
        .unwrap();
        assert_eq!(diff.snapshot_type, SnapshotType::Diff);
        diff.validate().unwrap();
        let empty: CreateSnapshotBody =
            serde_json::from_str(r#"{"snapshot_path": "", "mem_file_path": "m"}"#).unwrap();
        assert!(empty.validate().is_err());
        assert!(serde_json::from_str::<CreateSnapshotBody>(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "version": "1"}"#
        )
        .is_err());
    }

    #[test]
    fn load_bodies() {
        assert_eq!(
            load(
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#
            ),
            Ok(PathBuf::from("m"))
        );
        assert_eq!(
            load(r#"{"snapshot_path": "s", "mem_file_path": "m", "resume_vm": true}"#),
            Ok(PathBuf::from("m"))
        );
        for (json, needle) in [
            (r#"{"snapshot_path": "s"}"#, "exactly one"),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
                "exactly one",
            ),
            (
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Uffd", "backend_path": "u"}}"#,
                "Uffd",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "clock_realtime": true}"#,
                "clock_realtime",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "a"}, {"iface_id": "eth0", "host_dev_name": "b"}]}"#,
                "twice",
            ),
            (r#"{"snapshot_path": "s", "mem_file_path": ""}"#, "empty"),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "surprise": 1}"#,
                "unknown field",
            ),
        ] {
            let error = load(json).unwrap_err();
            assert!(error.contains(needle), "{json}: {error}");
        }
        let deprecated: LoadSnapshotBody =
            serde_json::from_str(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert!(deprecated.deprecated());
        assert!(!deprecated.tracks_dirty_pages());
        for json in [
            r#"{"snapshot_path": "s", "mem_file_path": "m", "track_dirty_pages": true}"#,
            r#"{"snapshot_path": "s", "mem_file_path": "m", "enable_diff_snapshots": true}"#,
            r#"{"snapshot_path": "s", "mem_file_path": "m", "enable_diff_snapshots": false, "track_dirty_pages": true}"#,
        ] {
            let body: LoadSnapshotBody = serde_json::from_str(json).unwrap();
            assert_eq!(body.validate(), Ok(PathBuf::from("m")), "{json}");
            assert!(body.tracks_dirty_pages(), "{json}");
        }
    }
}
