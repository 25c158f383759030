//! What one jail holds, as `stratum-jailer`'s command line: the launcher
//! builds a [`JailSpec`] and turns it into arguments ([`JailSpec::to_args`]);
//! the jailer parses them back (clap) and checks them
//! ([`JailSpec::validate`]). One type for both ends, so they cannot drift.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Where the run directory appears inside the jail.
pub const JAIL_RUN_DIR: &str = "/run";
/// Where device nodes go (each at its host path, e.g. `/dev/kvm`).
const JAIL_DEV_DIR: &str = "/dev";

/// Default open-file limit, as Firecracker's jailer sets it.
pub const DEFAULT_MAX_OPEN_FILES: u64 = 2048;
/// Default process (thread) limit of the jail's uid.
pub const DEFAULT_MAX_PROCESSES: u64 = 1024;

/// A host file shown at a path inside the jail: `JAIL=HOST` on the
/// command line (the jail path is ours and has no `=`; the host path may).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Absolute, normal path inside the jail.
    pub jail: PathBuf,
    /// The host file.
    pub host: PathBuf,
}

impl Bind {
    pub fn new(jail: impl Into<PathBuf>, host: impl Into<PathBuf>) -> Bind {
        Bind {
            jail: jail.into(),
            host: host.into(),
        }
    }

    fn to_arg(&self) -> OsString {
        let mut arg = self.jail.clone().into_os_string();
        arg.push("=");
        arg.push(&self.host);
        arg
    }
}

fn parse_bind(s: &str) -> Result<Bind, String> {
    let (jail, host) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not JAIL_PATH=HOST_PATH"))?;
    if host.is_empty() {
        return Err(format!("{s:?} has no host path"));
    }
    Ok(Bind::new(jail, host))
}

/// A jail spec the jailer refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("uid and gid must not be 0 (root): got uid {uid}, gid {gid}")]
    Root { uid: u32, gid: u32 },
    #[error("jail path {0} is not absolute and normal (no `.`, `..`, `=` or empty parts)")]
    JailPath(PathBuf),
    #[error("jail path {0} is reserved (/, /run and /dev are the jailer's)")]
    Reserved(PathBuf),
    #[error("two things at jail path {0}")]
    Duplicate(PathBuf),
    #[error("device {0} must be an absolute path under /dev")]
    DevicePath(PathBuf),
    #[error("hostname {0:?} must be 1 to 64 letters, digits, dots or dashes")]
    Hostname(String),
    #[error("{0} must be an absolute host path")]
    HostPath(PathBuf),
}

/// One jail: who runs in it, what it holds, what it may use, what runs.
#[derive(Debug, Clone, PartialEq, Eq, clap::Parser)]
#[command(
    name = "stratum-jailer",
    version,
    about = "Run one program (vmm) in a jail: new mount, PID, IPC and UTS namespaces, a \
             private read-only root of only the files and devices named, an unprivileged \
             uid/gid, no capabilities, no_new_privs, resource limits. Prints the jailed \
             process's host pid once it runs; exits when stdin closes."
)]
pub struct JailSpec {
    /// The jail's hostname (UTS namespace).
    #[arg(long)]
    pub hostname: String,
    /// The uid the program runs as (not 0).
    #[arg(long)]
    pub uid: u32,
    /// The gid the program runs as (not 0); no supplementary groups.
    #[arg(long)]
    pub gid: u32,
    /// The host directory shown as /run inside, read-write: the program's
    /// sockets and logs. Also where the jail's root is mounted in the
    /// jail's own mount namespace (the host sees nothing of it).
    #[arg(long, value_name = "DIR")]
    pub run_dir: PathBuf,
    /// A host file shown read-only at JAIL_PATH (repeatable).
    #[arg(long = "ro", value_name = "JAIL_PATH=HOST_PATH", value_parser = parse_bind)]
    pub read_only: Vec<Bind>,
    /// A host file shown read-write at JAIL_PATH (repeatable).
    #[arg(long = "rw", value_name = "JAIL_PATH=HOST_PATH", value_parser = parse_bind)]
    pub writable: Vec<Bind>,
    /// A host character device made at the same path inside, owned by the
    /// jail's uid, mode 0600 (repeatable).
    #[arg(long = "device", value_name = "/dev/…")]
    pub devices: Vec<PathBuf>,
    /// RLIMIT_NOFILE.
    #[arg(long, default_value_t = DEFAULT_MAX_OPEN_FILES)]
    pub max_open_files: u64,
    /// RLIMIT_FSIZE: the largest offset the program may write in a file
    /// [default: unlimited].
    #[arg(long)]
    pub max_file_size: Option<u64>,
    /// RLIMIT_NPROC (processes and threads of the jail's uid).
    #[arg(long, default_value_t = DEFAULT_MAX_PROCESSES)]
    pub max_processes: u64,
    /// The program: a statically linked host executable, shown read-only
    /// at JAIL_PATH and run from there.
    #[arg(long, value_name = "JAIL_PATH=HOST_PATH", value_parser = parse_bind)]
    pub exec: Bind,
    /// The program's arguments (after `--`); its environment is empty.
    #[arg(last = true)]
    pub args: Vec<String>,
}

