//! Compiles the agent's private durable records
//! (`proto/stratum/agent/v1/records.proto`) with protox. The records embed
//! messages of the public API; those are not generated again here but
//! named in `stratum_api::proto` (`extern_path`), so a record holds the
//! very types the gRPC services take.

const API_DIR: &str = "../proto";
const RECORDS_DIR: &str = "proto";
const RECORDS_FILE: &str = "stratum/agent/v1/records.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={RECORDS_DIR}");
    println!("cargo:rerun-if-changed={API_DIR}/stratum");
    let fds = protox::compile([RECORDS_FILE], [API_DIR, RECORDS_DIR])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .btree_map(".")
        .extern_path(".stratum.v1", "::stratum_api::proto")
        .compile_fds(fds)?;
    Ok(())
}
