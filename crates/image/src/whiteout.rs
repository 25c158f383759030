//! Layer whiteouts, kept in overlayfs's own representation so that every
//! unpacked layer can be stacked directly as an overlay `lowerdir`:
//!
//! - `.wh.<name>` (delete `<name>` of the layers below) becomes a 0/0
//!   character device named `<name>`;
//! - `.wh..wh..opq` (hide everything of the layers below in this
//!   directory) becomes the xattr `trusted.overlay.opaque=y` on the
//!   directory;
//! - other `.wh..wh.*` names (aufs bookkeeping such as `.wh..wh.plnk`)
//!   are ignored, as containerd does.
//!
//! Layers are not flattened: each is unpacked once, named by its diff-id,
//! and shared by every image and pod that uses it. These 0/0 devices are
//! the only device nodes the store ever creates; device entries in an
//! archive are refused. Creating them and writing `trusted.*` xattrs needs
//! CAP_MKNOD and CAP_SYS_ADMIN, which the agent has as root.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{fsetxattr, mknodat, FileType, Mode, XattrFlags};

use super::beneath::{clear_for, EntryError};
use super::error::Refusal;

/// The name prefix marking a whiteout.
pub(crate) const PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const META_PREFIX: &[u8] = b".wh..wh.";
/// The overlayfs xattr making a directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Whether an entry name is a whiteout marker.
pub(crate) fn is_whiteout(name: &OsStr) -> bool {
    name.as_bytes().starts_with(PREFIX)
}

/// Applies the whiteout entry `name` found in directory `dir`.
pub(crate) fn apply(dir: &OwnedFd, name: &OsStr) -> Result<(), EntryError> {
    let name = name.as_bytes();
    if name == OPAQUE {
        fsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty())?;
        return Ok(());
    }
    if name.starts_with(META_PREFIX) {
        return Ok(());
    }
    let target = OsStr::from_bytes(&name[PREFIX.len()..]);
    if target.is_empty() || target == "." || target == ".." {
        return Err(Refusal::Malformed("whiteout without a name".into()).into());
    }
    clear_for(dir, target, false)?;
    mknodat(dir, target, FileType::CharacterDevice, Mode::empty(), 0)?;
    Ok(())
}
