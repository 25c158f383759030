//! What a snapshot's state file holds: everything of a paused VM that is
//! not guest memory, in the structures its parts save and restore
//! themselves with.

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::devices::legacy::i8042::I8042State;
use crate::devices::legacy::serial::SerialConsoleState;
use crate::devices::virtio::mmio::MmioTransportState;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

/// A paused VM, but for its memory (which is in the memory file, at the
/// offsets [`MemoryRegion`] gives).
#[derive(Serialize, Deserialize)]
pub struct MicrovmState {
    /// What the VM was built with, MAC addresses as the guest knows them.
    /// A restore takes the devices from it; where the console goes and the
    /// KVM device come from the restoring vmm's own flags.
    pub config: VmConfig,
    pub memory: Vec<MemoryRegion>,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialConsoleState,
    pub i8042: I8042State,
    /// In the order the devices sit on the MMIO bus.
    pub virtio: Vec<VirtioDeviceState>,
}

/// One range of guest RAM and where it is in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    pub guest_base: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// A virtio device's place and its transport's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    /// The drive or interface id, `vsock` or `entropy`.
    pub id: String,
    pub base: u64,
    pub irq: u32,
    pub transport: MmioTransportState,
}
