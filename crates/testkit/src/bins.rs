//! The workspace's binaries as the tests and benchmarks run them. A test
//! of one crate that drives another crate's binary (an agent test using
//! `nodectl`, say) finds it here, in the same cargo target directory as
//! the test itself; `cargo test --workspace` builds every binary first.

use std::path::PathBuf;

/// `name` in the profile directory of the running test or benchmark
/// (`target/debug` beside `target/debug/deps/<test>`), or an
/// environment override `STRATUM_BIN_<NAME>` (upper case, `-` as `_`).
/// Panics, naming the cargo command that builds it, when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let var = format!("STRATUM_BIN_{}", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the running test's path");
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --workspace` (or set {var})",
        path.display()
    );
    path
}

/// `name` in the workspace's static release build (`make static`:
/// `target/static/x86_64-unknown-linux-gnu/release`), found from the
/// running test's cargo target directory.
pub fn static_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    let target = exe
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|n| n == "target"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target
        .join("static/x86_64-unknown-linux-gnu/release")
        .join(name)
}
