//! A real `node-agent` process for tests and benchmarks: started on a
//! loopback port of its choosing (plaintext, or mTLS with development
//! certificates) with a data dir and cgroup root of its own, its port read
//! from its "serving" log line; restartable on the same data dir, killed
//! with `kill -9` as a crash, or stopped (SIGTERM, then SIGKILL) with its
//! cgroup subtree removed when dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stratum_cgroup::{Cgroup, Hierarchy};
use tonic::transport::Channel;

/// How long the agent may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Between SIGTERM and SIGKILL when it is stopped.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct AgentProcess {
    binary: PathBuf,
    work: PathBuf,
    port: u16,
    cgroup_root: String,
    args: Vec<String>,
    tls: bool,
    child: Option<Child>,
    pid: u32,
}

impl AgentProcess {
    /// Starts `binary` with its data dir and log in `work` (created),
    /// cgroup root `cgroup_root`, and `args` after the common ones, serving
    /// loopback plaintext; waits until it listens.
    pub fn start(
        binary: &Path,
        work: PathBuf,
        cgroup_root: String,
        args: &[String],
    ) -> Result<AgentProcess, String> {
        Self::start_with(binary, work, cgroup_root, args, false)
    }

    /// As [`AgentProcess::start`]; with `tls` it serves mTLS with the
    /// development certificates it makes on first start.
    pub fn start_with(
        binary: &Path,
        work: PathBuf,
        cgroup_root: String,
        args: &[String],
        tls: bool,
    ) -> Result<AgentProcess, String> {
        std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
        let mut agent = AgentProcess {
            binary: binary.to_path_buf(),
            work,
            port: 0,
            cgroup_root,
            args: args.to_vec(),
            tls,
            child: None,
            pid: 0,
        };
        agent.respawn()?;
        Ok(agent)
    }

    /// (Re)starts the process on the same data dir, on a port of its
    /// choosing, and waits until it listens. Its log starts anew. One
    /// still running is killed first: two would fight over the store, and
    /// the old one would outlive the test.
    pub fn respawn(&mut self) -> Result<(), String> {
        self.kill9();
        let log = std::fs::File::create(self.work.join("agent.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--data-dir")
            .arg(self.work.join("data"))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .args(["--reserve-cpu", "0", "--reserve-memory-mib", "0"])
            // Test kernels and disks are made in the working directory.
            .arg("--artifact-dir")
            .arg(&self.work)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Out of the caller's process group: a Ctrl-C reaches the bench
            // or test, which then stops the agent in order.
            .process_group(0);
        if !self.tls {
            cmd.arg("--insecure-plaintext");
        }
        // Agents of parallel tests each serve their own CRI socket.
        if !self
            .args
            .iter()
            .any(|a| a == "--cri-socket" || a == "--no-cri")
        {
            cmd.arg("--cri-socket").arg(self.cri_socket());
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", self.binary.display()))?;
        self.pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(port) = serving_port(&self.log()) {
                self.port = port;
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("the agent never listened:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`, as a crash: its workloads and cgroups stay.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The CRI socket the agent serves (unless its args chose another).
    pub fn cri_socket(&self) -> std::path::PathBuf {
        self.work.join("cri.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("agent.log")).unwrap_or_default()
    }

    /// Its working directory (data dir and log inside).
    pub fn work(&self) -> &Path {
        &self.work
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn cgroup_root(&self) -> &str {
        &self.cgroup_root
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An error with the end of its log if it exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Err(format!(
                "node-agent exited {status}; its log ends:\n{}",
                tail(&self.log(), 20)
            )),
            Some(Err(e)) => Err(format!("node-agent: {e}")),
            _ => Ok(()),
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its
    /// status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => {
                    self.child = None;
                    return Some(status);
                }
                Some(Ok(None)) => std::thread::sleep(Duration::from_millis(50)),
                _ => return None,
            }
        }
        None
    }

    pub async fn channel(&self) -> Result<Channel, String> {
        Channel::from_shared(self.addr())
            .map_err(|e| e.to_string())?
            // A wedged agent fails the bench instead of hanging it.
            .timeout(Duration::from_secs(120))
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

impl AgentProcess {
    /// Stops the agent and removes its cgroup subtree (what its workloads
    /// left runs no more). Idempotent; dropping does it too.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, STOP_GRACE);
        }
        // The pods' directories in the hierarchies the agent does not
        // manage go too: a test leaves nothing in any of them.
        crate::cleanup::remove_agent_cgroups(&self.cgroup_root);
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaped.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid, which it keeps until reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Kills everything in the subtree and removes it, leaves first.
pub fn teardown(h: &Hierarchy, cgroup: &Cgroup, path: &Path) {
    for child in cgroup.children().unwrap_or_default() {
        let child_path = path.join(&child);
        if let Ok(c) = h.open(&child_path) {
            teardown(h, &c, &child_path);
        }
    }
    let _ = cgroup.kill_all(Duration::from_secs(5));
    if let Err(e) = cgroup.remove() {
        eprintln!("cgroup {} stays: {e}", cgroup.path().display());
    }
}

/// The port in the "node-agent serving" line (`… bound=127.0.0.1:PORT …`).
pub fn serving_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("node-agent serving"))?;
    let bound = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bound="))?;
    bound.rsplit(':').next()?.parse().ok()
}

/// The last `lines` lines of `log`, indented.
pub fn tail(log: &str, lines: usize) -> String {
    let last: Vec<&str> = log.lines().rev().take(lines).collect();
    last.iter()
        .rev()
        .map(|l| format!("  {l}\n"))
        .collect::<String>()
}
