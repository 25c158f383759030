//! Model-specific registers every vCPU starts with.

use kvm_bindings::{kvm_msr_entry, Msrs};

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back: without it a guest that
/// reads the MTRRs would map all of RAM uncached.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The MSR values of a freshly reset vCPU that KVM does not set itself.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        // All vCPUs start their TSC at zero together, so they agree.
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

/// The boot MSRs as the FAM wrapper `KVM_SET_MSRS` takes. The list is a
/// small constant, far below `KVM_MAX_MSR_ENTRIES`; the wrapper's size
/// check is passed on rather than assumed.
pub fn boot_msrs() -> Result<Msrs, vmm_sys_util::fam::Error> {
    Msrs::from_entries(&boot_msr_entries())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_writeback_mtrrs_and_zero_the_tsc() {
        let msrs = boot_msrs().unwrap();
        let find = |index| {
            msrs.as_slice()
                .iter()
                .find(|e| e.index == index)
                .map(|e| e.data)
        };
        assert_eq!(find(MSR_MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(find(MSR_IA32_TSC), Some(0));
        assert_eq!(find(MSR_IA32_MISC_ENABLE), Some(1));
    }
}
