//! The node image (`make node-image`) as the nested host gets it.

use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// The node image (`make node-image`) as it goes into the nested host,
/// where it is too large for the initramfs: an ext4 volume made at `dest`
/// (sparse) holding the VM image's OCI layout `node.oci`, for
/// [`crate::Scenario::drive`]; the scenario mounts it read-only and
/// imports the layout.
pub fn node_image_volume(images_dir: &Path, dest: &Path) -> Result<()> {
    node_image_volume_with(images_dir, dest, &[], 1)
}

/// [`node_image_volume`] of `size_gib` GiB (sparse) with more directories
/// on it: `(src, name)` is copied to `/<name>` on the volume. Room beyond
/// the image is for what the nested host writes there (with
/// [`crate::Scenario::drive`], to a scratch overlay): an agent's data
/// directory on a disk rather than in its RAM.
pub fn node_image_volume_with(
    images_dir: &Path,
    dest: &Path,
    extra: &[(&Path, &str)],
    size_gib: u32,
) -> Result<()> {
    let files = [("node-image.oci", "node.oci")];
    let staging = tempfile::Builder::new()
        .prefix("stratum-node-volume-")
        .tempdir_in(dest.parent().unwrap_or(Path::new("/tmp")))
        .context(|| "making a staging directory".to_owned())?;
    for (image, name) in files {
        let src = images_dir.join(image);
        if !src.join("index.json").is_file() {
            return Err(Error::MissingInput {
                what: "node image layout",
                path: src,
                make_target: "node-image",
            });
        }
        let copied = std::process::Command::new("cp")
            .args(["-R", "-L"])
            .arg(&src)
            .arg(staging.path().join(name))
            .status()
            .context(|| "running cp".to_owned())?;
        if !copied.success() {
            return Err(Error::Tool(format!("cp {} failed", src.display())));
        }
    }
    for (src, name) in extra {
        let copied = std::process::Command::new("cp")
            .args(["-R", "-L"])
            .arg(src)
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
        .arg(format!("{size_gib}G"))
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
