//! A container's root file system: an overlayfs over the image's unpacked
//! layers, or a plain directory (tests, pre-built roots).
//!
//! Why overlayfs: layers are unpacked once into the shared image store and
//! must never change (other containers use them), so each container gets
//! an upper (its writes) and a work directory of its own, stacked over the
//! read-only layers with `mount(2)`. Nothing is copied; starting a
//! container costs one mount.
//!
//! Layout in the container's directory: `rootfs/` (the mount point, the
//! spec's `root.path`), `upper/`, `work/`. The mount is made in the host's
//! mount namespace and outlives the agent, so an agent restart finds it in
//! place ([`Rootfs::adopt`]); [`Rootfs::remove`] unmounts and deletes the
//! container's writable layer.
//!
//! Overlay options are a comma- and colon-separated string limited to one
//! page; layer paths containing `,` `:` or `\` are refused rather than
//! escaped, and too many layers for one page is an error (the image store
//! names layers by digest, so neither happens in practice).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::error::{Result, RuntimeError};
use super::idmap::{self, IdMap};
use super::mountinfo;

/// Longest overlay option string the kernel accepts (one page).
pub const MAX_OVERLAY_OPTIONS: usize = 4095;

/// Where a container's root comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// The image's unpacked layer directories, top layer first.
    Layers(Vec<PathBuf>),
    /// A ready directory used as is (its contents are not protected).
    Directory(PathBuf),
}

/// A mounted (or plain) root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    path: PathBuf,
    overlay: Option<OverlayDirs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OverlayDirs {
    upper: PathBuf,
    work: PathBuf,
    /// Mount points of the idmapped layers (`lower/<n>`), when the
    /// container has a user namespace.
    lower: PathBuf,
}

impl Rootfs {
    /// Prepares the root described by `source` for the container whose
    /// directory is `container_dir`; with `idmap`, for a container in a
    /// user namespace of that mapping ([`crate::idmap`]).
    pub fn prepare(
        source: &RootfsSource,
        container_dir: &Path,
        idmap: Option<IdMap>,
    ) -> Result<Rootfs> {
        match (source, idmap) {
            (RootfsSource::Layers(layers), None) => Rootfs::overlay(layers, container_dir),
            (RootfsSource::Layers(layers), Some(map)) => {
                Rootfs::overlay_idmapped(layers, container_dir, map)
            }
            (RootfsSource::Directory(dir), _) => Rootfs::directory(dir),
        }
    }

    /// [`Rootfs::overlay`] for a container whose ids `map` shifts: each
    /// layer is mounted idmapped at `lower/<n>` (host root shows as the
    /// container's root), the overlay stacks those, and the upper and work
    /// directories belong to the container's root. On failure whatever was
    /// mounted is undone.
    pub fn overlay_idmapped(
        layers: &[PathBuf],
        container_dir: &Path,
        map: IdMap,
    ) -> Result<Rootfs> {
        let rootfs = Rootfs::overlay_at(container_dir);
        let Some(dirs) = rootfs.overlay.as_ref() else {
            return Err(RuntimeError::invalid(
                "rootfs",
                rootfs.path.to_string_lossy(),
                "not an overlay",
            ));
        };
        let made = (|| {
            let userns = idmap::user_namespace(map)?;
            let mut lowers = Vec::with_capacity(layers.len());
            for (i, layer) in layers.iter().enumerate() {
                let target = dirs.lower.join(i.to_string());
                fs::create_dir_all(&target)
                    .map_err(RuntimeError::io(&target, "create directory"))?;
                idmap::bind_idmapped(layer, &target, std::os::fd::AsFd::as_fd(&userns))?;
                lowers.push(target);
            }
            for dir in [&dirs.upper, &dirs.work] {
                fs::create_dir_all(dir).map_err(RuntimeError::io(dir, "create directory"))?;
                std::os::unix::fs::chown(dir, Some(map.host), Some(map.host))
                    .map_err(RuntimeError::io(dir, "chown"))?;
            }
            Rootfs::overlay(&lowers, container_dir)
        })();
        if made.is_err() {
            let _ = rootfs.remove();
        }
        made
    }

