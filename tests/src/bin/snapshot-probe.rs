//! `snapshot-probe`: measures one VMM's snapshot round trip from inside
//! the nested test host, for `bench-snapshot`.
//!
//! ```text
//! snapshot-probe --kind vmm  --vmm /stratum/bin/vmm --kernel K --initrd I --cmdline CL --dir D
//! snapshot-probe --kind qemu --qemu /usr/bin/qemu-system-x86_64 --kernel K ... --dir D
//! ```
//!
//! The guest prints `TICK=n` lines on its console, every 50 ms. The
//! probe, for either VMM:
//!
//! 1. boots it cold: `boot_ms` is the process's start until the first tick,
//!    `tick_ms` the period of the ticks that follow;
//! 2. pauses it and writes its snapshot (vmm: `PUT /snapshot/create`, a
//!    Full one; QEMU: `stop`, then `migrate` to a file through `exec:cat`,
//!    the file form its 7.2 has): `create_ms`, and the files' apparent and
//!    allocated sizes (`snap_kib`, `disk_kib`);
//! 3. kills it and restores one VM from the files: `restore_ms` is a new
//!    process's start until a tick newer than the last one before the
//!    snapshot (vmm: spawn, `PUT /snapshot/load` with resume; QEMU: spawn
//!    with `-incoming defer`, then `migrate-incoming` and `cont`), and
//!    `request_ms`, from the restore request (vmm's load call, QEMU's
//!    `migrate-incoming`) to that tick, and for vmm `load_ms`, the load
//!    call alone;
//! 4. restores `--clones` VMs from the same files at once: `scaleout_ms` is
//!    until every one has ticked, `clones_pss_kib` their summed Pss then
//!    (memory they share counts once), `one_rss_kib` one clone's RSS.
//!
//! and prints one line: `SNAPBENCH kind=vmm boot_ms=... create_ms=...`.
//! Exits 0 when every step was measured, 1 otherwise. Statically linked:
//! the nested host has no libc.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use stratum_vm::{ApiClient, BootSource, MachineConfig, MemBackend, SnapshotCreate, SnapshotLoad};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Vmm,
    Qemu,
}

#[derive(Parser)]
#[command(about = "Time a VMM's snapshot, restore and clones")]
struct Args {
    #[arg(long, value_enum)]
    kind: Kind,
    #[arg(long, default_value = "/usr/local/bin/vmm")]
    vmm: PathBuf,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// QEMU's machine type.
    #[arg(long, default_value = "microvm")]
    machine: String,
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: PathBuf,
    #[arg(long)]
    cmdline: String,
    #[arg(long, default_value_t = 256)]
    mib: u64,
    /// Where the snapshot files and sockets go.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 10)]
    clones: usize,
    /// Each step's limit, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("SNAPBENCH-FAILED kind={} error={e:#}", kind_name(args.kind));
            ExitCode::from(1)
        }
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Vmm => "vmm",
        Kind::Qemu => "qemu",
    }
}

/// A running VMM process and its console's ticks.
struct Vm {
    child: Child,
    started: Instant,
    ticks: Receiver<(Instant, u64)>,
    last_tick: u64,
}

