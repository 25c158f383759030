//! The per-VM run directory: where one `vmm` keeps its API socket, serial
//! console log and stderr.
//!
//! One fixed layout, named in one place, so that launch, re-adoption after
//! an agent restart and the console stream agree on the paths from the run
//! directory alone (the state store keeps just that directory).

use std::io;
use std::path::{Path, PathBuf};

/// Longest Unix socket path the kernel accepts (`sun_path` minus the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A VM's run directory and the files in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// The layout under `dir` (nothing is created).
    pub fn new(dir: impl Into<PathBuf>) -> RunDir {
        RunDir { dir: dir.into() }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `vmm`'s control API socket.
    pub fn api_sock(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// The guest's serial console output, written by `vmm`.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// `vmm`'s stderr: its `vmm: error: …` line when it fails.
    pub fn stderr_log(&self) -> PathBuf {
        self.dir.join("vmm.stderr")
    }

    /// Removes the directory and everything in it (VM delete); a missing
    /// directory is not an error.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Removes the files a `vmm` run leaves, then the directory if that
    /// left it empty (other files of the caller's are kept). Best effort:
    /// used on a failed launch, where the error being reported matters more.
    pub(crate) fn clean_after_failure(&self) {
        for file in [self.api_sock(), self.console_log(), self.stderr_log()] {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
