//! The CPUID the guest sees: what KVM supports, with the topology rewritten
//! for this VM's vCPU count and the leaves a guest must not trust removed.
//!
//! Hardware virtualization (VMX, SVM) is not offered: a node VM runs pods
//! and etcd, not VMs of its own, and a guest hypervisor would drive the
//! host kernel's nested-virtualization code, a large attack surface for
//! nothing it needs. Without the bit a distro guest does not even load
//! kvm_intel or kvm_amd.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:ECX bit 31 tells the guest it runs under a hypervisor, which lets
/// Linux pick paravirtual clocks and skip work that only real hardware needs.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: more than one logical processor per package.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// CPUID.1:ECX bit 24: the LAPIC timer has TSC-deadline mode. KVM emulates
/// it but, as it depends on the in-kernel LAPIC, leaves announcing it to the
/// VMM. With it Linux skips calibrating the LAPIC timer, which costs a
/// guest close to a second when it runs on a slow or busy host.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.6:EAX bit 2: the APIC timer keeps running in deep C-states.
const LEAF6_EAX_ARAT: u32 = 1 << 2;
/// CPUID.1:ECX bit 5: Intel VMX.
const LEAF1_ECX_VMX: u32 = 1 << 5;
/// CPUID.80000001h:ECX bit 2: AMD SVM.
const EXT_LEAF1_ECX_SVM: u32 = 1 << 2;

/// Extended topology levels (leaf 0xB / 0x1F, ECX[15:8]).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Rewrites KVM's supported CPUID for vCPU `cpu_index` of `cpu_count`.
///
/// Every vCPU is one core of a single socket with one thread per core, so the
/// APIC ID equals the vCPU index, matching the MP table.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_index: u8, cpu_count: u8) {
    let core_bits = bits_for(u32::from(cpu_count));
    for entry in cpuid.as_mut_slice().iter_mut() {
        match entry.function {
            0x1 => {
                set_basic_topology(entry, cpu_index, cpu_count);
                entry.ecx &= !LEAF1_ECX_VMX;
            }
            0x4 => set_cache_topology(entry, cpu_count),
            // Thermal and power management: the guest cannot manage the
            // host's power states, only rely on an always-running timer.
            0x6 => {
                entry.eax &= LEAF6_EAX_ARAT;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            // Architectural performance monitoring is not set up for the guest.
            0xa => clear(entry),
            0xb | 0x1f => set_extended_topology(entry, cpu_index, cpu_count, core_bits),
            0x8000_0001 => entry.ecx &= !EXT_LEAF1_ECX_SVM,
            // AMD: SVM revision and features, meaningless without SVM.
            0x8000_000a => clear(entry),
            // AMD: number of cores in the package, minus one.
            0x8000_0008 => {
                entry.ecx = (entry.ecx & !0xf0ff) | (core_bits << 12) | (u32::from(cpu_count) - 1);
            }
            _ => {}
        }
    }
}

/// Announces the TSC-deadline timer the in-kernel LAPIC provides.
pub fn enable_tsc_deadline(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice().iter_mut() {
        if entry.function == 0x1 {
            entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
        }
    }
}

fn clear(entry: &mut kvm_cpuid_entry2) {
    entry.eax = 0;
    entry.ebx = 0;
    entry.ecx = 0;
    entry.edx = 0;
}

fn set_basic_topology(entry: &mut kvm_cpuid_entry2, cpu_index: u8, cpu_count: u8) {
    // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package,
    // EBX[15:8] CLFLUSH line size in quadwords (kept from the host).
    entry.ebx = (u32::from(cpu_index) << 24) | (u32::from(cpu_count) << 16) | (entry.ebx & 0xffff);
    entry.ecx |= LEAF1_ECX_HYPERVISOR;
    if cpu_count > 1 {
        entry.edx |= LEAF1_EDX_HTT;
    } else {
        entry.edx &= !LEAF1_EDX_HTT;
    }
}

fn set_cache_topology(entry: &mut kvm_cpuid_entry2, cpu_count: u8) {
    // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this
    // cache - 1. Caches above L2 are shared by the package, L1/L2 per core.
    let cache_level = (entry.eax >> 5) & 0x7;
    if entry.eax & 0x1f == 0 {
        return; // no more caches
    }
    let sharing = if cache_level >= 3 {
        u32::from(cpu_count) - 1
    } else {
        0
    };
    entry.eax =
        (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14) | ((u32::from(cpu_count) - 1) << 26);
}

