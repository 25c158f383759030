//! What Stratum's tests and benchmarks share, and nothing production code
//! may use: no crate depends on this one except as a dev-dependency, and
//! the benchmarks (`bench-agent`, `bench-pod`) and the CRI conformance run
//! (`conformance`) live here as its binaries.
//!
//! - [`agent_process`]: a real `node-agent` process with its own data dir,
//!   port and cgroup subtree, stopped and cleaned up on drop.
//! - [`test_agent`]: the same wrapped for the API tests: panics on
//!   failure, gRPC clients, `nodectl` against it, its cgroups.
//! - [`cleanup`]: an agent's cgroups removed from every hierarchy.
//! - [`containerd`]: a private containerd (the peer of `bench-pod` and
//!   `conformance`), stopped with its shims on drop.
//! - [`fixture`]: a throwaway `docker-registry` and a busybox OCI image.
//! - [`root`]: the one policy for tests that need root.
//! - [`bins`]: where the workspace's binaries are found.

// Test-only crate: a broken fixture or a failed setup panics the test that
// asked for it, which is the report a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent_process;
pub mod bins;
pub mod cleanup;
pub mod containerd;
pub mod cri;
pub mod fixture;
pub mod pod_agent;
pub mod root;
pub mod test_agent;
pub mod work_dir;
