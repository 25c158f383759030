//! A driver for an OCI runtime's command line: crun by default, runc as the
//! alternative (the agent config names the binary; which one it is comes
//! from its `--version`).
//!
//! Every call runs `<runtime> --root <state dir> ...` with the agent's own
//! state directory, so the agent's containers never mix with those of other
//! users of the same runtime (podman, containerd). Each call has a time
//! limit; a hung runtime is killed and reported.
//!
//! `create` is special: without a terminal the runtime hands *its own*
//! stdio to the container, so the container's stdout/stderr files are
//! passed as the runtime's, and the runtime's own error messages are taken
//! from `--log <bundle>/runtime.log --log-format json` (both runtimes write
//! errors there; crun also copies them to the container's stderr file,
//! where they do no harm). All other calls capture stderr; errors carry it,
//! except an exec with a terminal (`spawn_exec`), whose runtime also has
//! null stdio and a `--log`.
//!
//! In the rebased cgroup mode (see `cgpath`) every call enters the cgroup
//! view between fork and exec, so `cgroupsPath` resolves to the same
//! directories for create, exec (which joins the container's cgroup),
//! kill and delete (which removes it).

use std::env;
use std::fs::{self, File};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::process::Command;

use super::cgpath::{CgroupView, PreparedView};
use super::error::{Result, RuntimeError};
use super::exec::{self, ExecChild, ExecDir};

/// Default runtime binary (looked up in `PATH`).
pub const DEFAULT_RUNTIME: &str = "crun";

/// Default state directory for the runtime's `--root`.
pub const DEFAULT_STATE_ROOT: &str = "/run/stratum/runtime";

/// How long a terminal-mode exec whose runtime has already ended still
/// waits for the terminal it may have queued on the console socket.
const EXITED_GRACE: Duration = Duration::from_millis(500);

/// Default time limit of one runtime command (not of `exec`).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Which OCI runtime implementation the binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// crun (C, Debian package `crun`).
    Crun,
    /// runc (Go, Debian package `runc`).
    Runc,
}

impl RuntimeKind {
    /// The runtime's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeKind::Crun => "crun",
            RuntimeKind::Runc => "runc",
        }
    }
}

/// The agent's runtime settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRuntimeConfig {
    /// The runtime binary: a path, or a name looked up in `PATH`.
    pub binary: PathBuf,
    /// The runtime's state directory (`--root`), private to the agent.
    pub state_root: PathBuf,
    /// Time limit for create/start/state/kill/delete.
    pub command_timeout: Duration,
}

impl Default for OciRuntimeConfig {
    fn default() -> Self {
        OciRuntimeConfig {
            binary: PathBuf::from(DEFAULT_RUNTIME),
            state_root: PathBuf::from(DEFAULT_STATE_ROOT),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }
}

/// The container's stdio for `create`.
#[derive(Debug)]
pub enum ContainerStdio {
    /// Given descriptors: stdin (`None`: `/dev/null`), stdout, stderr.
    Files {
        /// Standard input.
        stdin: Option<File>,
        /// Standard output (e.g. a pipe to the log writer).
        stdout: File,
        /// Standard error.
        stderr: File,
    },
    /// A terminal the runtime makes (the spec's `process.terminal`),
    /// whose master [`OciRuntime::create`] hands back.
    Terminal,
}

/// The runtime's view of a container (`state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeState {
    /// Container id.
    pub id: String,
    /// Init process pid (host pid namespace); `None` once stopped.
    pub pid: Option<u32>,
    /// `creating`, `created`, `running`, `paused`, `stopped`.
    pub status: RuntimeStatus,
    /// Bundle directory.
    pub bundle: PathBuf,
}

/// OCI container status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeStatus {
    /// Being created.
    Creating,
    /// Created, init waiting for `start`.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// Init exited.
    Stopped,
    /// Anything else the runtime reported.
    Other(String),
}

/// Result of `exec`: what the command wrote and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error (and the runtime's, if exec itself failed).
    pub stderr: Vec<u8>,
    /// Exit code; 128 + signal number when killed by a signal.
    pub exit_code: i32,
}

#[derive(Deserialize)]
struct StateJson {
    id: String,
    #[serde(default)]
    pid: i64,
    status: String,
    #[serde(default)]
    bundle: PathBuf,
}

