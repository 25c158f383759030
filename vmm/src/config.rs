//! What a VM is made of, as given on the command line, and its validation.
//!
//! Validation here covers what can be judged without opening anything; the
//! builder then checks files and KVM limits before it creates any state.

use std::path::PathBuf;

use crate::arch::layout::CMDLINE_MAX_SIZE;
use crate::arch::mptable;
use crate::mmds::Mmds;
use crate::vmm_config::cpu_config::CpuTemplate;
use crate::vmm_config::mmds::MmdsConfig;
use crate::vmm_config::rate_limiter::{ConfigError, RateLimiterConfig, TokenBucketConfig};

/// Command line used when none is given: serial console, reboot through the
/// keyboard controller (which ends the VM), no PCI probing, and an i8042
/// driver that does not wait for a real keyboard.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConsoleOutput {
    Stdout,
    File(PathBuf),
    /// `PUT /serial`'s path: a file, named pipe or device, opened
    /// read-write and non-blocking (created if missing), as Firecracker
    /// opens it; a regular file is bounded as [`ConsoleOutput::File`] is.
    Named(PathBuf),
}

/// Serialisable: a snapshot keeps the configuration its VM was built with
/// (see `snapshot::state`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u16,
    pub memory_mib: u64,
    pub console: ConsoleOutput,
    /// Largest size of the console log file before it rotates (file only).
    pub console_max_bytes: u64,
    /// Forward the VMM's stdin to the guest's console.
    pub console_input: bool,
    /// `PUT /serial`'s token bucket: console output past it is dropped.
    /// Absent from snapshots made before it existed (none).
    #[serde(default)]
    pub console_rate_limit: Option<TokenBucketConfig>,
    pub kvm_device: PathBuf,
    /// Give the guest a virtio-rng fed by the host's getrandom.
    pub entropy: bool,
    /// The entropy device's rate limiter (bytes handed out, requests).
    pub entropy_rate_limiter: Option<RateLimiterConfig>,
    /// virtio-blk drives, in the order the guest sees them (vda, vdb, ...).
    pub drives: Vec<DriveConfig>,
    /// virtio-net interfaces, in the order the guest sees them (eth0, ...).
    pub nics: Vec<NetConfig>,
    /// A virtio-vsock device with its host Unix socket.
    pub vsock: Option<VsockConfig>,
    /// Back guest memory with 2 MiB pages from the host's hugetlbfs pool
    /// (reserved in advance: /proc/sys/vm/nr_hugepages) instead of
    /// anonymous memory advised for transparent huge pages.
    pub huge_pages: bool,
    /// Firecracker's `track_dirty_pages`: KVM's dirty log on guest memory
    /// and vm-memory's bitmap of the devices' writes, for Diff snapshots.
    /// Absent from snapshots made before it existed (off).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Firecracker's `--boot-timer`: the boot timer answers at
    /// Firecracker's address too, where its guests' init writes.
    pub boot_timer: bool,
    /// A virtio-balloon device with its initial target.
    pub balloon: Option<BalloonConfig>,
    /// The metadata service: which interfaces serve it, where, how.
    /// Absent from snapshots made before it existed (none).
    #[serde(default)]
    pub mmds: Option<MmdsConfig>,
    /// The metadata service's data store, shared with the control API
    /// (never saved: a snapshot keeps the configuration, not the data, as
    /// Firecracker's do). Without one, a VM serving MMDS gets an empty
    /// store of the default size.
    #[serde(skip)]
    pub mmds_store: Option<Mmds>,
    /// Firecracker's custom CPU template (`PUT /cpu-config`), applied to
    /// each vCPU's CPUID and MSRs at boot. Absent from snapshots made
    /// before it existed (none).
    #[serde(default)]
    pub cpu_template: Option<CpuTemplate>,
}

/// A virtio-balloon device as it starts: the target the guest is asked
/// to give back, whether the guest may take pages back under memory
/// pressure, and how often it is asked for statistics (0: never, and no
/// statistics queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BalloonConfig {
    pub amount_mib: u32,
    pub deflate_on_oom: bool,
    pub stats_polling_interval_s: u16,
}

