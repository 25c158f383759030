//! Compiles the gRPC API (`stratum/v1`) with protox, a pure-Rust protobuf
//! compiler, so building needs no `protoc` binary; tonic's codegen turns
//! the descriptors into Rust. It also writes the encoded
//! FileDescriptorSet to `$OUT_DIR/stratum_v1_descriptor.bin` for gRPC
//! server reflection.

use std::{env, fs, io, path::PathBuf};

use prost::Message;

const API_DIR: &str = ".";
const API_FILES: [&str; 6] = [
    "stratum/v1/resources.proto",
    "stratum/v1/host.proto",
    "stratum/v1/resource_pools.proto",
    "stratum/v1/virtual_machines.proto",
    "stratum/v1/images.proto",
    "stratum/v1/pods.proto",
];
const DESCRIPTOR_FILE: &str = "stratum_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=stratum");
    let fds = protox::compile(API_FILES, [API_DIR])?;
    write_descriptor(&fds)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Maps as BTreeMap: deterministic encoding and listing order.
        .btree_map(".")
        // The last event of a pull carries the whole image; boxed, so every
        // progress event is not as large as an image.
        .boxed(".stratum.v1.PullImageProgress.event.image")
        .compile_fds(fds)?;
    Ok(())
}

/// The descriptor set reflection serves.
fn write_descriptor(fds: &prost_types::FileDescriptorSet) -> io::Result<()> {
    let out =
        PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| io::Error::other("OUT_DIR unset"))?);
    fs::write(out.join(DESCRIPTOR_FILE), fds.encode_to_vec())
}
