//! TAP devices for VM NICs. The agent (root) makes each one persistent
//! through `/dev/net/tun`, with `IFF_VNET_HDR` (the vmm's virtio-net
//! passes the virtio header through for checksum and segmentation
//! offloads) and the VM's jail uid as its owner, so the unprivileged vmm
//! can attach to it and nobody else can; the network then puts it on its
//! bridge and brings it up through netlink ([`super::netlink`]), and
//! deletes it through netlink when the VM stops.
//!
//! Persistent rather than a descriptor handed to the vmm: the vmm opens
//! its TAP by name (its Firecracker-compatible API names a
//! `host_dev_name`), and a device the agent owns by name is one a
//! restarted agent finds again.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use super::error::{NetError, Result};
use super::names::MAX_LINK_NAME;

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Makes the persistent TAP `name`, owned by `owner` (uid, gid) when
/// given. A TAP of that name that exists already is taken over (its owner
/// set again), so a retried plug-in succeeds.
pub fn create(name: &str, owner: Option<(u32, u32)>) -> Result<()> {
    if name.is_empty() || name.len() > MAX_LINK_NAME {
        return Err(NetError::InvalidArgument(format!(
            "TAP name {name:?} must be 1 to {MAX_LINK_NAME} bytes"
        )));
    }
    let fail = |op: &str| {
        let op = format!("TAP {name}: {op}");
        move |e| NetError::io(op)(e)
    };
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(fail("open /dev/net/tun"))?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let fd = tun.as_raw_fd();
    // SAFETY: TUNSETIFF takes a live ifreq; `tun` is open for the call.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req) } < 0 {
        return Err(fail("TUNSETIFF")(io::Error::last_os_error()));
    }
    if let Some((uid, gid)) = owner {
        // SAFETY: TUNSETOWNER and TUNSETGROUP take the id by value.
        unsafe {
            if libc::ioctl(fd, libc::TUNSETOWNER, libc::c_ulong::from(uid)) < 0 {
                return Err(fail("TUNSETOWNER")(io::Error::last_os_error()));
            }
            if libc::ioctl(fd, libc::TUNSETGROUP, libc::c_ulong::from(gid)) < 0 {
                return Err(fail("TUNSETGROUP")(io::Error::last_os_error()));
            }
        }
    }
    // SAFETY: TUNSETPERSIST takes a flag by value; the device outlives
    // `tun` when it is set.
    if unsafe { libc::ioctl(fd, libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(fail("TUNSETPERSIST")(io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether link `name` is a TUN/TAP device (sysfs has its flags).
pub fn is_tuntap(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && std::path::Path::new("/sys/class/net")
            .join(name)
            .join("tun_flags")
            .exists()
}