impl JailSpec {
    /// A jail for `exec` with default limits and nothing else in it yet.
    pub fn new(hostname: &str, uid: u32, gid: u32, run_dir: &Path, exec: Bind) -> JailSpec {
        JailSpec {
            hostname: hostname.to_string(),
            uid,
            gid,
            run_dir: run_dir.to_path_buf(),
            read_only: Vec::new(),
            writable: Vec::new(),
            devices: Vec::new(),
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            max_file_size: None,
            max_processes: DEFAULT_MAX_PROCESSES,
            exec,
            args: Vec::new(),
        }
    }

    /// The jailer's command line for this spec (without the program name).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        push("--hostname", self.hostname.clone().into());
        push("--uid", self.uid.to_string().into());
        push("--gid", self.gid.to_string().into());
        push("--run-dir", self.run_dir.clone().into_os_string());
        for bind in &self.read_only {
            push("--ro", bind.to_arg());
        }
        for bind in &self.writable {
            push("--rw", bind.to_arg());
        }
        for device in &self.devices {
            push("--device", device.clone().into_os_string());
        }
        push("--max-open-files", self.max_open_files.to_string().into());
        if let Some(size) = self.max_file_size {
            push("--max-file-size", size.to_string().into());
        }
        push("--max-processes", self.max_processes.to_string().into());
        push("--exec", self.exec.to_arg());
        args.push("--".into());
        args.extend(self.args.iter().map(OsString::from));
        args
    }

    /// Every file bind, the program's included, with whether it is writable.
    pub fn binds(&self) -> impl Iterator<Item = (&Bind, bool)> {
        let ro = self.read_only.iter().map(|b| (b, false));
        let rw = self.writable.iter().map(|b| (b, true));
        ro.chain(rw).chain(std::iter::once((&self.exec, false)))
    }

    /// Checks what the jailer checks before touching anything.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.uid == 0 || self.gid == 0 {
            return Err(SpecError::Root {
                uid: self.uid,
                gid: self.gid,
            });
        }
        let name_ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        if self.hostname.is_empty()
            || self.hostname.len() > 64
            || !self.hostname.bytes().all(name_ok)
        {
            return Err(SpecError::Hostname(self.hostname.clone()));
        }
        if !self.run_dir.is_absolute() {
            return Err(SpecError::HostPath(self.run_dir.clone()));
        }
        let mut seen = BTreeSet::new();
        for (bind, _) in self.binds() {
            check_jail_path(&bind.jail)?;
            if !bind.host.is_absolute() {
                return Err(SpecError::HostPath(bind.host.clone()));
            }
            if !seen.insert(bind.jail.clone()) {
                return Err(SpecError::Duplicate(bind.jail.clone()));
            }
        }
        for device in &self.devices {
            let under_dev = device.starts_with(JAIL_DEV_DIR) && device != Path::new(JAIL_DEV_DIR);
            if !under_dev || !is_normal_absolute(device) {
                return Err(SpecError::DevicePath(device.clone()));
            }
            if !seen.insert(device.clone()) {
                return Err(SpecError::Duplicate(device.clone()));
            }
        }
        Ok(())
    }
}

