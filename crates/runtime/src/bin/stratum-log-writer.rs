//! `stratum-log-writer --log PATH [--max-size BYTES] [--max-files N]`:
//! one container's log writer (see `stratum_runtime::log_writer`), which
//! rotates the log past BYTES (10Mi) keeping N files (5). Started by the
//! node agent with the container's stdout and stderr pipes on descriptors
//! 3 and 4 and a readiness pipe on 5; it exits once both pipes are closed.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use stratum_runtime::log_writer::{parse_size, serve, LogRotation, READY_FD, STDERR_FD, STDOUT_FD};

const USAGE: &str = "usage: stratum-log-writer --log PATH [--max-size BYTES] [--max-files N] \
                     (pipes on fds 3, 4; ready on 5)";

/// The log and its rotation from the command line.
fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<(PathBuf, LogRotation), String> {
    let mut log = None;
    let mut rotation = LogRotation::default();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| format!("{} needs a value", flag.to_string_lossy()))?;
        let text = || value.to_string_lossy().into_owned();
        match flag.to_str() {
            Some("--log") => log = Some(PathBuf::from(&value)),
            Some("--max-size") => rotation.max_size = parse_size(&text())?,
            Some("--max-files") => {
                rotation.max_files = text()
                    .parse()
                    .map_err(|_| format!("--max-files {:?}: not a number", text()))?
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let log = log.ok_or("--log is required")?;
    let rotation =
        LogRotation::new(rotation.max_size, rotation.max_files).map_err(|e| e.to_string())?;
    Ok((log, rotation))
}

fn main() -> ExitCode {
    let (log, rotation) = match parse_args(std::env::args_os().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("stratum-log-writer: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // A closed terminal or session must not end the writer before the
    // container's output does.
    // SAFETY: setting a signal's disposition to ignore has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // SAFETY: the agent started this process with these descriptors open
    // (see `log_writer::spawn`); nothing else in the process owns them.
    let (stdout, stderr, ready) = unsafe {
        (
            OwnedFd::from_raw_fd(STDOUT_FD),
            OwnedFd::from_raw_fd(STDERR_FD),
            OwnedFd::from_raw_fd(READY_FD),
        )
    };
    match serve(&log, rotation, stdout, stderr, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratum-log-writer: {}: {e}", log.display());
            ExitCode::FAILURE
        }
    }
}
