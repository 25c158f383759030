//! The VM's configuration as the Firecracker API and config file describe
//! it: one module per resource (`boot-source`, `machine-config`, `logger`,
//! `metrics`, the devices, the balloon, `mmds-config`, `serial`,
//! `cpu-config`), the set
//! of them before boot ([`resources::VmResources`]),
//! and the config-file format ([`config_file`]).
//!
//! These types are the wire format: field names, defaults and
//! `deny_unknown_fields` follow Firecracker's swagger so its clients work
//! unchanged. They turn into the builder's [`crate::VmConfig`] only at
//! InstanceStart.

pub mod balloon;
pub mod boot_source;
pub mod config_file;
pub mod cpu_config;
pub mod devices;
pub mod logger;
pub mod machine_config;
pub mod metrics;
pub mod mmds;
pub mod rate_limiter;
pub mod resources;
pub mod serial;
pub mod snapshot;