/// A configured OCI runtime.
#[derive(Debug, Clone)]
pub struct OciRuntime {
    binary: PathBuf,
    kind: RuntimeKind,
    state_root: PathBuf,
    timeout: Duration,
    view: Option<PreparedView>,
}

impl OciRuntime {
    /// Resolves the binary, identifies it (`--version`) and creates the
    /// state directory. `view` is the cgroup mapping's view, if it has one.
    pub fn new(config: &OciRuntimeConfig, view: Option<&CgroupView>) -> Result<OciRuntime> {
        let binary = resolve_binary(&config.binary)?;
        let output = std::process::Command::new(&binary)
            .arg("--version")
            .output()
            .map_err(|source| RuntimeError::Spawn {
                binary: binary.clone(),
                source,
            })?;
        let version = String::from_utf8_lossy(&output.stdout).to_lowercase();
        let kind = if version.starts_with("crun") {
            RuntimeKind::Crun
        } else if version.starts_with("runc") {
            RuntimeKind::Runc
        } else {
            return Err(RuntimeError::invalid(
                "OCI runtime",
                binary.to_string_lossy(),
                "`--version` names neither crun nor runc",
            ));
        };
        fs::create_dir_all(&config.state_root).map_err(RuntimeError::io(
            &config.state_root,
            "create runtime state directory",
        ))?;
        Ok(OciRuntime {
            binary,
            kind,
            state_root: config.state_root.clone(),
            timeout: config.command_timeout,
            view: view.map(CgroupView::prepared).transpose()?,
        })
    }

    /// crun or runc.
    pub fn kind(&self) -> RuntimeKind {
        self.kind
    }

    /// The resolved binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The state directory (`--root`).
    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// Checks that the host lets this runtime run containers: crun refuses
    /// hybrid cgroups whose v2 hierarchy holds controllers.
    pub fn check_host(&self) -> Result<()> {
        if self.kind != RuntimeKind::Crun {
            return Ok(());
        }
        let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
        match fs::read_to_string(unified) {
            Ok(list) if !list.trim().is_empty() => Err(RuntimeError::HybridControllers {
                unified: unified.to_path_buf(),
                controllers: list.split_whitespace().map(str::to_string).collect(),
            }),
            _ => Ok(()),
        }
    }

