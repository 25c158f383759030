//! Stratum node agent: resource pools with vSphere semantics enforced by
//! cgroups, VM lifecycle over `vmm` processes, durable state, and the
//! gRPC API a Supervisor drives.

pub mod agent;
pub mod api;
pub mod cgroup;
pub mod image;
pub mod nodectl;
pub mod podnet;
pub mod pool;
pub mod proto;
pub mod runtime;
pub mod state;
pub mod tls;
pub mod vm;
