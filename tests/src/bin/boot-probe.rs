//! `boot-probe`: measures one VMM boot from inside the nested test host.
//!
//! ```text
//! boot-probe --label vmm --marker STRATUM-GUEST-UP --guest-mib 256 -- vmm --kernel ...
//! ```
//!
//! Spawns the command (stdin `/dev/null`, stdout piped, stderr inherited),
//! and prints one line for `bench-boot` to parse:
//!
//! ```text
//! BENCH label=vmm init_ms=812 exit_ms=950 peak_rss_kib=... overhead_kib=... status=exit:0 ...
//! ```
//!
//! * `init_ms`: process start until a stdout line containing the marker
//!   (`none` if it never came);
//! * `exit_ms`: process start until the process exited;
//! * `peak_rss_kib`: `ru_maxrss` from `wait4`;
//! * `minflt`: `ru_minflt` from `wait4`: page faults the VMM process took,
//!   including those KVM takes on its behalf when the guest first touches
//!   a page (one per 4 KiB page, or one per 2 MiB huge page);
//! * `huge_kib`: the peak of `AnonHugePages` over the guest-RAM mappings
//!   (sampled runs only): how much guest RAM transparent huge pages back;
//! * `overhead_kib`: the peak, over all samples, of the VMM's own memory.
//!   Every `--sample-ms` the probe reads `/proc/<pid>/smaps` and computes
//!   `sum(Rss of all mappings) - sum(Rss of guest-RAM mappings)`, where a
//!   guest-RAM mapping is an anonymous mapping (no backing file) whose size
//!   is at least half the guest memory. Both VMMs map guest RAM that way, and
//!   pages the guest touches through KVM are charged to that mapping, so
//!   the difference is what the VMM process itself needs (code, libraries,
//!   heap, stacks, device state).
//!
//! With `--jailed` the command is `stratum-jailer`: the probe reads the
//! jailed VMM's pid from its first stdout line (the jailer's protocol),
//! closes its stdin so it exits, and measures the VMM itself, which is
//! re-parented to the probe (a child subreaper); the console is read from
//! `--console-file` (the jail's `/run/console.log` seen from the host),
//! since a jailed VMM's stdout is /dev/null. The times still count from
//! the jailer's start, so the jail's setup is part of the boot.
//!
//! Exits 0 if the marker came and the command exited 0, 1 otherwise, 2 on
//! usage or setup errors. Must be linked statically: the nested host has no
//! libc.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Time a VMM's boot and sample its memory overhead")]
struct Args {
    /// Name printed in the BENCH line.
    #[arg(long)]
    label: String,
    /// Text on the child's stdout that marks a booted guest.
    #[arg(long)]
    marker: String,
    /// Guest memory size; identifies the guest-RAM mappings in smaps.
    #[arg(long)]
    guest_mib: u64,
    /// Interval between smaps samples; 0 disables sampling (and reports
    /// `overhead_kib=none`). Reading smaps takes the process's mmap lock
    /// and CPU time, so it slows the measured boot: time it separately.
    #[arg(long, default_value_t = 5)]
    sample_ms: u64,
    /// Kill the command after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Print every console line to stderr with its time since start, to see
    /// where a boot spends its time.
    #[arg(long)]
    trace: bool,
    /// The command is `stratum-jailer`: measure the VMM it starts.
    #[arg(long, requires = "console_file")]
    jailed: bool,
    /// Watch this file for the marker instead of the command's stdout.
    #[arg(long, value_name = "PATH")]
    console_file: Option<std::path::PathBuf>,
    /// Command to run and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// What the stdout reader saw.
struct Console {
    marker_at: Option<Duration>,
    /// Last lines, shown when the boot failed.
    tail: Vec<String>,
}

/// Peaks over all smaps samples.
#[derive(Default)]
struct MemPeaks {
    overhead_kib: u64,
    guest_kib: u64,
    guest_huge_kib: u64,
    samples: u64,
}

struct Exit {
    after: Duration,
    status: String,
    max_rss_kib: i64,
    min_faults: i64,
    timed_out: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("boot-probe: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `Ok(true)` if the guest came up and the command exited 0.
fn run(args: &Args) -> Result<bool> {
    let (program, rest) = args.command.split_first().context("no command given")?;
    if args.jailed {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("PR_SET_CHILD_SUBREAPER");
        }
    }
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(rest)
        .stdin(if args.jailed {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let stdout = child.stdout.take().context("child has no stdout pipe")?;
    let ended = Arc::new(AtomicBool::new(false));
    let (pid, reader) = match &args.console_file {
        Some(file) if args.jailed => {
            let pid = jailed_pid(&mut child, stdout)?;
            let reader = watch_file(file.clone(), args, start, Arc::clone(&ended));
            (pid, reader)
        }
        Some(file) => {
            let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
            (
                pid,
                watch_file(file.clone(), args, start, Arc::clone(&ended)),
            )
        }
        None => {
            let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
            (
                pid,
                watch_console(stdout, args.marker.clone(), start, args.trace),
            )
        }
    };
    let supervised = supervise(pid, args, start);
    ended.store(true, Ordering::Release);
    let (exit, peaks) = supervised?;
    // EOF normally follows the exit at once; a leftover grandchild holding
    // the pipe must not defeat the timeout.
    let console = reader
        .recv_timeout(Duration::from_secs(5))
        .context("the command's stdout stayed open after it exited")?;
    report(args, &console, &exit, &peaks);
    let ok = console.marker_at.is_some() && exit.status == "exit:0" && !exit.timed_out;
    if !ok {
        for line in &console.tail {
            eprintln!("boot-probe: [{}] {line}", args.label);
        }
    }
    Ok(ok)
}

fn report(args: &Args, console: &Console, exit: &Exit, peaks: &MemPeaks) {
    let init_ms = console.marker_at.map_or_else(|| "none".to_owned(), millis);
    let overhead = if peaks.samples > 0 {
        peaks.overhead_kib.to_string()
    } else {
        "none".to_owned()
    };
    let status = if exit.timed_out {
        "timeout"
    } else {
        &exit.status
    };
    let huge = if peaks.samples > 0 {
        peaks.guest_huge_kib.to_string()
    } else {
        "none".to_owned()
    };
    println!(
        "BENCH label={} init_ms={init_ms} exit_ms={} peak_rss_kib={} overhead_kib={overhead} \
         guest_rss_kib={} huge_kib={huge} minflt={} samples={} status={status}",
        args.label,
        millis(exit.after),
        exit.max_rss_kib,
        peaks.guest_kib,
        exit.min_faults,
        peaks.samples,
    );
}

fn millis(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// The jailed VMM's pid: the jailer's first stdout line. Then the jailer
/// is let go (stdin closed) and reaped; the VMM becomes our child.
fn jailed_pid(
    jailer: &mut std::process::Child,
    stdout: std::process::ChildStdout,
) -> Result<libc::pid_t> {
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("reading the jailer's pid")?;
    let pid = line
        .trim()
        .parse()
        .with_context(|| format!("the jailer printed {line:?}, not a pid (its stderr says why)"));
    drop(jailer.stdin.take());
    let status = jailer.wait().context("waiting for the jailer")?;
    if !status.success() {
        bail!("the jailer failed: {status}");
    }
    pid
}

/// Follows a console log file as the VMM writes it, line by line, until
/// `ended` is set and nothing more is there; notes when the marker first
/// appears.
fn watch_file(
    path: PathBuf,
    args: &Args,
    start: Instant,
    ended: Arc<AtomicBool>,
) -> Receiver<Console> {
    let (marker, trace) = (args.marker.clone(), args.trace);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut console = Console {
            marker_at: None,
            tail: Vec::new(),
        };
        let mut file = None;
        let mut pending = Vec::new();
        loop {
            let last_look = ended.load(Ordering::Acquire);
            if file.is_none() {
                file = std::fs::File::open(&path).ok();
            }
            let mut chunk = Vec::new();
            if let Some(f) = file.as_mut() {
                let _ = f.read_to_end(&mut chunk);
            }
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                console_line(&mut console, &line, &marker, start, trace);
            }
            if last_look {
                break;
            }
            if chunk.is_empty() {
                thread::sleep(Duration::from_millis(1));
            }
        }
        let _ = tx.send(console);
    });
    rx
}

/// Notes one console line: the marker's time, the tail.
fn console_line(console: &mut Console, line: &[u8], marker: &str, start: Instant, trace: bool) {
    const TAIL: usize = 20;
    let text = String::from_utf8_lossy(line).trim_end().to_owned();
    if trace {
        eprintln!("boot-probe: +{} {text}", millis(start.elapsed()));
    }
    if console.marker_at.is_none() && text.contains(marker) {
        console.marker_at = Some(start.elapsed());
    }
    if console.tail.len() == TAIL {
        console.tail.remove(0);
    }
    console.tail.push(text);
}

/// Reads the child's stdout line by line until EOF, noting when the marker
/// first appears. Bytes, not `String`s: a console may emit invalid UTF-8.
fn watch_console(
    stdout: impl Read + Send + 'static,
    marker: String,
    start: Instant,
    trace: bool,
) -> Receiver<Console> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut console = Console {
            marker_at: None,
            tail: Vec::new(),
        };
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            console_line(&mut console, &line, &marker, start, trace);
            line.clear();
        }
        let _ = tx.send(console);
    });
    rx
}

