//! Stratum node agent.
//!
//! The gRPC service, resource pools and VM lifecycle arrive with issue 4; until
//! then the binary only states what it is, so the workspace layout is final.

fn main() {
    println!(
        "stratum node-agent {}: not implemented yet (see issue 4)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
