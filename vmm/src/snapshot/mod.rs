//! Snapshots of a running VM: its state file (vCPUs, the in-kernel
//! devices, our devices) in a versioned envelope ([`format`]), beside a
//! memory file holding guest RAM.

pub mod files;
pub mod format;
pub mod state;
