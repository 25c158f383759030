//! What the host is: CPUs, memory, KVM, cgroup version, versions.

use std::path::Path;

use stratum_api::proto;
use stratum_cgroup::CgroupVersion;
use stratum_pool::{Resources, MILLICORES_PER_CPU};

/// The host's capacity: every online CPU and all physical memory.
pub fn capacity() -> Resources {
    Resources::new(online_cpus() * MILLICORES_PER_CPU, physical_memory_bytes())
}

fn online_cpus() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

fn physical_memory_bytes() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    u64::try_from(pages)
        .unwrap_or(0)
        .saturating_mul(u64::try_from(page_size).unwrap_or(0))
}

/// Whether /dev/kvm exists, and whether it can run unmodified guests: that
/// needs hardware virtualisation (vmx/svm in the CPU flags). A /dev/kvm
/// without it is a paravirtual backend such as PVM, where an unmodified
/// Linux guest dies at its first `int3`.
pub fn kvm_info() -> proto::KvmInfo {
    let present = Path::new("/dev/kvm").exists();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hardware = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let detail = match (present, hardware) {
        (false, _) => "no /dev/kvm",
        (true, true) => "hardware virtualisation (vmx/svm)",
        (true, false) => {
            "/dev/kvm without vmx/svm: a paravirtual backend (e.g. PVM) that cannot run unmodified guests"
        }
    };
    proto::KvmInfo {
        present,
        unmodified_guests: present && hardware,
        detail: detail.to_string(),
    }
}

pub fn info(cgroup: CgroupVersion, vmm_version: String) -> proto::HostInfo {
    let total = capacity();
    proto::HostInfo {
        hostname: hostname(),
        cpus: u32::try_from(online_cpus()).unwrap_or(u32::MAX),
        memory_bytes: total.memory_bytes,
        kvm: Some(kvm_info()),
        cgroup_version: match cgroup {
            CgroupVersion::V1 => proto::CgroupVersion::V1,
            CgroupVersion::V2 => proto::CgroupVersion::V2,
        } as i32,
        versions: Some(proto::Versions {
            agent: env!("CARGO_PKG_VERSION").to_string(),
            vmm: vmm_version,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            api: "stratum.v1".to_string(),
        }),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}
