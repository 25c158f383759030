//! The node image (`make node-image`) as the nested host gets it.

use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// The node image's files (`make node-image`) as they go into the nested
/// host, where they are too large for the initramfs: an ext4 volume made
/// at `dest` (sparse) holding `vmlinuz`, `initrd.img`, `rootfs.raw` and
/// `cmdline`, for [`Scenario::drive`]; the scenario mounts it read-only.
pub fn node_image_volume(images_dir: &Path, dest: &Path) -> Result<()> {
    let files = [
        ("node-vmlinuz", "vmlinuz"),
        ("node-initrd.img", "initrd.img"),
        ("node-rootfs.raw", "rootfs.raw"),
        ("node-cmdline", "cmdline"),
    ];
    let staging = tempfile::Builder::new()
        .prefix("stratum-node-volume-")
        .tempdir_in(dest.parent().unwrap_or(Path::new("/tmp")))
        .context(|| "making a staging directory".to_owned())?;
    for (image, name) in files {
        let src = crate::require(images_dir.join(image), "node image file", "node-image")?;
        // The disk image is sparse: copy its data, not its holes.
        let copied = std::process::Command::new("cp")
            .args(["--sparse=always", "--reflink=auto", "-L"])
            .arg(&src)
            .arg(staging.path().join(name))
            .status()
            .context(|| "running cp".to_owned())?;
        if !copied.success() {
            return Err(Error::Tool(format!("cp {} failed", src.display())));
        }
    }
    let made = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "stratum-node", "-d"])
        .arg(staging.path())
        .arg(dest)
        .arg("3G")
        .status()
        .context(|| "running mkfs.ext4".to_owned())?;
    if !made.success() {
        return Err(Error::Tool(format!(
            "mkfs.ext4 of {} failed",
            dest.display()
        )));
    }
    Ok(())
}
