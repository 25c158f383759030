//! A benchmark's or runner's temporary directory on a disk (overlayfs
//! upper dirs and fsync want one: a tmpfs `$TMPDIR` gives way to
//! `/var/tmp`), removed on drop after unmounting whatever is still
//! mounted below it — so it must be dropped after what uses it.

use std::path::{Path, PathBuf};

use crate::pod_agent::unmount_under;

/// See the module docs; `.0` is the directory.
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    /// `<base>/<name>-<pid>`, emptied first; `base` defaults to the
    /// temporary directory unless it is a tmpfs.
    pub fn create(base: Option<&Path>, name: &str) -> Result<WorkDir, String> {
        let base = match base {
            Some(d) => d.to_path_buf(),
            None => {
                let tmp = std::env::temp_dir();
                if is_tmpfs(&tmp) {
                    PathBuf::from("/var/tmp")
                } else {
                    tmp
                }
            }
        };
        let work = std::path::absolute(base.join(format!("{name}-{}", std::process::id())))
            .map_err(|e| e.to_string())?;
        unmount_under(&work);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        Ok(WorkDir(work))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        unmount_under(&self.0);
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("{} stays: {e}", self.0.display());
        }
    }
}

const TMPFS_MAGIC: i64 = 0x0102_1994;

fn is_tmpfs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a live, writable
    // statfs that the call fills.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    ok && magic == TMPFS_MAGIC
}
