//! `machine-config`: vCPUs, memory and its huge pages (`"2M"`: hugetlbfs),
//! dirty-page tracking (`track_dirty_pages`, which Diff snapshots need),
//! plus the Firecracker knobs we accept only at their "off" value (SMT, CPU
//! templates) so clients that send them explicitly keep working.

use serde::{Deserialize, Serialize};

use crate::arch::mptable;

/// Firecracker's defaults when no machine-config was given.
pub const DEFAULT_VCPU_COUNT: u8 = 1;
pub const DEFAULT_MEM_SIZE_MIB: u64 = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("vcpu_count must be at least 1")]
    NoVcpus,
    #[error("vcpu_count {0} is too large: at most {max} vCPUs are supported", max = mptable::MAX_CPUS)]
    TooManyVcpus(u8),
    #[error("mem_size_mib must be at least 1")]
    NoMemory,
    #[error("smt is not supported: vCPUs are single-threaded cores, leave smt false")]
    Smt,
    #[error("cpu_template {0:?} is not supported: this VMM exposes the host's CPUID, filtered")]
    CpuTemplate(CpuTemplate),
    #[error("huge_pages {0:?} is not supported: give \"2M\" (hugetlbfs) or \"None\" (anonymous memory, advised for transparent huge pages)")]
    HugePages(HugePages),
    #[error("empty PATCH request: give at least one machine-config field")]
    EmptyPatch,
    /// Firecracker's `IncompatibleBalloonSize`.
    #[error(
        "The memory size (MiB) is smaller than the previously set balloon device target size."
    )]
    IncompatibleBalloonSize,
}

/// Firecracker's static CPU templates. Only `None` is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    #[default]
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// The body of `PUT /machine-config` and what `GET /machine-config` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: DEFAULT_VCPU_COUNT,
            mem_size_mib: DEFAULT_MEM_SIZE_MIB,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// The body of `PATCH /machine-config`: only the fields given change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub cpu_template: Option<CpuTemplate>,
    pub track_dirty_pages: Option<bool>,
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

impl MachineConfig {
    /// The configuration `update` leads to, if it is one we can run.
    pub fn updated(&self, update: &MachineConfigUpdate) -> Result<MachineConfig, Error> {
        if update.is_empty() {
            return Err(Error::EmptyPatch);
        }
        let next = MachineConfig {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            cpu_template: update.cpu_template.or(self.cpu_template),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
        };
        next.validated()
    }

    /// Checks what can be judged from the values alone and normalises
    /// `cpu_template: "None"` to no template. Limits that depend on the host
    /// (its RAM) are checked with the rest of the VM's configuration.
    pub fn validated(mut self) -> Result<MachineConfig, Error> {
        if self.vcpu_count == 0 {
            return Err(Error::NoVcpus);
        }
        if self.vcpu_count > mptable::MAX_CPUS {
            return Err(Error::TooManyVcpus(self.vcpu_count));
        }
        if self.mem_size_mib == 0 {
            return Err(Error::NoMemory);
        }
        if self.smt {
            return Err(Error::Smt);
        }
        match self.cpu_template {
            None | Some(CpuTemplate::None) => self.cpu_template = None,
            Some(template) => return Err(Error::CpuTemplate(template)),
        }
        if self.huge_pages == HugePages::Transparent {
            return Err(Error::HugePages(self.huge_pages));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<MachineConfig, String> {
        serde_json::from_str::<MachineConfig>(json)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validated().map_err(|e| e.to_string()))
    }

    #[test]
    fn firecracker_bodies() {
        let c = parse(r#"{"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "track_dirty_pages": false, "cpu_template": "None", "huge_pages": "None"}"#).unwrap();
        assert_eq!(
            (c.vcpu_count, c.mem_size_mib, c.cpu_template),
            (2, 1024, None)
        );
        assert!(parse(r#"{"vcpu_count": 2}"#).is_err());
        assert!(parse(r#"{"vcpu_count": 2, "mem_size_mib": 1, "x": 1}"#)
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse(r#"{"vcpu_count": 0, "mem_size_mib": 1}"#)
            .unwrap_err()
            .contains("vcpu_count"));
        assert!(
            parse(r#"{"vcpu_count": 1, "mem_size_mib": 1, "smt": true}"#)
                .unwrap_err()
                .contains("smt")
        );
        assert!(
            parse(r#"{"vcpu_count": 1, "mem_size_mib": 1, "cpu_template": "T2"}"#)
                .unwrap_err()
                .contains("cpu_template")
        );
        assert!(parse(r#"{"vcpu_count": 300, "mem_size_mib": 1}"#).is_err());
        let huge = parse(r#"{"vcpu_count": 1, "mem_size_mib": 256, "huge_pages": "2M"}"#).unwrap();
        assert_eq!(huge.huge_pages, HugePages::Hugetlbfs2M);
        let tracked =
            parse(r#"{"vcpu_count": 1, "mem_size_mib": 256, "track_dirty_pages": true}"#).unwrap();
        assert!(tracked.track_dirty_pages);
        let update: MachineConfigUpdate =
            serde_json::from_str(r#"{"track_dirty_pages": true}"#).unwrap();
        assert!(
            MachineConfig::default()
                .updated(&update)
                .unwrap()
                .track_dirty_pages
        );
        assert!(
            parse(r#"{"vcpu_count": 1, "mem_size_mib": 256, "huge_pages": "Transparent"}"#)
                .unwrap_err()
                .contains("huge_pages")
        );
    }

    #[test]
    fn serialises_like_firecracker() {
        let json = serde_json::to_value(MachineConfig::default()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
                "track_dirty_pages": false, "huge_pages": "None"})
        );
    }

    #[test]
    fn patch_changes_only_given_fields() {
        let base = MachineConfig::default();
        let update: MachineConfigUpdate = serde_json::from_str(r#"{"vcpu_count": 4}"#).unwrap();
        let next = base.updated(&update).unwrap();
        assert_eq!((next.vcpu_count, next.mem_size_mib), (4, 128));
        assert_eq!(
            base.updated(&MachineConfigUpdate::default()),
            Err(Error::EmptyPatch)
        );
    }
}
