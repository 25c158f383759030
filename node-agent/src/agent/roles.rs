//! The role templates: what a VM of each role gets where its spec says
//! nothing, as a vSphere VM class gives a VM its size.
//!
//! Defaults are filled in at create, so the stored spec (and `nodectl vm
//! get`) shows what the VM really has. The CPU reservation is the one
//! default left to the pool model (`stratum_pool::Role`), which also caps
//! it at one core per vCPU.
//!
//! | role | vCPUs | memory | CPU reservation | CPU shares | root disk |
//! |---|---|---|---|---|---|
//! | etcd | 2 | 2 GiB | 1000m | high | 10 GiB |
//! | control-plane | 2 | 4 GiB | 1000m | high | 20 GiB |
//! | worker | 2 | 4 GiB | 250m | normal | 40 GiB |
//!
//! The root disk size applies to a VM made from an image (its disk is
//! grown, sparse, when smaller).
//!
//! etcd and the control plane are what a cluster cannot lose time on: a
//! core reserved and high shares, so a busy worker on the same host does
//! not slow a leader's heartbeat. Workers are many and bursty: a quarter
//! core reserved, normal shares, the rest borrowed.

use stratum_api::proto;
use stratum_api::proto::{SharesLevel, VmRole};

/// What a role's VM gets by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleTemplate {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub cpu_shares: SharesLevel,
    pub root_disk_mib: u64,
}

/// The template of `role`; none for UNSPECIFIED (which create refuses).
pub fn template(role: VmRole) -> Option<RoleTemplate> {
    const GIB: u64 = 1024;
    let (vcpus, memory_mib, cpu_shares, root_disk_mib) = match role {
        VmRole::Etcd => (2, 2 * GIB, SharesLevel::High, 10 * GIB),
        VmRole::ControlPlane => (2, 4 * GIB, SharesLevel::High, 20 * GIB),
        VmRole::Worker => (2, 4 * GIB, SharesLevel::Normal, 40 * GIB),
        VmRole::Unspecified => return None,
    };
    Some(RoleTemplate {
        vcpus,
        memory_mib,
        cpu_shares,
        root_disk_mib,
    })
}

/// Fills what `spec` leaves unset (0 vCPUs, 0 MiB, no shares) from its
/// role's template.
pub fn apply_defaults(spec: &mut proto::VmSpec) {
    let Some(template) = template(spec.role()) else {
        return;
    };
    if spec.vcpus == 0 {
        spec.vcpus = template.vcpus;
    }
    if spec.memory_mib == 0 {
        spec.memory_mib = template.memory_mib;
    }
    if spec.cpu_shares.is_none() {
        spec.cpu_shares = Some(proto::Shares {
            level: template.cpu_shares as i32,
            custom: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_fields_take_the_roles_values_and_set_ones_stay() {
        let mut etcd = proto::VmSpec {
            role: VmRole::Etcd as i32,
            ..Default::default()
        };
        apply_defaults(&mut etcd);
        assert_eq!((etcd.vcpus, etcd.memory_mib), (2, 2048));
        assert_eq!(etcd.cpu_shares.unwrap().level(), SharesLevel::High);

        let mut worker = proto::VmSpec {
            role: VmRole::Worker as i32,
            vcpus: 8,
            memory_mib: 512,
            cpu_shares: Some(proto::Shares {
                level: SharesLevel::Low as i32,
                custom: 0,
            }),
            ..Default::default()
        };
        apply_defaults(&mut worker);
        assert_eq!((worker.vcpus, worker.memory_mib), (8, 512));
        assert_eq!(worker.cpu_shares.unwrap().level(), SharesLevel::Low);

        let mut none = proto::VmSpec::default();
        apply_defaults(&mut none);
        assert_eq!(none.vcpus, 0, "no role, no template: create refuses it");
    }
}
