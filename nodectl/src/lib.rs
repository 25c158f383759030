//! `nodectl`, the operator CLI for the node agent, as a library so its
//! parsing and rendering are unit-tested; `src/main.rs` only maps
//! the outcome to an exit status.
//!
//! Defaults and environment:
//! - `--addr` (`NODECTL_ADDR`): `https://127.0.0.1:7443`, the agent's
//!   default listen address.
//! - `--certs` (`NODECTL_CERTS`): `data/certs` relative to the current
//!   directory, which is where the agent started by `make run` in the
//!   repository keeps its development PKI; elsewhere pass the directory.
//! - `--insecure`: plaintext h2c, refused unless the address is loopback.
//! - `-o table|json`.
//!
//! Exit status: 0 on success, 1 for a gRPC or other runtime error (printed
//! as `nodectl: CODE: message`), 2 for a usage error; `pod exec` exits with
//! the status of the command it ran.

pub mod args;
pub mod cli;
pub mod connect;
pub mod json;
pub mod progress;
pub mod render;
mod run;
pub mod size;
pub mod table;

pub use run::run;

/// A mistake in how nodectl was invoked that clap could not catch (an
/// address it cannot use, say); reported with exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit code of a command `pod exec` ran, when not 0: nodectl exits
/// with it (see [`exit_status`]) and prints nothing more.
#[derive(Debug, thiserror::Error)]
#[error("the command exited with status {0}")]
pub struct CommandExit(pub i32);

/// nodectl's exit status for a command's exit code: the code itself when
/// it fits in 1..=255, else 1 (an out-of-range code must not read as
/// success).
pub fn exit_status(code: i32) -> u8 {
    u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1)
}

/// The canonical gRPC name of a status code (`NOT_FOUND`), as in the gRPC
/// spec and `grpcurl`, so scripts can match on it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `CODE: message`, with the transport-level cause appended when tonic
/// wraps one (a refused connection, a failed handshake), since its message
/// alone is often just "transport error".
pub fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
