//! Running QEMU (TCG) with the composed initramfs and capturing its console.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::outcome::{clean_console, tail, Outcome, HEARTBEAT_LINE};
use crate::scenario::{Drive, Scenario};

/// `kvm_amd.vgif=0` (passed on to the module by the host's init): with
/// QEMU's TCG emulation of the virtual GIF, the nested host's one vCPU
/// sometimes halted for good while it ran VMs, interrupts enabled and its
/// timers dead (most long multi-VM scenarios froze 9 to 30 minutes in);
/// without it far fewer do, and [`KICK`] wakes those that still do.
const CMDLINE: &str = "console=ttyS0 reboot=t panic=-1 quiet kvm_amd.vgif=0";
/// Extra kernel parameters for the nested host, e.g. `loglevel=7` to see
/// the nested kernel's own warnings while debugging.
const CMDLINE_EXTRA_ENV: &str = "STRATUM_HOST_CMDLINE_EXTRA";
const TAIL_LINES: usize = 40;
/// XON on the host's serial line: a receive interrupt whose handler wakes
/// the tty's worker (the idle loop exits and the host's tick is programmed
/// again); the line discipline swallows the byte, so no reader sees it.
const KICK: &[u8] = b"\x11";

type Shared = Arc<Mutex<Vec<u8>>>;

pub(crate) fn run(
    kernel: &Path,
    base: &[u8],
    extra: &[u8],
    scenario: &Scenario,
) -> Result<Outcome> {
    let initrd = write_initrd(base, extra)?;
    let qmp_dir = tempfile::Builder::new()
        .prefix("stratum-qmp-")
        .tempdir()
        .context(|| "making a directory for QEMU's QMP socket".to_owned())?;
    let qmp = qmp_dir.path().join("qmp.sock");
    let mut child = spawn(kernel, initrd.path(), &qmp, scenario)?;
    let console: Shared = Arc::default();
    let stderr: Shared = Arc::default();
    let readers = [
        child
            .stdout
            .take()
            .map(|s| pump(s, Arc::clone(&console), scenario.echo || echo_forced())),
        child
            .stderr
            .take()
            .map(|s| pump(s, Arc::clone(&stderr), false)),
    ];
    let kick = child.stdin.take();
    let ended = wait_until(&mut child, scenario, &console, kick);
    // What the emulator says of a frozen host, asked before it is killed.
    let emulator = match &ended {
        Ok(Ended::Froze) => qmp_report(&qmp),
        _ => String::new(),
    };
    if !matches!(ended, Ok(Ended::Exited(_))) {
        let _ = child.kill();
        let _ = child.wait();
    }
    // Readers end at EOF, which comes once QEMU is gone.
    for reader in readers.into_iter().flatten() {
        let _ = reader.join();
    }
    let console = text(&console);
    let console_tail = || tail(&clean_console(&console), TAIL_LINES);
    let status = match ended? {
        Ended::Exited(status) => status,
        Ended::TimedOut => {
            return Err(Error::Timeout {
                after: scenario.timeout,
                console_tail: console_tail(),
            })
        }
        Ended::Froze => {
            return Err(Error::HostFroze {
                silent: scenario.frozen_after,
                emulator,
                console_tail: console_tail(),
            })
        }
    };
    Outcome::parse(&console).ok_or_else(|| Error::HostDidNotBoot {
        status: status.to_string(),
        stderr: tail(&text(&stderr), TAIL_LINES),
        console_tail: tail(&clean_console(&console), TAIL_LINES),
    })
}

/// Base archive followed by the scenario archive: the kernel unpacks
/// concatenated cpio archives in order, later files overriding earlier ones.
fn write_initrd(base: &[u8], extra: &[u8]) -> Result<tempfile::NamedTempFile> {
    let mut file = tempfile::Builder::new()
        .prefix("stratum-nested-host-")
        .suffix(".cpio")
        .tempfile()
        .context(|| "creating the nested host initrd".to_owned())?;
    file.write_all(base)
        .and_then(|()| file.write_all(extra))
        .and_then(|()| file.flush())
        .context(|| format!("writing {}", file.path().display()))?;
    Ok(file)
}

fn spawn(kernel: &Path, initrd: &Path, qmp: &Path, scenario: &Scenario) -> Result<Child> {
    let program = std::env::var("STRATUM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let mut command = Command::new(&program);
    command
        .args(["-M", "q35", "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &scenario.host_cpus.to_string()])
        .args(["-m", &scenario.memory_mib.to_string()])
        .args(["-nodefaults", "-no-user-config"]);
    for drive in &scenario.drives {
        command.arg("-drive").arg(drive_option(drive)?);
    }
    command
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &host_cmdline()])
        // Piped, not null, so a silent host can be kicked (`KICK`).
        .stdin(if scenario.interactive {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            program,
            package: "qemu-system-x86",
            source,
        })
}

/// QEMU's `-drive` value for `drive`. Commas in the path would end the
/// option's `file=` value, so such a path is refused.
fn drive_option(drive: &Drive) -> Result<String> {
    let path = drive.path.to_str().filter(|p| !p.contains(','));
    let Some(path) = path else {
        return Err(Error::BadDrivePath(drive.path.clone()));
    };
    let writes = if drive.scratch_writes {
        "snapshot=on"
    } else {
        "readonly=on"
    };
    Ok(format!("file={path},if=virtio,format=raw,{writes}"))
}

fn host_cmdline() -> String {
    match std::env::var(CMDLINE_EXTRA_ENV) {
        Ok(extra) if !extra.trim().is_empty() => format!("{CMDLINE} {}", extra.trim()),
        _ => CMDLINE.to_string(),
    }
}

/// `STRATUM_ECHO=1` streams every scenario's console, e.g. to watch a
/// long test's nested host: `STRATUM_ECHO=1 cargo test ... -- --nocapture`.
fn echo_forced() -> bool {
    std::env::var_os("STRATUM_ECHO").is_some_and(|v| v == "1")
}

/// Copies `src` into `sink` until EOF, optionally mirroring it to stdout.
fn pump(mut src: impl Read + Send + 'static, sink: Shared, echo: bool) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = src.read(&mut buf) {
            if n == 0 {
                break;
            }
            if echo {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    })
}

