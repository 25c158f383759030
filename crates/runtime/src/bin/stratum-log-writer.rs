//! `stratum-log-writer --log PATH [--max-size BYTES] [--max-files N]
//! [--terminal] [--stdin] [--attach]`: one container's log writer (see
//! `stratum_runtime::log_writer`), which rotates the log past BYTES
//! (10Mi) keeping N files (5). Started by the node agent with the
//! container's stdout pipe (or, `--terminal`, its terminal's master) on
//! descriptor 3, its stderr pipe on 4 (no terminal), a readiness pipe on
//! 5, its stdin pipe's write end on 6 (`--stdin`, no terminal; with a
//! terminal `--stdin` lets clients type into it) and the attach socket's
//! listener on 7 (`--attach`); it exits once the container's output has
//! ended.

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;

use stratum_runtime::log_writer::{
    parse_size, serve, LogRotation, WriterIo, WriterOutput, ATTACH_FD, READY_FD, STDERR_FD,
    STDIN_FD, STDOUT_FD,
};

const USAGE: &str = "usage: stratum-log-writer --log PATH [--max-size BYTES] [--max-files N] \
                     [--terminal] [--stdin] [--attach] (output on fd 3, stderr 4, ready 5, \
                     stdin 6, attach 7)";

/// What the command line says.
struct Args {
    log: PathBuf,
    rotation: LogRotation,
    terminal: bool,
    stdin: bool,
    attach: bool,
}

fn parse_args(mut args: impl Iterator<Item = OsString>) -> Result<Args, String> {
    let mut log = None;
    let mut rotation = LogRotation::default();
    let (mut terminal, mut stdin, mut attach) = (false, false, false);
    while let Some(flag) = args.next() {
        match flag.to_str() {
            Some("--terminal") => {
                terminal = true;
                continue;
            }
            Some("--stdin") => {
                stdin = true;
                continue;
            }
            Some("--attach") => {
                attach = true;
                continue;
            }
            _ => {}
        }
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
    Ok(Args {
        log,
        rotation,
        terminal,
        stdin,
        attach,
    })
}

/// Takes ownership of descriptor `fd`, which the agent left open for us.
fn given(fd: i32) -> OwnedFd {
    // SAFETY: the agent started this process with the descriptors the
    // command line names open (see `log_writer::spawn`); nothing else in
    // the process owns them, and each is taken once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("stratum-log-writer: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // A closed terminal or session must not end the writer before the
    // container's output does; a client gone mid-write is an error, not
    // a signal.
    // SAFETY: setting a signal's disposition to ignore has no preconditions.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let output = if args.terminal {
        WriterOutput::Terminal {
            master: given(STDOUT_FD),
            stdin: args.stdin,
        }
    } else {
        WriterOutput::Pipes {
            stdout: given(STDOUT_FD),
            stderr: given(STDERR_FD),
            stdin: args.stdin.then(|| given(STDIN_FD)),
        }
    };
    let io = WriterIo {
        output,
        attach: args.attach.then(|| given(ATTACH_FD)),
        ready: given(READY_FD),
    };
    match serve(&args.log, args.rotation, io) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratum-log-writer: {}: {e}", args.log.display());
            ExitCode::FAILURE
        }
    }
}