fn is_normal_absolute(path: &Path) -> bool {
    let mut components = path.components();
    components.next() == Some(Component::RootDir)
        && components.clone().next().is_some()
        && components.all(|c| matches!(c, Component::Normal(name) if !name.as_encoded_bytes().contains(&b'=')))
        // `components` drops `.` and doubled slashes; the text must be
        // exactly the normal form too.
        && path.as_os_str().len() == normal_len(path)
}

/// Length of `path` written in normal form (`/a/b`).
fn normal_len(path: &Path) -> usize {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.len() + 1),
            _ => None,
        })
        .sum()
}

fn check_jail_path(path: &Path) -> Result<(), SpecError> {
    if !is_normal_absolute(path) {
        return Err(SpecError::JailPath(path.to_path_buf()));
    }
    if path.starts_with(JAIL_RUN_DIR) || path.starts_with(JAIL_DEV_DIR) {
        return Err(SpecError::Reserved(path.to_path_buf()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn spec() -> JailSpec {
        let mut spec = JailSpec::new(
            "vm-1",
            1_900_000_000,
            1_900_000_000,
            Path::new("/var/lib/stratum/vms/vm-1/run"),
            Bind::new("/vmm", "/usr/bin/vmm"),
        );
        spec.read_only
            .push(Bind::new("/vm/kernel", "/srv/a=b/vmlinux"));
        spec.writable
            .push(Bind::new("/vm/disk0", "/data/disk0.img"));
        spec.devices.push("/dev/kvm".into());
        spec.devices.push("/dev/net/tun".into());
        spec.max_file_size = Some(1 << 30);
        spec.args = vec!["--api-sock".into(), "/run/api.sock".into()];
        spec
    }

    #[test]
    fn a_spec_survives_its_command_line() {
        let spec = spec();
        spec.validate().unwrap();
        let mut argv = vec![OsString::from("stratum-jailer")];
        argv.extend(spec.to_args());
        assert_eq!(JailSpec::try_parse_from(argv).unwrap(), spec);
    }

    #[test]
    fn root_paths_out_of_place_and_duplicates_are_refused() {
        let check = |edit: fn(&mut JailSpec)| {
            let mut s = spec();
            edit(&mut s);
            s.validate().unwrap_err()
        };
        assert!(matches!(check(|s| s.uid = 0), SpecError::Root { .. }));
        assert!(matches!(check(|s| s.gid = 0), SpecError::Root { .. }));
        for bad in [
            "vm/kernel",
            "/vm/../etc",
            "/vm/./k",
            "/vm//k",
            "/",
            "/vm/k/",
        ] {
            let mut s = spec();
            s.read_only[0].jail = bad.into();
            assert!(
                matches!(s.validate(), Err(SpecError::JailPath(_))),
                "{bad}: {:?}",
                s.validate()
            );
        }
        assert!(matches!(
            check(|s| s.read_only[0].jail = "/run/api.sock".into()),
            SpecError::Reserved(_)
        ));
        assert!(matches!(
            check(|s| s.read_only[0].jail = "/dev/kvm".into()),
            SpecError::Reserved(_)
        ));
        assert!(matches!(
            check(|s| s.writable[0].jail = "/vm/kernel".into()),
            SpecError::Duplicate(_)
        ));
        assert!(matches!(
            check(|s| s.devices.push("/etc/shadow".into())),
            SpecError::DevicePath(_)
        ));
        assert!(matches!(
            check(|s| s.devices.push("/dev/../etc/shadow".into())),
            SpecError::DevicePath(_)
        ));
        assert!(matches!(
            check(|s| s.read_only[0].host = "relative".into()),
            SpecError::HostPath(_)
        ));
        assert!(matches!(
            check(|s| s.hostname = "a b".into()),
            SpecError::Hostname(_)
        ));
    }

    #[test]
    fn a_bind_without_both_paths_is_refused_by_the_parser() {
        assert!(parse_bind("/vm/kernel").is_err());
        assert!(parse_bind("/vm/kernel=").is_err());
        assert_eq!(
            parse_bind("/k=/x=y").unwrap(),
            Bind::new("/k", "/x=y"),
            "the host path may hold `=`"
        );
    }
}
