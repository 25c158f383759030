//! `stratum-log-writer --log PATH`: one container's log writer (see
//! `stratum_runtime::log_writer`). Started by the node agent with the
//! container's stdout and stderr pipes on descriptors 3 and 4 and a
//! readiness pipe on 5; it exits once both pipes are closed.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use stratum_runtime::log_writer::{serve, READY_FD, STDERR_FD, STDOUT_FD};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let log = match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(path), None) if flag == "--log" => PathBuf::from(path),
        _ => {
            eprintln!("usage: stratum-log-writer --log PATH (pipes on fds 3, 4; ready on 5)");
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
    match serve(&log, stdout, stderr, ready) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratum-log-writer: {}: {e}", log.display());
            ExitCode::FAILURE
        }
    }
}
