//! `stratum-guest`: the agent inside a node VM.
//!
//! It listens on vsock port [`stratum_guest::PORT`] for the node agent,
//! reports the guest's view of itself (ready once cloud-init has finished,
//! hostname, addresses per interface, OS, kernel), answers pings, and
//! powers the guest off or reboots it when asked. It owns nothing in the
//! guest but its socket: it reads what the guest already says of itself,
//! and changes only the power state (through systemd) and, in a clone,
//! the identity the host gives it (`identity`).
//!
//! Several connections may be open at once (a node agent that restarted
//! connects again before the old connection is noticed dead); each gets
//! every status update until its write fails.

mod identity;
mod server;
mod status;

use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// How often the status is re-read; a change is sent at once.
const REFRESH: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let port = match parse_port(std::env::args().skip(1)) {
        Ok(port) => port,
        Err(message) => {
            eprintln!("stratum-guest: {message}");
            return ExitCode::from(2);
        }
    };
    let shared = Arc::new(server::Shared::new(status::collect(None)));
    let ready = Arc::new(std::sync::OnceLock::new());
    {
        let ready = Arc::clone(&ready);
        thread::spawn(move || {
            let _ = ready.set(status::wait_for_boot_config());
        });
    }
    {
        let shared = Arc::clone(&shared);
        thread::spawn(move || loop {
            shared.update(status::collect(ready.get().cloned()));
            thread::sleep(REFRESH);
        });
    }
    match server::serve(port, &shared) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratum-guest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_port(mut args: impl Iterator<Item = String>) -> Result<u32, String> {
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok(stratum_guest::PORT),
        (Some("--port"), Some(port)) if args.next().is_none() => port
            .parse()
            .map_err(|_| format!("--port {port:?} is not a vsock port number")),
        _ => Err("usage: stratum-guest [--port N]".into()),
    }
}