    /// Mounts an overlay of `layers` (top first) at `container_dir/rootfs`
    /// with `upper/` and `work/` beside it. Fails if it is already mounted.
    pub fn overlay(layers: &[PathBuf], container_dir: &Path) -> Result<Rootfs> {
        let rootfs = Rootfs::overlay_at(container_dir);
        let (path, dirs) = (&rootfs.path, rootfs.overlay.as_ref());
        let Some(dirs) = dirs else {
            return Err(RuntimeError::invalid(
                "rootfs",
                path.to_string_lossy(),
                "not an overlay",
            ));
        };
        let options = overlay_options(layers, &dirs.upper, &dirs.work)?;
        for dir in [path, &dirs.upper, &dirs.work] {
            fs::create_dir_all(dir).map_err(RuntimeError::io(dir, "create directory"))?;
        }
        if mountinfo::is_mount_point(path)? {
            return Err(RuntimeError::invalid(
                "rootfs",
                path.to_string_lossy(),
                "already mounted",
            ));
        }
        mount_overlay(path, &options)?;
        Ok(rootfs)
    }

    /// Uses `dir` itself as the root: no mount, nothing removed later.
    pub fn directory(dir: &Path) -> Result<Rootfs> {
        if !dir.is_dir() {
            return Err(RuntimeError::invalid(
                "rootfs directory",
                dir.to_string_lossy(),
                "not a directory",
            ));
        }
        Ok(Rootfs {
            path: dir.to_path_buf(),
            overlay: None,
        })
    }

    /// The overlay of `container_dir` as left by an earlier agent, mounted
    /// or not; [`Rootfs::is_mounted`] tells.
    pub fn adopt(container_dir: &Path) -> Rootfs {
        Rootfs::overlay_at(container_dir)
    }

    fn overlay_at(container_dir: &Path) -> Rootfs {
        Rootfs {
            path: container_dir.join("rootfs"),
            overlay: Some(OverlayDirs {
                upper: container_dir.join("upper"),
                work: container_dir.join("work"),
                lower: container_dir.join("lower"),
            }),
        }
    }

    /// The root directory (the OCI spec's `root.path`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this is an overlay (as opposed to a plain directory).
    pub fn is_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    /// The container's writable layer (overlay only).
    pub fn upper_dir(&self) -> Option<&Path> {
        self.overlay.as_ref().map(|o| o.upper.as_path())
    }

    /// Whether the overlay is mounted (a plain directory always "is").
    pub fn is_mounted(&self) -> Result<bool> {
        match self.overlay {
            None => Ok(true),
            Some(_) => mountinfo::is_mount_point(&self.path),
        }
    }

    /// Unmounts the overlay and deletes the mount point and the writable
    /// layer. A plain directory is left alone. Idempotent.
    pub fn remove(&self) -> Result<()> {
        let Some(dirs) = &self.overlay else {
            return Ok(());
        };
        if mountinfo::is_mount_point(&self.path)? {
            unmount(&self.path)?;
        }
        // The idmapped layers, once nothing stacks on them. Their mount
        // points are removed with `remove_dir`, never recursively: one
        // still mounted shows the shared layer, which must not be touched.
        if let Ok(entries) = fs::read_dir(&dirs.lower) {
            for entry in entries.flatten() {
                let mount = entry.path();
                if mountinfo::is_mount_point(&mount)? {
                    unmount(&mount)?;
                }
                fs::remove_dir(&mount).map_err(RuntimeError::io(&mount, "remove"))?;
            }
        }
        match fs::remove_dir(&dirs.lower) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io(&dirs.lower, "remove")(e)),
        }
        for dir in [&self.path, &dirs.upper, &dirs.work] {
            match fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(RuntimeError::io(dir, "remove")(e)),
            }
        }
        Ok(())
    }
}

