//! The per-VM run directory: where one `vmm` keeps its API socket, serial
//! console log and stderr.
//!
//! One fixed layout, named in one place, so that launch, re-adoption after
//! an agent restart and the console stream agree on the paths from the run
//! directory alone (the state store keeps just that directory).
//!
//! A jailed vmm owns its run directory (it is the jail's `/run`), so
//! every file in it is read with [`open_untrusted`].

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Longest Unix socket path the kernel accepts (`sun_path` minus the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Opens a file of the run directory for reading as the agent (root),
/// though a jailed vmm, which owns the directory, may have put anything
/// there: a symlink is not followed (it could name any host file), a FIFO
/// does not block the open, and only a regular file is accepted.
pub fn open_untrusted(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// The last `limit` bytes of the file at `path` (see [`open_untrusted`]).
pub(crate) fn read_tail(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut file = open_untrusted(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(limit)))?;
    let mut tail = Vec::new();
    file.take(limit).read_to_end(&mut tail)?;
    Ok(tail)
}

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

    /// The VM's hybrid-vsock socket (when it has a vsock device): a host
    /// stream connects here and says `CONNECT <port>`.
    pub fn vsock_sock(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// The guest's serial console output, written by `vmm`.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// `vmm`'s stderr: its `vmm: error: …` line when it fails.
    pub fn stderr_log(&self) -> PathBuf {
        self.dir.join("vmm.stderr")
    }

    /// vmm's own explanation of why it failed: the last `vmm: error: …`
    /// line of its stderr, without the prefix, at most 1 KiB of it. `None`
    /// when vmm said nothing (it was killed, or is still running).
    pub fn vmm_error(&self) -> Option<String> {
        self.last_stderr_line("vmm: error: ")
    }

    /// How the guest ended, in vmm's words (`the guest reset (triple fault
    /// on vCPU 0: …)`, `the guest powered off (ACPI S5)`), at most 1 KiB.
    /// `None` when vmm did not say (it was killed, or is still running).
    pub fn guest_end(&self) -> Option<String> {
        self.last_stderr_line("vmm: the guest ")
            .map(|how| format!("the guest {how}"))
    }

    /// What follows `prefix` on the last stderr line that starts with it.
    fn last_stderr_line(&self, prefix: &str) -> Option<String> {
        const MAX: usize = 1024;
        let tail = read_tail(&self.stderr_log(), 16 * 1024).ok()?;
        let text = String::from_utf8_lossy(&tail);
        let line = text.lines().rev().find_map(|l| l.strip_prefix(prefix))?;
        let line = line.trim();
        if line.len() <= MAX {
            return Some(line.to_string());
        }
        let mut end = MAX;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        Some(format!("{}…", &line[..end]))
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
        for file in [
            self.api_sock(),
            self.vsock_sock(),
            self.console_log(),
            self.stderr_log(),
        ] {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmm_error_is_the_last_error_line_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = RunDir::new(dir.path());
        assert_eq!(run.vmm_error(), None, "no stderr yet");
        std::fs::write(
            run.stderr_log(),
            "booting\nvmm: error: first\nnoise\nvmm: error: KVM said no\n",
        )
        .unwrap();
        assert_eq!(run.vmm_error().as_deref(), Some("KVM said no"));
        let long = format!("vmm: error: {}\n", "é".repeat(4000));
        std::fs::write(run.stderr_log(), long).unwrap();
        let bounded = run.vmm_error().expect("the long line");
        assert!(bounded.len() <= 1024 + '…'.len_utf8(), "{}", bounded.len());
        assert!(bounded.ends_with('…'));
        std::fs::write(run.stderr_log(), "killed without a word\n").unwrap();
        assert_eq!(run.vmm_error(), None);
    }

    #[test]
    fn the_guest_end_is_vmm_s_last_word_on_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = RunDir::new(dir.path().join("run"));
        std::fs::create_dir(run.path()).unwrap();
        assert_eq!(run.guest_end(), None, "no stderr yet");
        std::fs::write(
            run.stderr_log(),
            "vmm: the guest powered off (ACPI S5)\nvmm: the guest reset (triple fault on vCPU 1: rip 0x1)\n",
        )
        .unwrap();
        assert_eq!(
            run.guest_end().as_deref(),
            Some("the guest reset (triple fault on vCPU 1: rip 0x1)")
        );
        assert_eq!(run.vmm_error(), None, "an end is not an error");
        std::fs::write(run.stderr_log(), "vmm: error: vCPU 0: KVM said no\n").unwrap();
        assert_eq!(run.guest_end(), None, "a failure is not a guest's end");
    }

    #[test]
    fn files_a_jailed_vmm_could_plant_are_not_followed_or_waited_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "vmm: error: host secret\n").unwrap();
        let run = RunDir::new(dir.path().join("run"));
        std::fs::create_dir(run.path()).unwrap();
        std::os::unix::fs::symlink(&secret, run.stderr_log()).unwrap();
        assert_eq!(run.vmm_error(), None, "a symlink is not followed");
        let link = open_untrusted(&run.stderr_log()).unwrap_err();
        assert_eq!(link.raw_os_error(), Some(libc::ELOOP), "{link}");
        std::fs::remove_file(run.stderr_log()).unwrap();
        let fifo =
            std::ffi::CString::new(run.console_log().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let not_file = open_untrusted(&run.console_log()).unwrap_err();
        assert!(
            not_file.to_string().contains("not a regular file"),
            "{not_file}"
        );
    }
}
