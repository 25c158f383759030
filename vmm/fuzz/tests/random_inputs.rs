//! Runs every fuzz harness over seeded random inputs (and over the inputs
//! saved in corpus/<target>/ and artifacts/<target>/, if any) on stable
//! Rust, so the targets execute in CI without libFuzzer.
//!
//!   STRATUM_FUZZ_ITERS=20000 STRATUM_FUZZ_SEED=7 cargo test --release \
//!       --manifest-path vmm/fuzz/Cargo.toml
//!
//! A panic (also one in a device worker thread) prints the input's path or
//! hex bytes and saves it as artifacts/<target>/crash-random-<seed>-<i>,
//! which `cargo fuzz run <target> <file>` replays.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use stratum_fuzz::TARGETS;

/// Inputs per target, by default.
const DEFAULT_ITERS: u64 = 2000;

/// The input being run, for the panic hook.
static CURRENT: Mutex<Option<(String, Vec<u8>)>> = Mutex::new(None);

thread_local! {
    static RNG_STATE: RefCell<u64> = const { RefCell::new(0) };
}

fn next_u64() -> u64 {
    // splitmix64
    RNG_STATE.with(|s| {
        let mut s = s.borrow_mut();
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn random_input() -> Vec<u8> {
    // Mostly short inputs (what libFuzzer starts from), some up to 4 KiB.
    let len = match next_u64() % 4 {
        0 => next_u64() % 4096,
        _ => next_u64() % 512,
    } as usize;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let word = next_u64();
        // Small values decode to the common enum variants and lengths.
        let word = if next_u64().is_multiple_of(3) {
            word & 0x0303_0303_0303_0303
        } else {
            word
        };
        bytes.extend_from_slice(&word.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            if let Ok(current) = CURRENT.try_lock() {
                if let Some((name, bytes)) = current.as_ref() {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    eprintln!("failing input {name} ({} bytes): {hex}", bytes.len());
                }
            }
            // A panic in a device worker thread would otherwise go
            // unnoticed (the worker's join result is ignored); libFuzzer
            // aborts too.
            std::process::abort();
        }));
    });
}

fn run_one(target: &str, harness: fn(&[u8]), name: String, bytes: Vec<u8>) {
    *CURRENT.lock().unwrap() = Some((name.clone(), bytes.clone()));
    if name.starts_with("crash-random") {
        // Save it first: the hook aborts the process.
        let dir = fuzz_dir().join("artifacts").join(target);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(&name), &bytes);
    }
    harness(&bytes);
    if name.starts_with("crash-random") {
        let _ = std::fs::remove_file(fuzz_dir().join("artifacts").join(target).join(&name));
    }
}

fn run_target(target: &str) {
    install_panic_hook();
    let harness = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target")
        .1;
    // Saved inputs first: regressions from earlier fuzzing runs.
    for dir in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(bytes) = std::fs::read(&path) {
                run_one(target, harness, path.display().to_string(), bytes);
            }
        }
    }
    let seed = env_u64("STRATUM_FUZZ_SEED", 0x5742_4154);
    let iters = env_u64("STRATUM_FUZZ_ITERS", DEFAULT_ITERS);
    // Each target its own stream, so one can be rerun alone.
    let stream = target
        .bytes()
        .fold(seed, |h, b| h.rotate_left(5) ^ u64::from(b));
    RNG_STATE.with(|s| *s.borrow_mut() = stream);
    let save = std::env::var_os("STRATUM_FUZZ_SAVE").is_some();
    for i in 0..iters {
        let bytes = random_input();
        let name = if save {
            format!("crash-random-{seed}-{i}")
        } else {
            format!("{target} random seed {seed} #{i}")
        };
        run_one(target, harness, name, bytes);
    }
    let (decoded, completed) = stratum_fuzz::counters();
    eprintln!("{target}: {iters} random inputs, {decoded} decoded, {completed} requests completed");
    assert!(decoded >= iters / 2, "most inputs decode");
    assert!(
        target == "virtio_mmio" || completed > 0,
        "the device completed requests"
    );
}

#[test]
fn virtio_rng() {
    run_target("virtio_rng");
}

#[test]
fn virtio_balloon() {
    run_target("virtio_balloon");
}

#[test]
fn virtio_block() {
    run_target("virtio_block");
}

#[test]
fn virtio_net_tx() {
    run_target("virtio_net_tx");
}

#[test]
fn virtio_net_rx() {
    run_target("virtio_net_rx");
}

#[test]
fn virtio_mmio() {
    run_target("virtio_mmio");
}

#[test]
fn virtio_vsock() {
    run_target("virtio_vsock");
}

#[test]
fn guest_protocol() {
    run_target("guest_protocol");
}

#[test]
fn mmds() {
    run_target("mmds");
}
