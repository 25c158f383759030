//! The microVM metadata service (MMDS), as Firecracker has it: a JSON
//! document the host writes through the control API (`PUT`/`PATCH`/`GET
//! /mmds`) and the guest reads over HTTP at a link-local address
//! (169.254.169.254 unless configured), through the network interfaces
//! `PUT /mmds/config` names.
//!
//! - [`data_store`]: the document, its size limit, its version (V1, V2)
//!   and the session tokens V2 requires; one per VM, shared by the API
//!   and every interface that serves it ([`Mmds`]).
//! - [`token`]: session tokens, random, with an expiry, bounded in number.
//! - [`http`]: the guest's HTTP requests to answers, in Firecracker's
//!   formats (IMDS plain text or JSON) and with its status codes.
//! - [`stack`]: the guest's frames for MMDS (ARP requests for its address,
//!   IPv4 to it) taken off an interface's transmit path and answered by a
//!   userspace TCP/IP stack (smoltcp); its replies go to the guest's
//!   receive queue.
//!
//! The service owns nothing on the host: no socket, no file. It refuses
//! everything but IPv4 TCP to port 80 and ARP requests for its address;
//! what it holds per guest (connections, request bytes, reply frames,
//! tokens) is bounded.

pub mod data_store;
pub mod http;
pub mod metrics;
pub mod stack;
pub mod token;

use std::sync::{Arc, Mutex, MutexGuard};

pub use data_store::{DataStore, MmdsVersion};

/// The VM's data store, shared by the control API and the interfaces that
/// serve MMDS.
#[derive(Debug, Clone)]
pub struct Mmds(Arc<Mutex<DataStore>>);

impl Mmds {
    pub fn new(limit: usize) -> Self {
        Self(Arc::new(Mutex::new(DataStore::new(limit))))
    }

    /// The store. Its state is changed only after every check passed, so a
    /// lock poisoned by a panic elsewhere still guards a consistent store.
    pub fn lock(&self) -> MutexGuard<'_, DataStore> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
