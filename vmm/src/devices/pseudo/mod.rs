//! Devices with no hardware counterpart.

pub mod boot_timer;

pub use boot_timer::BootTimer;
