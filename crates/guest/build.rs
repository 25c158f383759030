//! Compiles the guest agent protocol (`proto/stratum/guest/v1/guest.proto`)
//! with protox, a pure-Rust protobuf compiler (no `protoc` needed), into
//! prost messages.

use std::io;

const PROTO: &str = "proto/stratum/guest/v1/guest.proto";

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"]).map_err(io::Error::other)?;
    prost_build::Config::new().compile_fds(descriptors)
}