impl Vm {
    fn spawn(mut command: Command) -> Result<Vm> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let started = Instant::now();
        let mut child = command.spawn().context("spawning the VMM")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, ticks) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line);
                let tick = line
                    .split_once("TICK=")
                    .and_then(|(_, n)| n.trim().parse().ok());
                if let Some(n) = tick {
                    if tx.send((Instant::now(), n)).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Vm {
            child,
            started,
            ticks,
            last_tick: 0,
        })
    }

    /// Waits for a tick above `above`; returns when it came.
    fn tick_after(&mut self, above: u64, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, n) = self
                .ticks
                .recv_timeout(left)
                .with_context(|| format!("no tick above {above} within {timeout:?}"))?;
            self.last_tick = self.last_tick.max(n);
            if n > above {
                return Ok(at);
            }
        }
    }

    /// Ticks that came so far, without waiting.
    fn drain(&mut self) {
        while let Ok((_, n)) = self.ticks.try_recv() {
            self.last_tick = self.last_tick.max(n);
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &Args) -> Result<String> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("making {}", args.dir.display()))?;
    let timeout = Duration::from_secs(args.timeout);
    let mut out = format!("SNAPBENCH kind={}", kind_name(args.kind));
    let mut field = |key: &str, value: String| out.push_str(&format!(" {key}={value}"));

    // 1. Cold boot.
    let (mut vm, api) = boot(args, timeout).context("cold boot")?;
    let first = vm.tick_after(0, timeout).context("cold boot")?;
    field("boot_ms", ms(first - vm.started));
    // The guest's tick period, which bounds how late a tick can say that
    // a restored guest runs.
    let from = (vm.tick_after(vm.last_tick, timeout)?, vm.last_tick);
    let to = (vm.tick_after(from.1 + 4, timeout)?, vm.last_tick);
    let periods = u32::try_from(to.1 - from.1).unwrap_or(u32::MAX).max(1);
    field("tick_ms", ms((to.0 - from.0) / periods));

    // 2. Snapshot.
    let files = snapshot(args, api.as_ref(), timeout).context("snapshot")?;
    field("create_ms", ms(files.took));
    field("snap_kib", (files.apparent / 1024).to_string());
    field("disk_kib", (files.allocated / 1024).to_string());
    vm.drain();
    let before = vm.last_tick;
    vm.kill();

    // 3. One restore.
    let Restored {
        mut vm,
        load,
        requested,
    } = restore(args, 0, timeout).context("restore")?;
    let ticked = vm.tick_after(before, timeout).context("restore")?;
    field("restore_ms", ms(ticked - vm.started));
    field("request_ms", ms(ticked - requested));
    if let Some(load) = load {
        field("load_ms", ms(load));
    }
    vm.kill();

    // 4. Clones, all at once.
    let started = Instant::now();
    let mut clones = Vec::with_capacity(args.clones);
    let mut failed = None;
    for i in 0..args.clones {
        match restore(args, i + 1, timeout) {
            Ok(restored) => clones.push(restored.vm),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let ticked = failed.map_or_else(
        || {
            clones
                .iter_mut()
                .map(|vm| vm.tick_after(before, timeout))
                .collect::<Result<Vec<_>>>()
        },
        Err,
    );
    let measured = ticked.map(|all| {
        let last = all.into_iter().max().unwrap_or(started);
        let pids: Vec<u32> = clones.iter().map(|vm| vm.child.id()).collect();
        (last, pids)
    });
    let memory = measured
        .as_ref()
        .ok()
        .map(|(_, pids)| (summed_pss_kib(pids), pids.first().map(|&p| rss_kib(p))));
    for vm in clones {
        vm.kill();
    }
    let (last, _) = measured.context("clones")?;
    field("clones", args.clones.to_string());
    field("scaleout_ms", ms(last - started));
    if let Some((pss, rss)) = memory {
        field("clones_pss_kib", pss.to_string());
        field("one_rss_kib", rss.flatten().unwrap_or(0).to_string());
    }
    Ok(out)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The running VM and, for vmm, its API client.
fn boot(args: &Args, timeout: Duration) -> Result<(Vm, Option<ApiClient>)> {
    match args.kind {
        Kind::Vmm => {
            let socket = args.dir.join("boot.sock");
            let vm = Vm::spawn(vmm_command(args, &socket))?;
            let api = ApiClient::new(&socket);
            wait_for_socket(&socket, timeout)?;
            api.put_boot_source(&BootSource {
                kernel_image_path: args.kernel.clone(),
                initrd_path: Some(args.initrd.clone()),
                boot_args: Some(args.cmdline.clone()),
            })?;
            api.put_machine_config(&MachineConfig {
                vcpu_count: 1,
                mem_size_mib: args.mib,
            })?;
            api.instance_start()?;
            Ok((vm, Some(api)))
        }
        Kind::Qemu => {
            let mut command = qemu_command(args, &args.dir.join("boot.qmp"));
            command
                .arg("-kernel")
                .arg(&args.kernel)
                .arg("-initrd")
                .arg(&args.initrd)
                .arg("-append")
                .arg(&args.cmdline);
            Ok((Vm::spawn(command)?, None))
        }
    }
}

fn vmm_command(args: &Args, socket: &Path) -> Command {
    let _ = std::fs::remove_file(socket);
    let mut command = Command::new(&args.vmm);
    command
        .arg("--api-sock")
        .arg(socket)
        .arg("--no-console-input");
    command
}

fn qemu_command(args: &Args, qmp: &Path) -> Command {
    let _ = std::fs::remove_file(qmp);
    let mut command = Command::new(&args.qemu);
    command
        .args([
            "-M",
            &args.machine,
            "-enable-kvm",
            "-cpu",
            "host",
            "-smp",
            "1",
        ])
        .args(["-m", &args.mib.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    command
}

struct Files {
    took: Duration,
    apparent: u64,
    allocated: u64,
}

fn state_file(args: &Args) -> PathBuf {
    args.dir.join("vm.snap")
}

fn mem_file(args: &Args) -> PathBuf {
    args.dir.join("vm.mem")
}

fn qemu_file(args: &Args) -> PathBuf {
    args.dir.join("vm.migration")
}

/// Pauses the VM and writes its snapshot.
fn snapshot(args: &Args, api: Option<&ApiClient>, timeout: Duration) -> Result<Files> {
    let (took, paths) = match api {
        Some(api) => {
            api.pause()?;
            let started = Instant::now();
            api.create_snapshot(&SnapshotCreate {
                snapshot_path: state_file(args),
                mem_file_path: mem_file(args),
            })?;
            (started.elapsed(), vec![state_file(args), mem_file(args)])
        }
        None => {
            let mut qmp = Qmp::connect(&args.dir.join("boot.qmp"), timeout)?;
            qmp.execute(r#"{"execute":"stop"}"#)?;
            let started = Instant::now();
            let uri = format!("exec:cat > {}", qemu_file(args).display());
            qmp.execute(
                &serde_json::json!({"execute": "migrate", "arguments": {"uri": uri}}).to_string(),
            )?;
            qmp.wait_migrated(timeout)?;
            (started.elapsed(), vec![qemu_file(args)])
        }
    };
    let (mut apparent, mut allocated) = (0, 0);
    for path in paths {
        let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
        apparent += meta.len();
        allocated += meta.blocks() * 512;
    }
    Ok(Files {
        took,
        apparent,
        allocated,
    })
}

/// A VM restored from the snapshot.
struct Restored {
    vm: Vm,
    /// vmm's load call.
    load: Option<Duration>,
    /// When the restore was asked for, the process being up.
    requested: Instant,
}

/// Restores a VM from the snapshot. `n` tells the VM's sockets apart.
fn restore(args: &Args, n: usize, timeout: Duration) -> Result<Restored> {
    match args.kind {
        Kind::Vmm => {
            let socket = args.dir.join(format!("restore-{n}.sock"));
            let vm = Vm::spawn(vmm_command(args, &socket))?;
            wait_for_socket(&socket, timeout)?;
            let started = Instant::now();
            ApiClient::new(&socket).load_snapshot(&SnapshotLoad {
                snapshot_path: state_file(args),
                mem_backend: MemBackend::file(mem_file(args)),
                resume_vm: true,
                network_overrides: Vec::new(),
                vsock_override: None,
            })?;
            Ok(Restored {
                vm,
                load: Some(started.elapsed()),
                requested: started,
            })
        }
        Kind::Qemu => {
            let qmp = args.dir.join(format!("restore-{n}.qmp"));
            let mut command = qemu_command(args, &qmp);
            command.args(["-incoming", "defer"]);
            let vm = Vm::spawn(command)?;
            let mut qmp = Qmp::connect(&qmp, timeout)?;
            let requested = Instant::now();
            let incoming = serde_json::json!({
                "execute": "migrate-incoming",
                "arguments": {"uri": format!("exec:cat {}", qemu_file(args).display())},
            });
            qmp.execute(&incoming.to_string())?;
            // The stream carries the source's run state, paused: the
            // restored VM waits for `cont` once the stream is in.
            qmp.wait_incoming(timeout)?;
            qmp.execute(r#"{"execute":"cont"}"#)?;
            Ok(Restored {
                vm,
                load: None,
                requested,
            })
        }
    }
}

fn wait_for_socket(socket: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while UnixStream::connect(socket).is_err() {
        ensure!(
            Instant::now() < deadline,
            "{} not accepting within {timeout:?}",
            socket.display()
        );
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// QEMU's QMP socket, capabilities negotiated.
struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        wait_for_socket(socket, timeout)?;
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        };
        qmp.execute(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(qmp)
    }

    /// Sends `command`; its `return` value (events before it skipped).
    fn execute(&mut self, command: &str) -> Result<serde_json::Value> {
        writeln!(self.writer, "{command}")?;
        loop {
            let mut line = String::new();
            ensure!(self.reader.read_line(&mut line)? > 0, "QMP closed");
            let value: serde_json::Value = serde_json::from_str(&line)?;
            if let Some(error) = value.get("error") {
                bail!("QMP {command}: {error}");
            }
            if let Some(ret) = value.get("return") {
                return Ok(ret.clone());
            }
        }
    }

    /// Until the incoming migration is in (the VM then paused).
    fn wait_incoming(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.execute(r#"{"execute":"query-status"}"#)?;
            match status["status"].as_str().unwrap_or_default() {
                "inmigrate" => {}
                "paused" | "postmigrate" | "prelaunch" | "running" => return Ok(()),
                other => bail!("incoming migration ended in state {other:?}"),
            }
            ensure!(
                Instant::now() < deadline,
                "incoming migration not done in {timeout:?}"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn wait_migrated(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.execute(r#"{"execute":"query-migrate"}"#)?;
            match info["status"].as_str().unwrap_or_default() {
                "completed" => return Ok(()),
                "failed" | "cancelled" => bail!("migration {}", info),
                _ => {}
            }
            ensure!(
                Instant::now() < deadline,
                "migration not done in {timeout:?}"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Summed `Pss` of the processes, in KiB (0 for one that is gone).
fn summed_pss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| status_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0))
        .sum()
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// The KiB figure of the line starting with `key` in a /proc file.
fn status_field(path: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
