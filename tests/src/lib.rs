//! Stratum's nested test host.
//!
//! The development machine's `/dev/kvm` cannot run real guests, so VM tests
//! run inside a *nested host*: QEMU (TCG) boots Debian's cloud kernel, which
//! loads the KVM modules and thereby provides a real `/dev/kvm`. Its
//! initramfs carries busybox, the static `vmm` binary, the guest images and a
//! per-[`Scenario`] `/scenario.sh`, whose exit status comes back in
//! [`Outcome`].
//!
//! Layout inside the nested host (see [`paths`]): `/stratum/bin/vmm`,
//! `/stratum/guest/{vmlinux,bzImage,initramfs.cpio.gz}`, KVM modules in
//! `/lib/modules/kvm`, a tmpfs on `/tmp`, cgroup2 on `/sys/fs/cgroup`.

pub mod bench;
mod cpio;
mod error;
pub mod etcd;
pub mod guest;
mod image;
mod node;
mod outcome;
mod qemu;
mod scenario;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub use error::{Error, Result};
pub use node::{node_image_volume, node_image_volume_with};
pub use outcome::Outcome;
pub use scenario::{
    Drive, ExtraFile, FileSource, Scenario, DEFAULT_FROZEN_AFTER, DEFAULT_HOST_CPUS,
    DEFAULT_MEMORY_MIB, DEFAULT_TIMEOUT,
};

/// Absolute paths of the composed files inside the nested host.
pub mod paths {
    pub const VMM: &str = "/stratum/bin/vmm";
    pub const GUEST_VMLINUX: &str = "/stratum/guest/vmlinux";
    pub const GUEST_BZIMAGE: &str = "/stratum/guest/bzImage";
    pub const GUEST_INITRAMFS: &str = "/stratum/guest/initramfs.cpio.gz";
    pub const SCENARIO: &str = "/scenario.sh";
    pub use crate::image::HOST_MODULE_DIR;
}

/// Every file the base initramfs is composed of, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Inputs {
    images_dir: PathBuf,
    host_vmlinuz: PathBuf,
    host_modules: Vec<PathBuf>,
    guest_vmlinux: PathBuf,
    guest_bzimage: PathBuf,
    guest_initramfs: PathBuf,
    busybox: PathBuf,
    host_init: PathBuf,
    vmm: PathBuf,
}

/// A bootable nested-host configuration. Cheap to clone; the base
/// initramfs is built once per process and input set.
#[derive(Debug, Clone)]
pub struct NestedHost {
    inputs: Inputs,
}

impl NestedHost {
    /// Uses `STRATUM_IMAGES` (default [`Self::default_images_dir`]) and
    /// `STRATUM_VMM` (default [`Self::default_vmm_path`]). Relative values
    /// are taken relative to the workspace root, like the image scripts do.
    pub fn from_env() -> Result<Self> {
        let root = Self::workspace_root();
        let images = std::env::var_os("STRATUM_IMAGES")
            .map(|v| root.join(v))
            .unwrap_or_else(Self::default_images_dir);
        let vmm = std::env::var_os("STRATUM_VMM")
            .map(|v| root.join(v))
            .unwrap_or_else(Self::default_vmm_path);
        Self::new(images, vmm)
    }

    /// Checks that every input exists; errors name the file and the make
    /// target that creates it.
    pub fn new(images_dir: impl Into<PathBuf>, vmm: impl Into<PathBuf>) -> Result<Self> {
        let dir: PathBuf = images_dir.into();
        let img = |name: &str| dir.join(name);
        let inputs = Inputs {
            host_vmlinuz: require(img("host-vmlinuz"), "nested host kernel", "images")?,
            host_modules: image::HOST_MODULES
                .iter()
                .map(|m| require(img("host-modules").join(m), "KVM module", "images"))
                .collect::<Result<_>>()?,
            guest_vmlinux: require(img("guest-vmlinux"), "guest kernel (ELF)", "images")?,
            guest_bzimage: require(img("guest-bzImage"), "guest kernel (bzImage)", "images")?,
            guest_initramfs: require(img("guest-initramfs.cpio.gz"), "guest initramfs", "images")?,
            busybox: require_static("/bin/busybox".into(), "busybox", "images")?,
            host_init: require(
                Self::workspace_root().join("guest-images/host-init"),
                "nested host init script",
                "images",
            )?,
            vmm: require_static(vmm.into(), "static vmm binary", "static")?,
            images_dir: dir,
        };
        Ok(Self { inputs })
    }

    /// The Cargo workspace root (parent of this crate's manifest dir).
    pub fn workspace_root() -> PathBuf {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        manifest.parent().unwrap_or(manifest).to_path_buf()
    }

