//! The guest agent protocol, `stratum.guest.v1`: what the node agent and
//! `stratum-guest` (the agent inside a node VM) say to each other over
//! vsock.
//!
//! This crate owns the wire format: the messages
//! (`proto/stratum/guest/v1/guest.proto`, which also documents the
//! conversation) and their framing, a 4-byte big-endian length before each
//! message. Both ends decode with [`FrameDecoder`], which holds at most one
//! frame of [`MAX_FRAME`] bytes whatever the peer sends: a guest is not
//! trusted, and neither is what arrives over its socket. The agent binary
//! (feature `agent`, `src/bin/stratum-guest`) is built from the same crate,
//! so the two ends cannot disagree on the format.

mod frame;

pub use frame::{encode, FrameDecoder, FrameError, HEADER_LEN, MAX_FRAME};

/// The protobuf messages, generated from `guest.proto`.
#[allow(clippy::doc_markdown)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/stratum.guest.v1.rs"));
}

/// The guest vsock port the guest agent listens on.
pub const PORT: u32 = 1024;

/// The protocol version this crate speaks (`Hello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;
