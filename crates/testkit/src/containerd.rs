//! A private containerd for benchmarks and the CRI conformance run: its
//! own root, state, sockets and config under one directory, so it touches
//! no system containerd; stopped, with its shims, on drop.
//!
//! The config is version 2 with the common part (root, state, the gRPC,
//! ttrpc and debug sockets in the directory) written here, and the rest
//! (top-level keys and plugin tables) from the caller: `bench-pod` turns the CRI plugin off and
//! drives `ctr`, `conformance` configures the CRI plugin and speaks CRI.
//!
//! What containerd keeps at fixed places whatever its config: the shims'
//! sockets under /run/containerd (`s/`), removed with the directory when
//! this instance made it and it is empty again. Shims outlive containerd:
//! on drop, every `containerd-shim*` process whose command line names this
//! instance's socket is killed.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::agent_process::{tail, terminate};

/// Where containerd's shims put their sockets, whatever its configuration.
pub const RUN_CONTAINERD: &str = "/run/containerd";
/// How long containerd may take to answer `ctr version`.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Between SIGTERM and SIGKILL when it is stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running private containerd (see the module docs).
pub struct Containerd {
    dir: PathBuf,
    ctr: PathBuf,
    child: Option<Child>,
    /// /run/containerd did not exist before.
    made_run_dir: bool,
}

impl Containerd {
    /// Starts `containerd` with its root, state, sockets, config and log
    /// under `dir` (created); `extra` (TOML, config version 2: top-level
    /// keys first, then tables) goes after the common top-level keys and
    /// before the common tables. Waits until `ctr` (the binary `ctr`)
    /// gets an answer.
    pub fn start(
        containerd: &Path,
        ctr: &Path,
        dir: PathBuf,
        extra: &str,
    ) -> Result<Containerd, String> {
        for sub in ["root", "state"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("mkdir {}: {e}", dir.join(sub).display()))?;
        }
        let config = format!(
            "version = 2\n\
             root = \"{root}\"\n\
             state = \"{state}\"\n\
             {extra}\n\
             [grpc]\n  address = \"{sock}\"\n\
             [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"{debug}\"\n  level = \"warn\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = dir.join("containerd.sock").display(),
            debug = dir.join("debug.sock").display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config).map_err(|e| format!("containerd config: {e}"))?;
        let log = std::fs::File::create(dir.join("containerd.log"))
            .map_err(|e| format!("containerd log: {e}"))?;
        let made_run_dir = !Path::new(RUN_CONTAINERD).exists();
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Out of the caller's process group: a Ctrl-C reaches the
            // caller, which then stops containerd in order.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{}: {e}", containerd.display()))?;
        let mut this = Containerd {
            dir,
            ctr: ctr.to_path_buf(),
            child: Some(child),
            made_run_dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if this
                .ctr("default")
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                return Ok(this);
            }
            if let Some(Ok(Some(status))) = this.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "containerd exited {status}:\n{}",
                    tail(&this.log(), 20)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not answer within {} s:\n{}",
                    START_TIMEOUT.as_secs(),
                    tail(&this.log(), 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its directory (root, state, config, log, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its gRPC socket (also the CRI's when the CRI plugin is on).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` on this containerd, in `namespace`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", namespace])
            .stdin(Stdio::null());
        cmd
    }

    /// An error with the end of its log if it exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Err(format!(
                "containerd exited {status}; its log ends:\n{}",
                tail(&self.log(), 20)
            )),
            Some(Err(e)) => Err(format!("containerd: {e}")),
            _ => Ok(()),
        }
    }

    /// Stops containerd and kills its shims (and so what they run).
    /// Idempotent; dropping does it too.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_GRACE);
        }
        kill_shims_of(&self.socket());
        if self.made_run_dir {
            for dir in ["s", "fifo", "runc", ""] {
                let _ = std::fs::remove_dir(Path::new(RUN_CONTAINERD).join(dir));
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILLs each `containerd-shim*` process whose command line names
/// `socket` (a shim is started with `-address SOCKET`), and waits a little
/// for them to go: a shim's death ends its containers.
fn kill_shims_of(socket: &Path) {
    let needle = socket.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0);
        let is_shim = args
            .next()
            .and_then(|a| a.rsplit(|&b| b == b'/').next())
            .is_some_and(|name| name.starts_with(b"containerd-shim"));
        if is_shim && args.any(|a| a == needle) {
            // SAFETY: kill takes no pointers; the pid is a shim of our own
            // containerd instance.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.push(pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && killed
            .iter()
            .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}