    /// `create`: sets the container up from `bundle/config.json`, its init
    /// waiting for `start`; writes the init's pid to `pid_file`. With
    /// [`ContainerStdio::Terminal`] the runtime sends the terminal's master
    /// over a console socket in a private directory, and it is returned.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        stdio: ContainerStdio,
    ) -> Result<Option<OwnedFd>> {
        validate_id(id)?;
        let log = bundle.join("runtime.log");
        // A log left from an earlier attempt would mix old errors in.
        let _ = fs::remove_file(&log);
        let mut cmd = self.command();
        cmd.arg("--log")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .arg("create")
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid-file")
            .arg(pid_file);
        let console = match stdio {
            ContainerStdio::Files {
                stdin,
                stdout,
                stderr,
            } => {
                cmd.stdin(stdin.map_or_else(Stdio::null, Stdio::from))
                    .stdout(Stdio::from(stdout))
                    .stderr(Stdio::from(stderr));
                None
            }
            ContainerStdio::Terminal => {
                let dir = ExecDir::create(&self.state_root)?;
                let socket = dir.console_socket();
                let listener = exec::console_listener(&socket)?;
                cmd.arg("--console-socket")
                    .arg(&socket)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                Some((dir, socket, listener))
            }
        };
        cmd.arg(id);
        let mut child = cmd.spawn().map_err(|source| self.spawn_error(source))?;
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => status.map_err(|source| self.spawn_error(source))?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(self.timeout_error("create", id));
            }
        };
        if !status.success() {
            let message = read_json_log(&log).unwrap_or_else(|| format!("see {}", log.display()));
            return Err(RuntimeError::Runtime {
                runtime: self.kind.name().to_string(),
                command: "create",
                id: id.to_string(),
                status: status.to_string(),
                message,
            });
        }
        let Some((_dir, socket, listener)) = console else {
            return Ok(None);
        };
        // The runtime sent the master before it exited: it is queued.
        exec::receive_pty_fd(&listener, &socket, EXITED_GRACE)
            .await
            .map(Some)
    }

    /// `start`: lets the created container's init exec the process.
    pub async fn start(&self, id: &str) -> Result<()> {
        self.run("start", id, &["start", id]).await.map(drop)
    }

    /// `state`, parsed.
    pub async fn state(&self, id: &str) -> Result<RuntimeState> {
        let stdout = self.run("state", id, &["state", id]).await?;
        parse_state(self.kind, id, &stdout)
    }

    /// `kill <id> <signal>`: signals the container's init.
    pub async fn kill(&self, id: &str, signal: i32) -> Result<()> {
        let signal = signal.to_string();
        self.run("kill", id, &["kill", id, &signal]).await.map(drop)
    }

    /// `delete`: removes the runtime's state and the container's cgroup;
    /// with `force` also kills a running container first.
    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(id);
        self.run("delete", id, &args).await.map(drop)
    }

    /// Runs `process` (a process spec: its args, user, capabilities,
    /// `noNewPrivileges`, env; no terminal) in the running container `id`,
    /// waits at most `timeout` and returns its output and exit code. On
    /// timeout the process is killed and [`RuntimeError::ExecTimeout`]
    /// returned. A whole process spec, not just args: an exec'd process is
    /// confined exactly as the container's own (runtimes give a bare
    /// `exec ID ARGS` their own defaults, crun without no_new_privs).
    pub async fn exec(
        &self,
        id: &str,
        process: &oci_spec::runtime::Process,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let dir = self.prepare_exec(id, process)?;
        let mut cmd = self.exec_command(id, &dir, None);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| self.spawn_error(source))?;
        let result = tokio::time::timeout(timeout, child.wait_with_output()).await;
        match result {
            Ok(Ok(output)) => Ok(ExecOutput {
                stdout: output.stdout,
                stderr: output.stderr,
                exit_code: exit_code(&output.status),
            }),
            Ok(Err(source)) => Err(self.spawn_error(source)),
            Err(_) => {
                // The runtime was killed with the dropped future; its child
                // in the container would run on: kill it by its pid.
                if let Some(pid) = read_pid(&dir.pid_file()) {
                    kill_pid(pid);
                }
                Err(RuntimeError::ExecTimeout {
                    id: id.to_string(),
                    timeout,
                })
            }
        }
    }

    /// Starts `process` (a whole process spec, as for [`OciRuntime::exec`])
    /// in the running container `id` and returns while it runs (see
    /// [`crate::exec`]). Without `terminal` its stdin, stdout and stderr
    /// are pipes in the [`ExecChild`]; with `terminal` the runtime makes a
    /// pseudo-terminal and this waits (at most the command time limit) for
    /// its master through a console socket: [`ExecChild::terminal`]. The
    /// process has no time limit; the caller waits for or kills it.
    pub async fn spawn_exec(
        &self,
        id: &str,
        process: &oci_spec::runtime::Process,
    ) -> Result<ExecChild> {
        let dir = self.prepare_exec(id, process)?;
        if !process.terminal().unwrap_or(false) {
            let mut cmd = self.exec_command(id, &dir, None);
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = cmd.spawn().map_err(|source| self.spawn_error(source))?;
            return Ok(ExecChild::new(id, child, dir, None, None));
        }
        let socket = dir.console_socket();
        let listener = exec::console_listener(&socket)?;
        let mut cmd = self.exec_command(id, &dir, Some(&socket));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|source| self.spawn_error(source))?;
        let received = tokio::select! {
            // Receiving first: a short command may have sent its terminal
            // and ended by the time both are ready.
            biased;
            master = exec::receive_pty_master(&listener, &socket, self.timeout) => {
                master.map(|m| (m, None))
            }
            status = child.wait() => {
                let status = status.map_err(|source| self.spawn_error(source))?;
                // A terminal sent before the runtime ended is queued on the
                // socket already; a short grace period takes it.
                match exec::receive_pty_master(&listener, &socket, EXITED_GRACE).await {
                    Ok(master) => Ok((master, Some(exit_code(&status)))),
                    Err(e) if status.success() => Err(e),
                    Err(_) => Err(RuntimeError::Runtime {
                        runtime: self.kind.name().to_string(),
                        command: "exec",
                        id: id.to_string(),
                        status: status.to_string(),
                        message: read_json_log(&dir.log())
                            .unwrap_or_else(|| "no terminal received".to_string()),
                    }),
                }
            }
        };
        // Nobody else is to connect; the directory keeps only the pid file.
        drop(listener);
        let _ = fs::remove_file(&socket);
        match received {
            Ok((master, exited)) => Ok(ExecChild::new(id, child, dir, Some(master), exited)),
            Err(e) => {
                if let Some(pid) = read_pid(&dir.pid_file()) {
                    kill_pid(pid);
                }
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(e)
            }
        }
    }

    /// Checks an exec's arguments and writes its process spec into a
    /// fresh private directory.
    fn prepare_exec(&self, id: &str, process: &oci_spec::runtime::Process) -> Result<ExecDir> {
        validate_id(id)?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(RuntimeError::invalid("exec command", "", "empty"));
        }
        let dir = ExecDir::create(&self.state_root)?;
        let process_file = dir.process_file();
        let json = serde_json::to_vec(process).map_err(|e| {
            RuntimeError::io(&process_file, "serialize process")(std::io::Error::other(e))
        })?;
        fs::write(&process_file, json).map_err(RuntimeError::io(&process_file, "write"))?;
        Ok(dir)
    }

    /// `exec --pid-file --process [--console-socket] ID`; with a console
    /// socket the runtime's stdio is not ours to read, so its errors go to
    /// its JSON log in the exec's directory.
    fn exec_command(&self, id: &str, dir: &ExecDir, console: Option<&Path>) -> Command {
        let mut cmd = self.command();
        if console.is_some() {
            cmd.arg("--log")
                .arg(dir.log())
                .arg("--log-format")
                .arg("json");
        }
        cmd.arg("exec")
            .arg("--pid-file")
            .arg(dir.pid_file())
            .arg("--process")
            .arg(dir.process_file());
        if let Some(socket) = console {
            cmd.arg("--console-socket").arg(socket);
        }
        cmd.arg(id);
        cmd
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.state_root).kill_on_drop(true);
        if let Some(view) = self.view.clone() {
            // SAFETY: `enter` only makes system calls on memory owned by
            // the moved `view`; it allocates nothing in the forked child.
            unsafe {
                cmd.pre_exec(move || view.enter());
            }
        }
        cmd
    }

    /// Runs a short command, returns stdout, or the error with stderr.
    async fn run(&self, command: &'static str, id: &str, args: &[&str]) -> Result<Vec<u8>> {
        validate_id(id)?;
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| self.spawn_error(source))?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(output) => output.map_err(|source| self.spawn_error(source))?,
            Err(_) => return Err(self.timeout_error(command, id)),
        };
        if output.status.success() {
            return Ok(output.stdout);
        }
        Err(RuntimeError::Runtime {
            runtime: self.kind.name().to_string(),
            command,
            id: id.to_string(),
            status: output.status.to_string(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }

    fn spawn_error(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn {
            binary: self.binary.clone(),
            source,
        }
    }

    fn timeout_error(&self, command: &'static str, id: &str) -> RuntimeError {
        RuntimeError::RuntimeTimeout {
            runtime: self.kind.name().to_string(),
            command,
            id: id.to_string(),
            timeout: self.timeout,
        }
    }
}

/// Whether `err` says the runtime does not know the container.
pub fn is_not_found(err: &RuntimeError) -> bool {
    match err {
        RuntimeError::Runtime { message, .. } => {
            let m = message.to_lowercase();
            m.contains("does not exist") || m.contains("not found") || m.contains("no such file")
        }
        _ => false,
    }
}

/// Container ids: what crun and runc accept and what is safe as a file
/// and cgroup name: 1..=128 of `[A-Za-z0-9_-]`.
pub fn validate_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 {
        return Err(RuntimeError::invalid(
            "container id",
            id,
            "must be 1 to 128 bytes",
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(RuntimeError::invalid(
            "container id",
            id,
            "only ASCII letters, digits, '_' and '-' are allowed",
        ));
    }
    Ok(())
}

fn parse_state(kind: RuntimeKind, id: &str, stdout: &[u8]) -> Result<RuntimeState> {
    let bad = |reason: String| RuntimeError::State {
        runtime: kind.name().to_string(),
        id: id.to_string(),
        output: String::from_utf8_lossy(stdout).into_owned(),
        reason,
    };
    let json: StateJson = serde_json::from_slice(stdout).map_err(|e| bad(e.to_string()))?;
    let status = match json.status.as_str() {
        "creating" => RuntimeStatus::Creating,
        "created" => RuntimeStatus::Created,
        "running" => RuntimeStatus::Running,
        "paused" => RuntimeStatus::Paused,
        "stopped" => RuntimeStatus::Stopped,
        other => RuntimeStatus::Other(other.to_string()),
    };
    let pid = match u32::try_from(json.pid) {
        Ok(0) => None,
        Ok(pid) => Some(pid),
        Err(_) => return Err(bad(format!("pid {} out of range", json.pid))),
    };
    Ok(RuntimeState {
        id: json.id,
        pid: if status == RuntimeStatus::Stopped {
            None
        } else {
            pid
        },
        status,
        bundle: json.bundle,
    })
}

/// The error messages of a `--log-format json` log, joined.
fn read_json_log(path: &Path) -> Option<String> {
    let content = fs::read_to_string(path).ok()?;
    let messages: Vec<String> = content
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| {
            matches!(
                v.get("level").and_then(|l| l.as_str()),
                Some("error" | "fatal" | "panic")
            )
        })
        .filter_map(|v| v.get("msg").and_then(|m| m.as_str()).map(str::to_string))
        .collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// An exit status as a shell reports it.
pub(crate) fn exit_code(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => -1,
    }
}

pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 1)
}