    /// `<workspace>/build/images`, where `make images` puts its symlinks.
    pub fn default_images_dir() -> PathBuf {
        Self::workspace_root().join("build/images")
    }

    /// Where `make static` puts the statically linked vmm.
    pub fn default_vmm_path() -> PathBuf {
        Self::static_bin("vmm")
    }

    /// Where `make static` puts the statically linked binary `name`.
    pub fn static_bin(name: &str) -> PathBuf {
        Self::workspace_root()
            .join("target/static/x86_64-unknown-linux-gnu/release")
            .join(name)
    }

    /// A static tool for the nested host: the path in environment
    /// variable `variable` if set, else [`Self::static_bin`]`(name)`.
    pub fn static_tool(variable: &str, name: &str) -> PathBuf {
        std::env::var_os(variable)
            .map(PathBuf::from)
            .unwrap_or_else(|| Self::static_bin(name))
    }

    pub fn images_dir(&self) -> &Path {
        &self.inputs.images_dir
    }

    pub fn vmm_path(&self) -> &Path {
        &self.inputs.vmm
    }

    /// Boots the nested host, runs `scenario` and parses the console.
    ///
    /// Runs are serialized process-wide: one TCG QEMU already saturates the
    /// CPUs, and parallel ones only make timeouts likelier.
    pub fn run(&self, scenario: &Scenario) -> Result<Outcome> {
        static RUN_LOCK: Mutex<()> = Mutex::new(());
        let base = self.base_archive()?;
        let extra = image::scenario_archive(scenario)?;
        let _serial = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        match qemu::run(&self.inputs.host_vmlinuz, &base, &extra, scenario) {
            // The emulator's fault, not the scenario's: a fresh host runs
            // it once more, and says so. A second freeze is the error.
            Err(froze @ Error::HostFroze { .. }) => {
                // Straight to stderr, past the test harness's capture: a
                // freeze is worth seeing even when the second run passes.
                let _ = writeln!(
                    std::io::stderr(),
                    "stratum-tests: {froze}\nstratum-tests: running the scenario again on a fresh host"
                );
                qemu::run(&self.inputs.host_vmlinuz, &base, &extra, scenario)
            }
            other => other,
        }
    }

    fn base_archive(&self) -> Result<Arc<Vec<u8>>> {
        type Cache = Mutex<HashMap<Inputs, Arc<Vec<u8>>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        // Holding the lock while building keeps concurrent tests from
        // composing the same archive twice.
        let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(base) = map.get(&self.inputs) {
            return Ok(Arc::clone(base));
        }
        let base = Arc::new(image::base_archive(&self.inputs)?);
        map.insert(self.inputs.clone(), Arc::clone(&base));
        Ok(base)
    }
}

fn require(path: PathBuf, what: &'static str, make_target: &'static str) -> Result<PathBuf> {
    // `is_file` follows the symlinks in build/images, catching dangling ones.
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingInput {
            what,
            path,
            make_target,
        })
    }
}

/// Like [`require`], and the file must not need a dynamic loader: the
/// nested host has no libc.
fn require_static(path: PathBuf, what: &'static str, make_target: &'static str) -> Result<PathBuf> {
    let path = require(path, what, make_target)?;
    let head = read_head(&path, 64 * 1024)?;
    if elf_has_interp(&head) {
        let hint = if make_target == "static" {
            "build it with `make static`"
        } else {
            "install busybox-static"
        };
        return Err(Error::NotStatic { path, hint });
    }
    Ok(path)
}

fn read_head(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use error::IoContext;
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit).read_to_end(&mut buf))
        .context(|| format!("reading {}", path.display()))?;
    Ok(buf)
}

/// True if a 64-bit little-endian ELF has a PT_INTERP program header,
/// i.e. is dynamically linked. Non-ELF or truncated data counts as static.
fn elf_has_interp(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).any(|i| {
        i.checked_mul(usize::from(phentsize))
            .and_then(|o| o.checked_add(phoff))
            .and_then(u32_at)
            == Some(PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_dynamic_elf() {
        // /bin/sh on Debian is dynamically linked dash.
        let dynamic = read_head(Path::new("/bin/sh"), 64 * 1024).expect("read /bin/sh");
        assert!(elf_has_interp(&dynamic));
        assert!(!elf_has_interp(b"not an elf"));
    }

    #[test]
    fn missing_input_names_make_target() {
        let err = NestedHost::new("/nonexistent", "/nonexistent/vmm").expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/host-vmlinuz"), "{msg}");
        assert!(msg.contains("make images"), "{msg}");
    }
}