/// Samples smaps until the child exits or the timeout kills it, then reaps
/// it with `wait4` for its `ru_maxrss`.
///
/// A helper thread blocks in `waitid(WNOWAIT)`, which reports the exit at
/// once without reaping: the pid stays valid, so reading its smaps or
/// killing it can never hit a recycled pid.
fn supervise(pid: libc::pid_t, args: &Args, start: Instant) -> Result<(Exit, MemPeaks)> {
    let (tx, rx) = mpsc::channel();
    let id = u32::try_from(pid).context("pid out of range")?;
    thread::spawn(move || {
        let _ = tx.send(wait_exit_nowait(id).map(|()| start.elapsed()));
    });
    let deadline = Duration::from_secs(args.timeout);
    let sampling = args.sample_ms > 0;
    // Without sampling the loop only wakes to check the timeout.
    let interval = Duration::from_millis(if sampling { args.sample_ms } else { 100 });
    let guest_min_kib = args.guest_mib * 1024 / 2;
    let mut peaks = MemPeaks::default();
    let mut timed_out = false;
    let after = loop {
        if let Some(rss) = sampling.then(|| sample_smaps(pid, guest_min_kib)).flatten() {
            peaks.overhead_kib = peaks.overhead_kib.max(rss.total.saturating_sub(rss.guest));
            peaks.guest_kib = peaks.guest_kib.max(rss.guest);
            peaks.guest_huge_kib = peaks.guest_huge_kib.max(rss.guest_huge);
            peaks.samples += 1;
        }
        match rx.recv_timeout(interval) {
            Ok(exited) => break exited?,
            Err(RecvTimeoutError::Timeout) if start.elapsed() > deadline && !timed_out => {
                timed_out = true;
                // Not reaped yet (WNOWAIT), so the pid is still ours.
                // SAFETY: kill with our unreaped child's pid and a signal.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => bail!("exit watcher vanished"),
        }
    };
    let (status, usage) = reap(pid)?;
    let exit = Exit {
        after,
        status,
        max_rss_kib: usage.ru_maxrss,
        min_faults: usage.ru_minflt,
        timed_out,
    };
    Ok((exit, peaks))
}

/// Blocks until the child has exited, leaving it a zombie.
fn wait_exit_nowait(pid: u32) -> Result<()> {
    loop {
        // SAFETY: waitid writes only into the zeroed siginfo we pass.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waitid");
        }
    }
}

