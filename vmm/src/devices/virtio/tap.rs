//! An existing host TAP device, opened through /dev/net/tun with a virtio
//! net header on every frame (so frames pass between the guest's queues and
//! the TAP unchanged).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The virtio 1.x net header (`virtio_net_hdr_v1`, with `num_buffers`),
/// as TUNSETVNETHDRSZ takes its length and as a byte count.
const VNET_HDR_SIZE: libc::c_int = 12;
pub const VNET_HDR_LEN: usize = VNET_HDR_SIZE as usize;
/// TUNSETIFF flags: a TAP, no packet information, a virtio net header.
/// The kernel's IFF_* are ints; `ifreq` carries them in a short.
const TAP_FLAGS: libc::c_short = 0x0002 | 0x1000 | 0x4000;
const _: () =
    assert!(TAP_FLAGS as libc::c_int == libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
const IFNAMSIZ: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TAP device name {0:?} is empty or longer than 15 bytes")]
    Name(String),
    #[error("TAP device {0} does not exist (create it first, e.g. `ip tuntap add {0} mode tap`)")]
    Missing(String),
    #[error("cannot open /dev/net/tun: {0}")]
    Open(#[source] io::Error),
    #[error("cannot attach to TAP device {name}: {source}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` with the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

pub struct Tap {
    file: File,
}

/// Whether the host says there is no network device `name`. In a jail
/// there is no /sys to ask: then nothing is known missing, and an unknown
/// name fails at TUNSETIFF instead (an unprivileged process cannot create
/// a device; its launcher checked the name where /sys is).
pub fn is_known_missing(name: &str) -> bool {
    let sys = Path::new("/sys/class/net");
    sys.is_dir() && !sys.join(name).exists()
}

impl Tap {
    /// Opens the existing TAP device `name`. TUNSETIFF would create a new,
    /// temporary device for an unknown name; an operator who mistyped it
    /// wants an error instead, so the name is checked first.
    pub fn open(name: &str) -> Result<Self, Error> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('/') {
            return Err(Error::Name(name.to_string()));
        }
        if is_known_missing(name) {
            return Err(Error::Missing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(Error::Open)?;
        let attach = |source| Error::Attach {
            name: name.to_string(),
            source,
        };
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: TAP_FLAGS,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let hdr_len = VNET_HDR_SIZE;
        // SAFETY: each ioctl gets an argument of the type it expects and
        // `file` is an open tun device.
        unsafe {
            if libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) < 0 {
                return Err(attach(io::Error::last_os_error()));
            }
            if libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) < 0 {
                return Err(attach(io::Error::last_os_error()));
            }
            // No checksum or segmentation offloads: we offer none to the guest.
            if libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_uint) < 0 {
                return Err(attach(io::Error::last_os_error()));
            }
        }
        Ok(Self { file })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_and_missing_devices_are_refused() {
        assert!(matches!(Tap::open(""), Err(Error::Name(_))));
        assert!(matches!(
            Tap::open("a-very-long-tap-name"),
            Err(Error::Name(_))
        ));
        assert!(matches!(Tap::open("../eth0"), Err(Error::Name(_))));
        assert!(matches!(Tap::open("nosuchtap0"), Err(Error::Missing(_))));
    }
}
