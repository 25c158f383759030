//! `stratum-jailer`: runs one program (the VM's `vmm`) in a jail. See the
//! `stratum_jail` crate docs for what the jail is and the launch protocol.
//!
//! Exit status: 0 once the jailed program runs and stdin has closed; 1 if
//! the jail could not be built (the reason on stderr, nothing left
//! running); 2 for command-line errors.

use std::process::ExitCode;

use clap::Parser;
use stratum_jail::{jailer, JailSpec};

fn main() -> ExitCode {
    let spec = JailSpec::parse();
    match jailer::run(&spec) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratum-jailer: error: {e}");
            ExitCode::FAILURE
        }
    }
}
