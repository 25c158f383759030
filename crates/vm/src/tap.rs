//! Handing a host TAP device to a jailed `vmm`.
//!
//! An unprivileged process may attach to a persistent TAP only if it is
//! the device's owner (`TUNSETOWNER`) or has CAP_NET_ADMIN, which a
//! jailed `vmm` does not. Before each jailed launch the launcher (root)
//! attaches to each TAP the VM names, makes the VM's uid its owner, and
//! detaches again; the device stays (persistent), now usable by that uid
//! alone. A name that is not an existing TAP is refused here, where the
//! host's `/sys` is visible, with the same advice `vmm` gives.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Why a TAP could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP device {0} does not exist (create it first, e.g. `ip tuntap add {0} mode tap`)")]
    Missing(String),
    #[error("{0} is not a TUN/TAP device")]
    NotTuntap(String),
    #[error("TAP device {name}: {op}: {source}")]
    Io {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Makes `uid`/`gid` the owner of the persistent TAP `name`. A TAP in use
/// by a running VM (attached) is refused by the kernel (`EBUSY`).
pub fn give_to(name: &str, uid: u32, gid: u32) -> Result<(), TapError> {
    let sys = Path::new("/sys/class/net");
    if name.is_empty() || name.len() > 15 || name.contains('/') || !sys.join(name).exists() {
        return Err(TapError::Missing(name.to_string()));
    }
    if !sys.join(name).join("tun_flags").exists() {
        return Err(TapError::NotTuntap(name.to_string()));
    }
    let io = |op| {
        let name = name.to_string();
        move |source| TapError::Io { name, op, source }
    };
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(io("open /dev/net/tun"))?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF takes a live ifreq; `tun` is open.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io("attach")(io::Error::last_os_error()));
    }
    // SAFETY: TUNSETOWNER and TUNSETGROUP take the id by value.
    unsafe {
        if libc::ioctl(tun.as_raw_fd(), libc::TUNSETOWNER, libc::c_ulong::from(uid)) < 0 {
            return Err(io("TUNSETOWNER")(io::Error::last_os_error()));
        }
        if libc::ioctl(tun.as_raw_fd(), libc::TUNSETGROUP, libc::c_ulong::from(gid)) < 0 {
            return Err(io("TUNSETGROUP")(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// The owner uid of TAP `name` as sysfs shows it (`-1`: none).
pub fn owner(name: &str) -> io::Result<i64> {
    let text = std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("owner"))?;
    text.trim().parse().map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_non_tap_devices_are_refused() {
        assert!(matches!(
            give_to("nosuchtap0", 1, 1),
            Err(TapError::Missing(_))
        ));
        assert!(matches!(give_to("../lo", 1, 1), Err(TapError::Missing(_))));
        assert!(matches!(give_to("lo", 1, 1), Err(TapError::NotTuntap(_))));
    }
}
