//! `stratum-pod-init`: the init of a pod's shared PID namespace (see
//! `stratum_runtime::pod_init`). The node agent starts it with its
//! children's PID namespace already unshared; it forks the init into that
//! namespace, prints the init's pid and exits. Takes no arguments.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        eprintln!("usage: stratum-pod-init (started by the node agent; takes no arguments)");
        return ExitCode::from(2);
    }
    match stratum_runtime::pod_init::launch() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stratum-pod-init: cannot start the pod's init: {e}");
            ExitCode::FAILURE
        }
    }
}
