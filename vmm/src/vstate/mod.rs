//! KVM state of the VM: guest memory, the VM file descriptor with its
//! in-kernel interrupt controllers, and the vCPUs.

pub mod control;
pub mod memory;
pub mod vcpu;
pub mod vm;
