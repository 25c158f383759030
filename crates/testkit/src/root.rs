//! Tests that need root (cgroups, network namespaces, mounts, an OCI
//! runtime) call [`require_root`] first. Without root such a test fails,
//! naming what it needed: a test that passes without having run would
//! report a success nobody measured.

/// Panics with a clear message unless the process runs as root.
/// `needs` says what the test does with it ("cgroups", "a pod network").
pub fn require_root(needs: &str) {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root for {needs} and runs as uid {euid}: run it as root \
         (`sudo -E cargo test`), or leave it out with `--skip`"
    );
}

/// Whether the process runs as root, for benchmarks that say so
/// themselves.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