/// Reaps the exited child: (`exit:N` or `signal:N`, its resource usage).
fn reap(pid: libc::pid_t) -> Result<(String, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall; both out-pointers are valid locals.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if rc != pid {
        return Err(std::io::Error::last_os_error()).context("wait4");
    }
    let text = if libc::WIFEXITED(status) {
        format!("exit:{}", libc::WEXITSTATUS(status))
    } else {
        format!("signal:{}", libc::WTERMSIG(status))
    };
    Ok((text, usage))
}

/// One smaps sample, in KiB.
#[derive(Debug, PartialEq, Eq)]
struct Rss {
    total: u64,
    /// Rss of the guest-RAM mappings.
    guest: u64,
    /// AnonHugePages of the guest-RAM mappings.
    guest_huge: u64,
}

/// `None` if smaps is gone or unreadable (e.g. the process is exiting).
fn sample_smaps(pid: libc::pid_t, guest_min_kib: u64) -> Option<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let rss = parse_smaps(&text, guest_min_kib);
    // A zombie has an empty smaps; that is no sample.
    (rss.total > 0).then_some(rss)
}

/// Sums Rss over all mappings and Rss and AnonHugePages over the guest-RAM
/// ones: anonymous mappings (inode 0, no path) of at least `guest_min_kib`.
fn parse_smaps(text: &str, guest_min_kib: u64) -> Rss {
    let (mut total, mut guest, mut guest_huge) = (0, 0, 0);
    let mut is_guest = false;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some(size_kib) = mapping_size_kib(first) {
            // Header: range perms offset dev inode [path]
            let rest: Vec<&str> = fields.collect();
            let anonymous = rest.len() == 4 && rest[3] == "0";
            is_guest = anonymous && size_kib >= guest_min_kib;
        } else if first == "Rss:" {
            let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            total += kib;
            if is_guest {
                guest += kib;
            }
        } else if first == "AnonHugePages:" && is_guest {
            guest_huge += fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    Rss {
        total,
        guest,
        guest_huge,
    }
}

/// Size of the mapping if `token` is a smaps header's `start-end` range.
fn mapping_size_kib(token: &str) -> Option<u64> {
    let (start, end) = token.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    Some(end.checked_sub(start)? / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_splits_guest_ram() {
        let smaps = "\
00400000-00600000 r-xp 00000000 08:01 1234 /stratum/bin/vmm
Size:               2048 kB
Rss:                1000 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:               30000 kB
AnonHugePages:     28672 kB
7f0010000000-7f0010100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 200 kB
7ffd00000000-7ffd10000000 rw-p 00000000 00:00 0 [stack]
Rss:                  50 kB
";
        assert_eq!(
            parse_smaps(smaps, 128 * 1024),
            Rss {
                total: 31250,
                guest: 30000,
                guest_huge: 28672
            }
        );
    }
}