fn set_extended_topology(
    entry: &mut kvm_cpuid_entry2,
    cpu_index: u8,
    cpu_count: u8,
    core_bits: u32,
) {
    entry.edx = u32::from(cpu_index);
    match entry.index {
        0 => {
            entry.eax = 0;
            entry.ebx = 1;
            entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
        }
        1 => {
            entry.eax = core_bits;
            entry.ebx = u32::from(cpu_count);
            entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
        }
        _ => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = entry.index;
        }
    }
}

/// Number of APIC ID bits needed to number `count` cores.
fn bits_for(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0000_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                eax: (3 << 5) | 3,
                ..Default::default()
            },
            entry(6, 0),
            entry(0xa, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            entry(0x8000_0001, 0),
            entry(0x8000_000a, 0),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn basic_leaf_carries_apic_id_count_and_hypervisor_bit() {
        let mut cpuid = sample();
        filter_cpuid(&mut cpuid, 3, 4);
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
        assert_eq!(leaf1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(leaf1.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut cpuid = sample();
        filter_cpuid(&mut cpuid, 0, 1);
        assert_eq!(find(&cpuid, 1, 0).edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&cpuid, 0xb, 1).ebx, 1);
    }

    #[test]
    fn extended_topology_describes_one_socket_of_single_thread_cores() {
        let mut cpuid = sample();
        filter_cpuid(&mut cpuid, 2, 6);
        let smt = find(&cpuid, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&cpuid, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 2));
        let end = find(&cpuid, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx >> 8), (0, 0, 0));
    }

    #[test]
    fn power_and_pmu_leaves_are_hidden() {
        let mut cpuid = sample();
        filter_cpuid(&mut cpuid, 0, 2);
        let leaf6 = find(&cpuid, 6, 0);
        assert_eq!(
            (leaf6.eax, leaf6.ebx, leaf6.ecx, leaf6.edx),
            (LEAF6_EAX_ARAT, 0, 0, 0)
        );
        let leafa = find(&cpuid, 0xa, 0);
        assert_eq!((leafa.eax, leafa.ebx, leafa.ecx, leafa.edx), (0, 0, 0, 0));
    }

    #[test]
    fn hardware_virtualization_is_not_offered() {
        let mut cpuid = sample();
        find_mut(&mut cpuid, 1).ecx = u32::MAX;
        filter_cpuid(&mut cpuid, 0, 2);
        assert_eq!(find(&cpuid, 1, 0).ecx & LEAF1_ECX_VMX, 0);
        let ext = find(&cpuid, 0x8000_0001, 0);
        assert_eq!(ext.ecx & EXT_LEAF1_ECX_SVM, 0);
        assert_eq!(ext.ecx | EXT_LEAF1_ECX_SVM, u32::MAX, "other bits kept");
        let svm = find(&cpuid, 0x8000_000a, 0);
        assert_eq!((svm.eax, svm.ebx, svm.ecx, svm.edx), (0, 0, 0, 0));
    }

    fn find_mut(cpuid: &mut CpuId, function: u32) -> &mut kvm_cpuid_entry2 {
        cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == function)
            .unwrap()
    }

    #[test]
    fn cache_leaf_reports_core_count() {
        let mut cpuid = sample();
        filter_cpuid(&mut cpuid, 0, 4);
        let leaf4 = find(&cpuid, 4, 0);
        assert_eq!(leaf4.eax >> 26, 3);
        assert_eq!((leaf4.eax >> 14) & 0xfff, 3, "L3 shared by all cores");
    }

    #[test]
    fn tsc_deadline_is_announced_on_request() {
        let mut cpuid = sample();
        assert_eq!(find(&cpuid, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        enable_tsc_deadline(&mut cpuid);
        assert_ne!(find(&cpuid, 1, 0).ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn apic_id_bits() {
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(3), 2);
        assert_eq!(bits_for(4), 2);
        assert_eq!(bits_for(254), 8);
    }
}