impl BalloonConfig {
    /// Parses `--balloon amount_mib=N[,deflate_on_oom][,stats=S]`.
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        let mut config = Self::default();
        let mut amount = None;
        let number = |key: &str, value: &str| format!("{key} {value:?} is not a number in range");
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("amount_mib", value)) => {
                    amount = Some(value.parse().map_err(|_| number("amount_mib", value))?);
                }
                Some(("stats", value)) => {
                    config.stats_polling_interval_s =
                        value.parse().map_err(|_| number("stats", value))?;
                }
                None if part == "deflate_on_oom" => config.deflate_on_oom = true,
                _ => {
                    return Err(format!(
                        "unexpected {part:?}; expected amount_mib=N[,deflate_on_oom][,stats=S]"
                    ))
                }
            }
        }
        config.amount_mib = amount.ok_or("amount_mib=N is required")?;
        Ok(config)
    }
}

/// The most bytes of a drive's serial (virtio-blk GET_ID).
pub const DRIVE_SERIAL_MAX: usize = 20;

/// A virtio-blk drive backed by a raw image file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DriveConfig {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
    /// What the guest reads as the disk's serial (at most 20 bytes).
    pub serial: Option<String>,
    /// Limits the drive's requests (bytes read and written, requests).
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl DriveConfig {
    /// Parses `--drive path=PATH[,id=ID][,ro][,serial=S]`. Without `id`,
    /// the id is empty; [`name_drives`] numbers such drives.
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        let mut path = None;
        let mut id = String::new();
        let mut read_only = false;
        let mut serial = None;
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("path", value)) if !value.is_empty() => path = Some(PathBuf::from(value)),
                Some(("id", value)) if !value.is_empty() => id = value.to_string(),
                Some(("serial", value)) => {
                    if value.len() > DRIVE_SERIAL_MAX {
                        return Err(format!(
                            "serial {value:?} is longer than {DRIVE_SERIAL_MAX} bytes"
                        ));
                    }
                    serial = Some(value.to_string());
                }
                None if part == "ro" => read_only = true,
                _ => {
                    return Err(format!(
                        "unexpected {part:?}; expected path=PATH[,id=ID][,ro][,serial=S]"
                    ))
                }
            }
        }
        let path = path.ok_or("path=PATH is required")?;
        Ok(Self {
            id,
            path,
            read_only,
            serial,
            rate_limiter: None,
        })
    }
}

/// A virtio-net interface attached to an existing host TAP device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    pub id: String,
    pub tap: String,
    /// The guest's MAC address; the guest picks a random one without it.
    pub mac: Option<[u8; 6]>,
    /// Limits the frames the guest receives (TAP to guest).
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits the frames the guest sends (guest to TAP).
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

impl NetConfig {
    /// Parses `--net tap=NAME[,id=ID][,mac=XX:XX:XX:XX:XX:XX]`.
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        let mut tap = None;
        let mut id = String::new();
        let mut mac = None;
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("tap", value)) if !value.is_empty() => tap = Some(value.to_string()),
                Some(("id", value)) if !value.is_empty() => id = value.to_string(),
                Some(("mac", value)) => mac = Some(parse_mac(value)?),
                _ => {
                    return Err(format!(
                        "unexpected {part:?}; expected tap=NAME[,id=ID][,mac=XX:XX:XX:XX:XX:XX]"
                    ))
                }
            }
        }
        let tap = tap.ok_or("tap=NAME is required")?;
        Ok(Self {
            id,
            tap,
            mac,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        })
    }
}

/// A virtio-vsock device: the guest's context id and the host Unix
/// socket of the hybrid-vsock convention.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockConfig {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// The longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
pub const UDS_PATH_MAX: usize = 107;

impl VsockConfig {
    /// Parses `--vsock cid=N,uds=PATH`.
    pub fn parse_cli(text: &str) -> Result<Self, String> {
        let mut cid = None;
        let mut uds = None;
        for part in text.split(',') {
            match part.split_once('=') {
                Some(("cid", value)) => {
                    cid = Some(
                        value
                            .parse()
                            .map_err(|_| format!("cid {value:?} is not a number"))?,
                    )
                }
                Some(("uds", value)) if !value.is_empty() => uds = Some(PathBuf::from(value)),
                _ => return Err(format!("unexpected {part:?}; expected cid=N,uds=PATH")),
            }
        }
        Ok(Self {
            guest_cid: cid.ok_or("cid=N is required")?,
            uds_path: uds.ok_or("uds=PATH is required")?,
        })
    }

    fn validate(&self) -> Result<(), Error> {
        // 0, 1 and 2 are the hypervisor, local and host; -1 means any.
        if self.guest_cid < 3 || self.guest_cid == u32::MAX {
            return Err(Error::VsockCid(self.guest_cid));
        }
        if self.uds_path.as_os_str().len() > UDS_PATH_MAX {
            return Err(Error::VsockPathTooLong(self.uds_path.clone()));
        }
        Ok(())
    }
}

