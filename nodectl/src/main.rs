//! `nodectl`: the operator CLI for the Stratum node agent. Everything but
//! the exit status lives in `nodectl`, where it is tested.
//!
//! Exit status: 0 success, 1 gRPC or runtime error (`nodectl: CODE:
//! message` on stderr), 2 usage error; `pod exec`: the command's.

use std::process::ExitCode;

use clap::Parser;
use nodectl::{cli::Cli, CommandExit, UsageError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    match runtime.block_on(nodectl::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Reports `e` on stderr and picks the exit status.
fn fail(e: &anyhow::Error) -> ExitCode {
    if let Some(CommandExit(code)) = e.downcast_ref::<CommandExit>() {
        // `pod exec`: the command's own status; its stderr said the rest.
        return ExitCode::from(nodectl::exit_status(*code));
    }
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        eprintln!("nodectl: {}", nodectl::status_text(status));
        return ExitCode::from(1);
    }
    if let Some(usage) = e.downcast_ref::<UsageError>() {
        eprintln!("nodectl: {usage}");
        return ExitCode::from(2);
    }
    if is_broken_pipe(e) {
        // The reader (`| head`) has what it wanted.
        return ExitCode::SUCCESS;
    }
    eprintln!("nodectl: {e:#}");
    ExitCode::from(1)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
