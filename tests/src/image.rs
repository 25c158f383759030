//! Composition of the nested host's initramfs.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path};
use std::process::Command;

use crate::cpio::CpioWriter;
use crate::error::{Error, IoContext, Result};
use crate::scenario::{FileSource, Scenario};
use crate::Inputs;

/// Directory holding the KVM modules inside the host (see `host-init`).
pub const HOST_MODULE_DIR: &str = "/lib/modules/kvm";
/// Kernel modules in load order: KVM, TUN, vhost-vsock, virtio-blk over
/// virtio-pci, the bridge with br_netfilter and nftables with conntrack,
/// NAT and fib (the agent's networks) (see `host-init`).
pub const HOST_MODULES: [&str; 35] = [
    "irqbypass.ko",
    "kvm.ko",
    "kvm-amd.ko",
    "tun.ko",
    "vhost_iotlb.ko",
    "vhost.ko",
    "vsock.ko",
    "vmw_vsock_virtio_transport_common.ko",
    "vhost_vsock.ko",
    "virtio_ring.ko",
    "virtio.ko",
    "virtio_pci_legacy_dev.ko",
    "virtio_pci_modern_dev.ko",
    "virtio_pci.ko",
    "virtio_blk.ko",
    "llc.ko",
    "stp.ko",
    "bridge.ko",
    "br_netfilter.ko",
    "libcrc32c.ko",
    "nfnetlink.ko",
    "nf_tables.ko",
    "nf_defrag_ipv4.ko",
    "nf_defrag_ipv6.ko",
    "nf_conntrack.ko",
    "nf_nat.ko",
    "nft_ct.ko",
    "nft_chain_nat.ko",
    "nft_nat.ko",
    "nft_masq.ko",
    "nft_fib.ko",
    "nft_fib_ipv4.ko",
    "nft_fib_ipv6.ko",
    "nft_fib_inet.ko",
    "nft_meta_bridge.ko",
];

const BASE_DIRS: &[&str] = &[
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "dev",
    "proc",
    "sys",
    "tmp",
    "run",
    "etc",
    "root",
    "lib",
    "lib/modules",
    "lib/modules/kvm",
    "stratum",
    "stratum/bin",
    "stratum/guest",
];

/// The per-process-invariant part: busybox, init, KVM modules, vmm, guest images.
pub(crate) fn base_archive(inputs: &Inputs) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new();
    for dir in BASE_DIRS {
        w.dir(dir, 0o755);
    }
    w.file("bin/busybox", 0o755, &read(&inputs.busybox)?);
    for applet in busybox_applets(&inputs.busybox)? {
        w.symlink(&applet, "/bin/busybox");
    }
    w.file("init", 0o755, &read(&inputs.host_init)?);
    for (name, path) in HOST_MODULES.iter().zip(&inputs.host_modules) {
        w.file(&format!("lib/modules/kvm/{name}"), 0o644, &read(path)?);
    }
    w.file("stratum/bin/vmm", 0o755, &read(&inputs.vmm)?);
    w.file(
        "stratum/guest/vmlinux",
        0o644,
        &read(&inputs.guest_vmlinux)?,
    );
    w.file(
        "stratum/guest/bzImage",
        0o644,
        &read(&inputs.guest_bzimage)?,
    );
    let initramfs = read(&inputs.guest_initramfs)?;
    w.file("stratum/guest/initramfs.cpio.gz", 0o644, &initramfs);
    Ok(w.finish())
}

/// The per-scenario part, appended after the base archive.
pub(crate) fn scenario_archive(scenario: &Scenario) -> Result<Vec<u8>> {
    let mut w = CpioWriter::new();
    let mut dirs = BTreeSet::new();
    let mut files = Vec::new();
    for extra in scenario.files() {
        let rel = relative_dest(&extra.dest)?;
        // The kernel's unpacker does not create parent directories.
        let mut parent = Path::new(&rel).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        let (data, mode) = match &extra.source {
            FileSource::Path(path) => (read(path)?, file_mode(path)?),
            FileSource::Bytes { data, mode } => (data.clone(), *mode),
        };
        files.push((rel, data, mode));
    }
    // BTreeSet order puts parents before children.
    for dir in &dirs {
        w.dir(dir, 0o755);
    }
    for (rel, data, mode) in &files {
        w.file(rel, mode & 0o7777, data);
    }
    w.file("scenario.sh", 0o755, scenario.script().as_bytes());
    Ok(w.finish())
}

/// `/a/b` → `a/b`, rejecting paths that could escape or clobber the root.
fn relative_dest(dest: &str) -> Result<String> {
    let invalid = |reason| Error::InvalidDest {
        dest: dest.to_owned(),
        reason,
    };
    let path = Path::new(dest);
    if !path.is_absolute() {
        return Err(invalid("must be absolute"));
    }
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(p) => parts.push(p.to_str().ok_or(invalid("not UTF-8"))?),
            _ => return Err(invalid("must not contain `.` or `..`")),
        }
    }
    if parts.is_empty() {
        return Err(invalid("names no file"));
    }
    Ok(parts.join("/"))
}

/// Applet paths relative to the root, e.g. `bin/sh`, `sbin/insmod`.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .context(|| format!("running {} --list-full", busybox.display()))?;
    if !out.status.success() {
        return Err(Error::BusyboxList(out.status.to_string()));
    }
    let list = String::from_utf8_lossy(&out.stdout);
    Ok(list
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).context(|| format!("reading {}", path.display()))
}

fn file_mode(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).context(|| format!("stat {}", path.display()))?;
    Ok(meta.permissions().mode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_validation() {
        assert_eq!(relative_dest("/a/b").ok(), Some("a/b".to_owned()));
        assert!(relative_dest("a/b").is_err());
        assert!(relative_dest("/a/../b").is_err());
        assert!(relative_dest("/").is_err());
    }
}
