//! The control API: Firecracker's HTTP/1.1 + JSON API on a Unix socket.
//!
//! Layers, each unaware of the one above:
//! - [`http`]: bytes to requests and responses back to bytes;
//! - [`request`]: method + path + body to a typed [`VmmAction`];
//! - [`server`]: the socket, one thread per connection, persistent
//!   connections;
//! - [`controller`]: the VMM side, which owns the configuration and starts
//!   the VM; the config file (`--config-file`) drives it directly.

pub mod controller;
pub mod http;
pub mod request;
pub mod server;

pub use controller::{ActionError, Controller, InstanceState, VmmAction, VmmData};
pub use server::ApiServer;