pub(crate) fn kill_pid(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions; ESRCH (gone
        // already) is fine.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// `binary` itself if it contains a `/`, else the first match in `PATH`.
fn resolve_binary(binary: &Path) -> Result<PathBuf> {
    if binary.components().count() > 1 || binary.is_absolute() {
        return Ok(binary.to_path_buf());
    }
    let path = env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| RuntimeError::Spawn {
            binary: binary.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not found in PATH"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_oci_parses_crun_and_runc_state() {
        let crun = br#"{"ociVersion":"1.0.0","id":"c1","pid":2410,"status":"running",
            "bundle":"/b","rootfs":"rootfs","created":"2026-11-24T07:18:24Z","systemd-scope":"","owner":"root"}"#;
        let state = parse_state(RuntimeKind::Crun, "c1", crun).expect("crun state");
        assert_eq!(state.pid, Some(2410));
        assert_eq!(state.status, RuntimeStatus::Running);
        assert_eq!(state.bundle, PathBuf::from("/b"));
        let stopped =
            br#"{"ociVersion":"1.0.2","id":"c1","pid":0,"status":"stopped","bundle":"/b"}"#;
        let state = parse_state(RuntimeKind::Runc, "c1", stopped).expect("runc state");
        assert_eq!(state.pid, None);
        assert_eq!(state.status, RuntimeStatus::Stopped);
        assert!(parse_state(RuntimeKind::Crun, "c1", b"not json").is_err());
        assert!(parse_state(
            RuntimeKind::Crun,
            "c1",
            br#"{"id":"c1","pid":-5,"status":"running"}"#
        )
        .is_err());
    }

    #[test]
    fn runtime_oci_ids_are_safe_names() {
        assert!(validate_id("pod-7_ctr-1").is_ok());
        for bad in ["", "a/b", "..", "a b", "ä"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_id(&"x".repeat(129)).is_err());
    }

    #[test]
    fn runtime_oci_json_log_keeps_error_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("runtime.log");
        fs::write(
            &log,
            "{\"msg\":\"warn\",\"level\":\"warning\"}\n{\"msg\":\"boom\",\"level\":\"error\"}\nnot json\n",
        )
        .expect("write");
        assert_eq!(read_json_log(&log).as_deref(), Some("boom"));
        assert_eq!(read_json_log(&dir.path().join("missing")), None);
    }

    #[test]
    fn runtime_oci_not_found_detection() {
        let err = RuntimeError::Runtime {
            runtime: "crun".into(),
            command: "delete",
            id: "x".into(),
            status: "exit status: 1".into(),
            message: "error opening file `/run/x/status`: No such file or directory".into(),
        };
        assert!(is_not_found(&err));
    }
}
