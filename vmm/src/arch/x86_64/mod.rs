//! x86_64: memory layout, boot structures and initial vCPU state.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
