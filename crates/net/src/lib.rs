//! Pod networking: how pods that run directly on the host (next to VMs)
//! get an address, reach each other and the host, publish ports, and stay
//! apart from other tenants' pods.
//!
//! ```text
//!   host netns                                   pod netns (/run/stratum/netns/<pod>)
//!   stratum0 (bridge, 10.88.0.1/16) ── s….(veth) ═══ eth0 10.88.0.N/16, default via .1
//!   table inet stratum: isolation, DNAT for host ports, masquerade    lo up
//!   table bridge stratum: each pod port may only send from its own address
//! ```
//!
//! Each pod gets a named network namespace (bound under a run directory so
//! the OCI runtime can be pointed at it and it outlives the agent), a veth
//! pair into it from the host bridge, an address from the configured CIDR
//! that IPAM never hands to two live pods and persists before returning,
//! optional host port mappings, and membership in a *namespace* (the
//! top-level resource pool): pods of different namespaces cannot reach
//! each other unless a policy allows it. Everything is driven from Rust
//! (rtnetlink for links, addresses and routes; raw syscalls for netns)
//! except the firewall, which is a ruleset generated here and loaded with
//! `nft -f -` into a table of its own (one name, in the `inet` and
//! `bridge` families; see [`nft`] for why both).
//!
//! Host requirements: root (CAP_NET_ADMIN, CAP_SYS_ADMIN), the `nft`
//! binary (Debian package `nftables`), and br_netfilter in the kernel
//! (checked at open). The crate's public entry point is [`HostNetworks`];
//! the lower layers are public for tests and tools.
//!
//! One concept per file: [`cidr`] the address range, [`ipam`] the
//! allocator, [`store`] the state file, [`names`] derived names and id
//! checks, [`netns`] namespaces, [`netlink`] rtnetlink operations,
//! [`bridge`] the host bridge, [`veth`] a pod's link, [`portmap`] host
//! ports, [`nft`] the firewall, [`config`] the settings and [`network`]
//! the whole.

pub mod bridge;
pub mod cidr;
pub mod config;
pub mod error;
pub mod ipam;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod network;
pub mod nft;
pub mod portmap;
pub mod store;
pub mod tap;
pub mod veth;

pub use cidr::Ipv4Cidr;
pub use config::{NetConfig, DEFAULT_HOST_PORTS, DEFAULT_NETWORK};
pub use error::NetError;
pub use ipam::Ipam;
pub use network::{
    Holder, HostNetworks, Live, NetworkInfo, NetworkRequest, PodAttachment, ReconcileReport,
    Reservation,
};
pub use portmap::{PortMapping, Protocol};
pub use store::{NetworkRecord, TapRecord};
