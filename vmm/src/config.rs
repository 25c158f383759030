//! What a VM is made of, as given on the command line, and its validation.
//!
//! Validation here covers what can be judged without opening anything; the
//! builder then checks files and KVM limits before it creates any state.

use std::path::PathBuf;

use crate::arch::layout::CMDLINE_MAX_SIZE;
use crate::arch::mptable;

/// Command line used when none is given: serial console, reboot through the
/// keyboard controller (which ends the VM), no PCI probing, and an i8042
/// driver that does not wait for a real keyboard.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleOutput {
    Stdout,
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u16,
    pub memory_mib: u64,
    pub console: ConsoleOutput,
    /// Forward the VMM's stdin to the guest's console.
    pub console_input: bool,
    pub kvm_device: PathBuf,
    /// Give the guest a virtio-rng fed by the host's getrandom.
    pub entropy: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: PathBuf::new(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            vcpus: 1,
            memory_mib: 256,
            console: ConsoleOutput::Stdout,
            console_input: true,
            kvm_device: PathBuf::from("/dev/kvm"),
            entropy: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    #[error("{0} vCPUs asked for; at most {max} are supported", max = mptable::MAX_CPUS)]
    TooManyVcpus(u16),
    #[error("a VM needs some memory: --memory must be at least 1 MiB")]
    NoMemory,
    #[error("{requested} MiB of guest memory asked for, but the host has only {host} MiB")]
    MoreMemoryThanHost { requested: u64, host: u64 },
    #[error("the kernel command line is {0} bytes; Linux accepts at most {max}", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
}

impl VmConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.vcpus == 0 {
            return Err(Error::NoVcpus);
        }
        if self.vcpus > u16::from(mptable::MAX_CPUS) {
            return Err(Error::TooManyVcpus(self.vcpus));
        }
        if self.memory_mib == 0 {
            return Err(Error::NoMemory);
        }
        let host = host_memory_mib();
        if self.memory_mib > host {
            return Err(Error::MoreMemoryThanHost {
                requested: self.memory_mib,
                host,
            });
        }
        if self.cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(Error::CmdlineTooLong(self.cmdline.len()));
        }
        if self.cmdline.contains('\0') {
            return Err(Error::CmdlineNul);
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

/// Physical memory of the host, in MiB.
fn host_memory_mib() -> u64 {
    // SAFETY: sysconf only reads system configuration.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return u64::MAX;
    }
    (pages as u64).saturating_mul(page_size as u64) >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            kernel: "/boot/vmlinux".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn vcpu_count_is_checked() {
        let mut c = config();
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(Error::NoVcpus));
        c.vcpus = 255;
        assert_eq!(c.validate(), Err(Error::TooManyVcpus(255)));
        c.vcpus = 254;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn memory_is_checked_against_the_host() {
        let mut c = config();
        c.memory_mib = 0;
        assert_eq!(c.validate(), Err(Error::NoMemory));
        c.memory_mib = u64::MAX >> 20;
        assert!(matches!(
            c.validate(),
            Err(Error::MoreMemoryThanHost { .. })
        ));
    }

    #[test]
    fn cmdline_is_checked() {
        let mut c = config();
        c.cmdline = "x".repeat(CMDLINE_MAX_SIZE);
        assert_eq!(c.validate(), Err(Error::CmdlineTooLong(CMDLINE_MAX_SIZE)));
        c.cmdline = "console=ttyS0\0evil".into();
        assert_eq!(c.validate(), Err(Error::CmdlineNul));
    }
}