enum Ended {
    Exited(std::process::ExitStatus),
    /// Still running at the scenario's timeout.
    TimedOut,
    /// Silent for `Scenario::frozen_after` once the host's heartbeat had
    /// begun.
    Froze,
}

/// Waits for QEMU to exit, until the scenario's timeout, or until the
/// console (the heartbeat included) has been silent for its
/// `frozen_after`; the caller kills QEMU in the last two cases. While the
/// host is silent it is sent [`KICK`] through `serial_in` every
/// [`kick_every`]: the freeze seen under QEMU's TCG leaves the CPU halted
/// with interrupts enabled and its timer interrupt lost, and a device
/// interrupt wakes it. Kicking soon keeps a freeze shorter than the
/// timeouts of what runs inside (the guest agents' 30 s link check). A
/// host that answers goes on, and that is said on stderr.
fn wait_until(
    child: &mut Child,
    scenario: &Scenario,
    console: &Shared,
    mut serial_in: Option<std::process::ChildStdin>,
) -> Result<Ended> {
    let started = Instant::now();
    let (mut seen, mut last_output) = (0, started);
    let mut beating = false;
    let (mut kicks, mut last_kick) = (0u32, started);
    let kick_every = kick_every(scenario);
    loop {
        if let Some(status) = child.try_wait().context(|| "waiting for qemu".into())? {
            return Ok(Ended::Exited(status));
        }
        let now = Instant::now();
        {
            let out = console.lock().unwrap_or_else(|e| e.into_inner());
            if out.len() != seen {
                // Only the new bytes (and a line's worth before) are searched.
                let from = seen.saturating_sub(HEARTBEAT_LINE.len());
                beating = beating
                    || out[from..]
                        .windows(HEARTBEAT_LINE.len())
                        .any(|w| w == HEARTBEAT_LINE.as_bytes());
                seen = out.len();
                if kicks > 0 {
                    let silent = now - last_output;
                    // Past the test harness's capture, as a freeze is.
                    let _ = writeln!(
                        std::io::stderr(),
                        "stratum-tests: nested host silent for {silent:?}, woken after {kicks} kick(s) on its serial line"
                    );
                    kicks = 0;
                }
                last_output = now;
            }
        }
        if beating && now >= last_output.max(last_kick) + kick_every {
            kicks += 1;
            last_kick = now;
            if let Some(serial) = serial_in.as_mut() {
                let _ = serial.write_all(KICK).and_then(|()| serial.flush());
            }
        }
        let ended = if now >= started + scenario.timeout {
            Some(Ended::TimedOut)
        } else if beating && now >= last_output + scenario.frozen_after {
            Some(Ended::Froze)
        } else {
            None
        };
        if let Some(ended) = ended {
            return Ok(ended);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// How long a silence lasts before a kick: a heartbeat (every 10 s) and
/// a little more, or half the scenario's `frozen_after` if that is less.
fn kick_every(scenario: &Scenario) -> Duration {
    const AFTER_A_MISSED_HEARTBEAT: Duration = Duration::from_secs(12);
    AFTER_A_MISSED_HEARTBEAT.min(scenario.frozen_after / 2)
}

/// QEMU's run state and the host CPU's registers, from its QMP socket;
/// or why they could not be had.
fn qmp_report(socket: &Path) -> String {
    let ask = || -> std::io::Result<String> {
        let stream = std::os::unix::net::UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut writer = stream.try_clone()?;
        let mut reader = std::io::BufReader::new(stream);
        let mut answer = |command: &str| -> std::io::Result<serde_json::Value> {
            writeln!(writer, "{command}")?;
            // Events may come before the answer: skip them.
            loop {
                let mut line = String::new();
                if std::io::BufRead::read_line(&mut reader, &mut line)? == 0 {
                    return Err(std::io::Error::other("QMP closed"));
                }
                let value: serde_json::Value =
                    serde_json::from_str(&line).map_err(std::io::Error::other)?;
                if value.get("event").is_none() && value.get("QMP").is_none() {
                    return Ok(value);
                }
            }
        };
        answer(r#"{"execute":"qmp_capabilities"}"#)?;
        let status = answer(r#"{"execute":"query-status"}"#)?;
        let registers = answer(
            r#"{"execute":"human-monitor-command","arguments":{"command-line":"info registers -a"}}"#,
        )?;
        // The general and system registers; not the FPU's and vectors'.
        let registers: Vec<&str> = registers["return"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                !["FCW", "FPR", "XMM", "YMM", "ZMM", "Opmask"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect();
        Ok(format!(
            "run state: {}\n{}",
            status["return"],
            registers.join("\n")
        ))
    };
    ask().unwrap_or_else(|e| format!("QMP did not answer: {e}"))
}

fn text(buf: &Shared) -> String {
    let bytes = buf.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&bytes).into_owned()
}
