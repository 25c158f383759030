//! What can go wrong on the host's networks, one variant per cause, so the
//! caller (the network, VM and pod services) can map each to its gRPC
//! code: a bad argument or a conflict the client can fix, exhaustion of a
//! CIDR, and host failures (netlink, nftables, the state file) it cannot.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use thiserror::Error;

/// A failed network operation.
#[derive(Debug, Error)]
pub enum NetError {
    /// The configuration cannot work (bad bridge name, CIDR too small).
    #[error("invalid network configuration: {0}")]
    InvalidConfig(String),
    /// A request argument is malformed (pod id, namespace, port).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The pod is already attached, in another namespace.
    #[error("pod {pod_id} is already attached to the pod network in namespace {namespace}")]
    AlreadyAttached {
        /// The pod.
        pod_id: String,
        /// The namespace it is attached in.
        namespace: String,
    },
    /// A host port is already mapped to another pod.
    #[error("host port {protocol}/{port} is already mapped to pod {holder}")]
    PortInUse {
        /// "tcp" or "udp".
        protocol: &'static str,
        /// The host port.
        port: u16,
        /// The pod holding it.
        holder: String,
    },
    /// A host port outside the network's host port range.
    #[error("host port {protocol}/{port} is outside the pods' host port range {first}-{last}")]
    PortOutOfRange {
        /// "tcp" or "udp".
        protocol: &'static str,
        /// The host port.
        port: u16,
        /// The range's first port.
        first: u16,
        /// The range's last port.
        last: u16,
    },
    /// A host process already has the host port (a listening socket):
    /// forwarding it to a pod would take its traffic.
    #[error("host port {protocol}/{port} is in use on the host")]
    PortHeldByHost {
        /// "tcp" or "udp".
        protocol: &'static str,
        /// The host port.
        port: u16,
    },
    /// No network has this name.
    #[error("no network {0:?}")]
    NoSuchNetwork(String),
    /// A network of this name exists already.
    #[error("network {0:?} already exists")]
    NetworkExists(String),
    /// What a request asks for clashes with something that exists: an
    /// overlapping CIDR, a bridge name in use, an address the host has.
    #[error("{0}")]
    Conflict(String),
    /// The network does not admit workloads of this namespace.
    #[error("network {network:?} is not for namespace {namespace:?} (it admits {admits})")]
    NotAdmitted {
        /// The network.
        network: String,
        /// The workload's namespace.
        namespace: String,
        /// The namespaces it admits.
        admits: String,
    },
    /// Something is still attached to the network.
    #[error("network {network:?} is in use by {users}: detach them first")]
    InUse {
        /// The network.
        network: String,
        /// Who holds addresses on it.
        users: String,
    },
    /// A requested static address is held by another workload.
    #[error("address {ip} is taken (by {owner})")]
    AddressTaken {
        /// The address.
        ip: Ipv4Addr,
        /// Its holder.
        owner: String,
    },
    /// Every address of the network's CIDR is allocated.
    #[error("no free address left in CIDR {cidr} ({capacity} workload addresses, all allocated)")]
    Exhausted {
        /// The configured CIDR.
        cidr: String,
        /// How many addresses pods can get from it.
        capacity: u32,
    },
    /// The state file holds allocations from another CIDR than the
    /// configured one: changing the CIDR under live pods would hand out
    /// their addresses again or strand them.
    #[error("the default network holds live allocations from {stored}, but the configured CIDR is {configured}")]
    CidrChanged {
        /// The CIDR the allocations came from.
        stored: String,
        /// The configured one.
        configured: String,
    },
    /// An address to release or look up is not in the pod CIDR.
    #[error("{0} is not an address of this network")]
    ForeignAddress(Ipv4Addr),
    /// A netlink request failed.
    #[error("netlink: {op}: {source}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's (or the library's) answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A network namespace could not be created, entered or removed.
    #[error("network namespace {path}: {op}: {source}")]
    Netns {
        /// The netns file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The `nft` binary failed or could not be run.
    #[error("nftables: {0}")]
    Nft(String),
    /// A sysctl could not be read or written.
    #[error("sysctl {path}: {source}")]
    Sysctl {
        /// The /proc/sys file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The kernel has no br_netfilter, so the firewall cannot see traffic
    /// between pods on the bridge and cannot isolate namespaces.
    #[error(
        "bridge netfilter (br_netfilter) is not available: /proc/sys/net/bridge is missing, \
         so namespace isolation cannot be enforced"
    )]
    NoBridgeNetfilter,
    /// A link with the bridge's name exists and is not a bridge.
    #[error("link {0} exists and is not a bridge")]
    NotABridge(String),
    /// Another I/O failure (state directory, mountinfo).
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state file could not be opened (missing directory, another
    /// process holding it, not a redb file).
    #[error("cannot open the network state {path}: {source}")]
    StoreOpen {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: redb::DatabaseError,
    },
    /// The state file failed (I/O error, full disk, corruption).
    #[error("network state: {0}")]
    Store(#[from] redb::Error),
    /// A stored record cannot be read.
    #[error("network state: record {key:?} is unreadable: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

impl NetError {
    pub(crate) fn netlink(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Self {
        let op = op.into();
        move |source| NetError::Netlink { op, source }
    }

    pub(crate) fn io(op: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let op = op.into();
        move |source| NetError::Io { op, source }
    }
}

/// Lets `?` lift every specific redb error into [`NetError::Store`].
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for NetError {
            fn from(e: $t) -> Self {
                NetError::Store(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Shorthand for this module's results.
pub type Result<T, E = NetError> = std::result::Result<T, E>;