/// Parses a MAC address written as six colon-separated hex bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok().filter(|_| b.len() == 2))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("{text:?} is not a MAC address (XX:XX:XX:XX:XX:XX)"))?;
    <[u8; 6]>::try_from(bytes)
        .map_err(|_| format!("{text:?} is not a MAC address (XX:XX:XX:XX:XX:XX)"))
}

/// Gives each interface without an id the id `ethN`, N its index.
pub fn name_nics(mut nics: Vec<NetConfig>) -> Vec<NetConfig> {
    for (index, nic) in nics.iter_mut().enumerate() {
        if nic.id.is_empty() {
            nic.id = format!("eth{index}");
        }
    }
    nics
}

/// Gives each drive without an id the id `driveN`, N its index.
pub fn name_drives(mut drives: Vec<DriveConfig>) -> Vec<DriveConfig> {
    for (index, drive) in drives.iter_mut().enumerate() {
        if drive.id.is_empty() {
            drive.id = format!("drive{index}");
        }
    }
    drives
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
            console_max_bytes: crate::devices::legacy::console_log::DEFAULT_MAX_BYTES,
            console_input: true,
            console_rate_limit: None,
            kvm_device: PathBuf::from("/dev/kvm"),
            entropy: false,
            entropy_rate_limiter: None,
            drives: Vec::new(),
            nics: Vec::new(),
            vsock: None,
            huge_pages: false,
            track_dirty_pages: false,
            boot_timer: false,
            balloon: None,
            mmds: None,
            mmds_store: None,
            cpu_template: None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("vsock guest CID {0} is reserved; use 3 or more")]
    VsockCid(u32),
    #[error("vsock socket path {0:?} is longer than {UDS_PATH_MAX} bytes")]
    VsockPathTooLong(PathBuf),
    #[error("a VM needs at least one vCPU")]
    NoVcpus,
    #[error("{0} vCPUs asked for; at most {max} are supported", max = mptable::MAX_CPUS)]
    TooManyVcpus(u16),
    #[error("a VM needs some memory: --memory must be at least 1 MiB")]
    NoMemory,
    #[error("{0} MiB is not a whole number of 2 MiB huge pages")]
    HugePagesSize(u64),
    #[error("{requested} MiB of guest memory asked for, but the host has only {host} MiB")]
    MoreMemoryThanHost { requested: u64, host: u64 },
    #[error("the kernel command line is {0} bytes; Linux accepts at most {max}", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("a drive needs an id")]
    DriveWithoutId,
    #[error("two network interfaces have the id {0:?}")]
    DuplicateNicId(String),
    #[error("two drives have the id {0:?}")]
    DuplicateDriveId(String),
    #[error("drive {id}: the serial is {len} bytes; at most {DRIVE_SERIAL_MAX} fit")]
    DriveSerialTooLong { id: String, len: usize },
    #[error(
        "the balloon's target of {amount_mib} MiB is larger than the guest's {memory_mib} MiB"
    )]
    BalloonTooLarge { amount_mib: u32, memory_mib: u64 },
    #[error("{device}: invalid {field}: {error}")]
    RateLimiter {
        /// "drive ID", "network interface ID" or "entropy".
        device: String,
        /// The API field: rate_limiter, rx_rate_limiter, tx_rate_limiter.
        field: &'static str,
        error: ConfigError,
    },
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
        if self.huge_pages && !self.memory_mib.is_multiple_of(2) {
            return Err(Error::HugePagesSize(self.memory_mib));
        }
        let host = host_memory_mib();
        if self.memory_mib > host {
            return Err(Error::MoreMemoryThanHost {
                requested: self.memory_mib,
                host,
            });
        }
        if let Some(balloon) = self.balloon {
            if u64::from(balloon.amount_mib) > self.memory_mib {
                return Err(Error::BalloonTooLarge {
                    amount_mib: balloon.amount_mib,
                    memory_mib: self.memory_mib,
                });
            }
        }
        if self.cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(Error::CmdlineTooLong(self.cmdline.len()));
        }
        if self.cmdline.contains('\0') {
            return Err(Error::CmdlineNul);
        }
        for (index, drive) in self.drives.iter().enumerate() {
            if drive.id.is_empty() {
                return Err(Error::DriveWithoutId);
            }
            if self.drives[..index].iter().any(|d| d.id == drive.id) {
                return Err(Error::DuplicateDriveId(drive.id.clone()));
            }
            if let Some(serial) = &drive.serial {
                if serial.len() > DRIVE_SERIAL_MAX {
                    return Err(Error::DriveSerialTooLong {
                        id: drive.id.clone(),
                        len: serial.len(),
                    });
                }
            }
            check_limiter(
                &format!("drive {}", drive.id),
                "rate_limiter",
                &drive.rate_limiter,
            )?;
        }
        for (index, nic) in self.nics.iter().enumerate() {
            if self.nics[..index].iter().any(|n| n.id == nic.id) {
                return Err(Error::DuplicateNicId(nic.id.clone()));
            }
            let device = format!("network interface {}", nic.id);
            check_limiter(&device, "rx_rate_limiter", &nic.rx_rate_limiter)?;
            check_limiter(&device, "tx_rate_limiter", &nic.tx_rate_limiter)?;
        }
        check_limiter("entropy", "rate_limiter", &self.entropy_rate_limiter)?;
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