/// `lowerdir=top:...:bottom,upperdir=...,workdir=...`, checked.
fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> Result<String> {
    if layers.is_empty() {
        return Err(RuntimeError::invalid(
            "layer list",
            "",
            "an image needs at least one layer",
        ));
    }
    for dir in layers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let text = dir.to_str().ok_or_else(|| {
            RuntimeError::invalid("overlay directory", dir.to_string_lossy(), "not UTF-8")
        })?;
        if !dir.is_absolute() {
            return Err(RuntimeError::invalid(
                "overlay directory",
                text,
                "not absolute",
            ));
        }
        if text.contains([',', ':', '\\']) {
            return Err(RuntimeError::invalid(
                "overlay directory",
                text,
                "contains ',', ':' or '\\'",
            ));
        }
    }
    for layer in layers {
        if !layer.is_dir() {
            return Err(RuntimeError::invalid(
                "layer directory",
                layer.to_string_lossy(),
                "does not exist",
            ));
        }
    }
    let lower: Vec<&str> = layers.iter().filter_map(|l| l.to_str()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.to_string_lossy(),
        work.to_string_lossy()
    );
    if options.len() > MAX_OVERLAY_OPTIONS {
        return Err(RuntimeError::invalid(
            "layer list",
            format!("{} layers", layers.len()),
            "overlay options exceed one page",
        ));
    }
    Ok(options)
}

fn cstring(value: &[u8], what: &'static str) -> Result<CString> {
    CString::new(value)
        .map_err(|_| RuntimeError::invalid(what, String::from_utf8_lossy(value), "contains NUL"))
}

pub(crate) fn mount_overlay(target: &Path, options: &str) -> Result<()> {
    let source = cstring(b"overlay", "mount source")?;
    let target_c = cstring(target.as_os_str().as_bytes(), "mount target")?;
    let data = cstring(options.as_bytes(), "overlay options")?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the
    // call; the kernel copies them.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            source.as_ptr(),
            libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(RuntimeError::io(target, "mount overlay")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Unmounts `target`; if it is busy (a straggler still has a file open),
/// detaches it so it goes away when the last user does.
pub(crate) fn unmount(target: &Path) -> Result<()> {
    let target_c = cstring(target.as_os_str().as_bytes(), "mount target")?;
    // SAFETY: a NUL-terminated path and flags.
    let rc = unsafe { libc::umount2(target_c.as_ptr(), 0) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EBUSY) {
        return Err(RuntimeError::io(target, "unmount")(err));
    }
    // SAFETY: as above.
    let rc = unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(RuntimeError::io(target, "detach mount")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_rootfs_overlay_options_order_and_checks() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let top = tmp.path().join("top");
        let base = tmp.path().join("base");
        fs::create_dir(&top).expect("mkdir");
        fs::create_dir(&base).expect("mkdir");
        let upper = tmp.path().join("upper");
        let work = tmp.path().join("work");
        let options =
            overlay_options(&[top.clone(), base.clone()], &upper, &work).expect("options");
        assert_eq!(
            options,
            format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                top.display(),
                base.display(),
                upper.display(),
                work.display()
            )
        );
        assert!(overlay_options(&[], &upper, &work).is_err());
        assert!(overlay_options(&[PathBuf::from("relative")], &upper, &work).is_err());
        assert!(overlay_options(&[PathBuf::from("/a:b")], &upper, &work).is_err());
        assert!(overlay_options(&[tmp.path().join("missing")], &upper, &work).is_err());
        let many: Vec<PathBuf> = (0..400).map(|_| top.clone()).collect();
        assert!(overlay_options(&many, &upper, &work).is_err());
    }

    #[test]
    fn runtime_rootfs_directory_is_not_mounted_or_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let rootfs = Rootfs::directory(tmp.path()).expect("directory");
        assert!(!rootfs.is_overlay());
        assert!(rootfs.is_mounted().expect("mounted"));
        rootfs.remove().expect("remove");
        assert!(tmp.path().is_dir());
        assert!(Rootfs::directory(&tmp.path().join("missing")).is_err());
    }
}
