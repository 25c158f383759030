//! `mktap NAME`: creates a persistent TAP device, for scenarios inside the
//! nested test host, whose busybox `ip` cannot (`ip tuntap` is missing).
//! Statically linked like `vmm`.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn create(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.len() > 15 {
        return Err(std::io::Error::other("TAP names are 1 to 15 bytes"));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF takes an ifreq, TUNSETPERSIST an int; `tun` is open.
    unsafe {
        if libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) < 0
            || libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_int) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(name) = std::env::args().nth(1) else {
        eprintln!("usage: mktap NAME");
        return ExitCode::from(2);
    };
    match create(&name) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mktap: {name}: {e}");
            ExitCode::FAILURE
        }
    }
}