fn check_limiter(
    device: &str,
    field: &'static str,
    limiter: &Option<RateLimiterConfig>,
) -> Result<(), Error> {
    match limiter {
        Some(limiter) => limiter.validate().map_err(|error| Error::RateLimiter {
            device: device.to_string(),
            field,
            error,
        }),
        None => Ok(()),
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
    fn huge_pages_need_whole_2_mib_pages() {
        let mut c = config();
        c.huge_pages = true;
        assert_eq!(c.validate(), Ok(()));
        c.memory_mib = 255;
        assert_eq!(c.validate(), Err(Error::HugePagesSize(255)));
    }

    #[test]
    fn balloon_is_parsed_and_must_fit_in_memory() {
        let b = BalloonConfig::parse_cli("amount_mib=64,deflate_on_oom,stats=1").unwrap();
        assert_eq!(
            b,
            BalloonConfig {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_polling_interval_s: 1,
            }
        );
        assert_eq!(
            BalloonConfig::parse_cli("amount_mib=0").unwrap(),
            BalloonConfig::default()
        );
        for bad in [
            "",
            "deflate_on_oom",
            "amount_mib=-1",
            "amount_mib=4294967296",
            "amount_mib=1,stats=65536",
            "amount_mib=1,hinting",
        ] {
            assert!(BalloonConfig::parse_cli(bad).is_err(), "{bad:?}");
        }
        let mut c = config();
        c.balloon = Some(BalloonConfig {
            amount_mib: 256,
            ..b
        });
        assert_eq!(c.validate(), Ok(()));
        c.balloon = Some(BalloonConfig {
            amount_mib: 257,
            ..b
        });
        assert_eq!(
            c.validate(),
            Err(Error::BalloonTooLarge {
                amount_mib: 257,
                memory_mib: 256
            })
        );
    }

    #[test]
    fn vsock_is_parsed_and_checked() {
        let vsock = VsockConfig::parse_cli("cid=3,uds=/run/v.sock").unwrap();
        assert_eq!(vsock.guest_cid, 3);
        assert!(VsockConfig::parse_cli("uds=/run/v.sock").is_err());
        assert!(VsockConfig::parse_cli("cid=x,uds=/run/v.sock").is_err());
        assert!(VsockConfig::parse_cli("cid=3,uds=").is_err());
        let mut c = config();
        c.vsock = Some(vsock);
        assert_eq!(c.validate(), Ok(()));
        for cid in [0, 1, 2, u32::MAX] {
            c.vsock = Some(VsockConfig::parse_cli(&format!("cid={cid},uds=/v")).unwrap());
            assert_eq!(c.validate(), Err(Error::VsockCid(cid)));
        }
        let long = "/x".repeat(60);
        c.vsock = Some(VsockConfig::parse_cli(&format!("cid=3,uds={long}")).unwrap());
        assert!(matches!(c.validate(), Err(Error::VsockPathTooLong(_))));
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
    fn net_options_parse_and_ids_are_unique() {
        let nic = NetConfig::parse_cli("tap=tap0,mac=02:00:00:00:00:2a").unwrap();
        assert_eq!(nic.tap, "tap0");
        assert_eq!(nic.mac, Some([2, 0, 0, 0, 0, 0x2a]));
        assert!(NetConfig::parse_cli("mac=02:00:00:00:00:2a").is_err());
        assert!(NetConfig::parse_cli("tap=t,mac=02:00:00:00:00").is_err());
        assert!(NetConfig::parse_cli("tap=t,mac=02:00:00:00:00:zz").is_err());
        assert!(NetConfig::parse_cli("tap=t,mac=2:0:0:0:0:2a").is_err());
        let mut c = config();
        c.nics = name_nics(vec![nic.clone(), nic]);
        assert_eq!(c.nics[1].id, "eth1");
        assert_eq!(c.validate(), Ok(()));
        c.nics[1].id = "eth0".into();
        assert_eq!(c.validate(), Err(Error::DuplicateNicId("eth0".into())));
    }

    #[test]
    fn cmdline_is_checked() {
        let mut c = config();
        c.cmdline = "x".repeat(CMDLINE_MAX_SIZE);
        assert_eq!(c.validate(), Err(Error::CmdlineTooLong(CMDLINE_MAX_SIZE)));
        c.cmdline = "console=ttyS0\0evil".into();
        assert_eq!(c.validate(), Err(Error::CmdlineNul));
    }

    fn drive(id: &str) -> DriveConfig {
        DriveConfig {
            id: id.into(),
            path: "/tmp/disk.img".into(),
            read_only: false,
            serial: None,
            rate_limiter: None,
        }
    }

    #[test]
    fn drives_are_checked() {
        let mut c = config();
        c.drives = vec![drive("a"), drive("b")];
        assert_eq!(c.validate(), Ok(()));
        c.drives = vec![drive("a"), drive("b"), drive("a")];
        assert_eq!(c.validate(), Err(Error::DuplicateDriveId("a".into())));
        c.drives = vec![drive("")];
        assert_eq!(c.validate(), Err(Error::DriveWithoutId));
        let mut d = drive("a");
        d.serial = Some("s".repeat(20));
        c.drives = vec![d.clone()];
        assert_eq!(c.validate(), Ok(()));
        d.serial = Some("s".repeat(21));
        c.drives = vec![d];
        assert_eq!(
            c.validate(),
            Err(Error::DriveSerialTooLong {
                id: "a".into(),
                len: 21
            })
        );
    }

    #[test]
    fn rate_limiters_are_checked() {
        use crate::vmm_config::rate_limiter::TokenBucketConfig;
        let limiter = |refill_time| {
            Some(RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig {
                    size: 1 << 20,
                    one_time_burst: None,
                    refill_time,
                }),
                ops: None,
            })
        };
        let mut c = config();
        let mut d = drive("a");
        d.rate_limiter = limiter(1000);
        c.drives = vec![d.clone()];
        c.entropy_rate_limiter = limiter(1000);
        assert_eq!(c.validate(), Ok(()));
        d.rate_limiter = limiter(u64::MAX);
        c.drives = vec![d];
        let error = c.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("drive a: invalid rate_limiter: bandwidth: refill_time"),
            "{error}"
        );
        c.drives.clear();
        let mut nic = NetConfig::parse_cli("tap=tap0").unwrap();
        nic.id = "eth0".into();
        nic.tx_rate_limiter = limiter(u64::MAX);
        c.nics = vec![nic];
        let error = c.validate().unwrap_err().to_string();
        assert!(
            error.starts_with("network interface eth0: invalid tx_rate_limiter"),
            "{error}"
        );
        c.nics.clear();
        c.entropy_rate_limiter = limiter(u64::MAX);
        assert!(matches!(c.validate(), Err(Error::RateLimiter { .. })));
    }

    #[test]
    fn drive_option_is_parsed() {
        assert_eq!(
            DriveConfig::parse_cli("path=/tmp/disk.img,id=root,ro,serial=SN1"),
            Ok(DriveConfig {
                id: "root".into(),
                path: "/tmp/disk.img".into(),
                read_only: true,
                serial: Some("SN1".into()),
                rate_limiter: None,
            })
        );
        let plain = DriveConfig::parse_cli("path=/a").unwrap();
        assert_eq!((plain.id.as_str(), plain.read_only), ("", false));
        let named = name_drives(vec![plain.clone(), drive("x"), plain]);
        let ids: Vec<&str> = named.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["drive0", "x", "drive2"]);
        for bad in [
            "",
            "id=x",
            "path=",
            "path=/a,rw",
            "path=/a,ro=1",
            "path=/a,size=3",
            "path=/a,serial=123456789012345678901",
        ] {
            assert!(DriveConfig::parse_cli(bad).is_err(), "{bad:?}");
        }
    }
}
