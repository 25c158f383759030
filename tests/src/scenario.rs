//! What to run inside the nested host.

use std::path::PathBuf;
use std::time::Duration;

/// Default wall-clock limit of one nested-host run (TCG is slow).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// Default RAM of the nested host.
pub const DEFAULT_MEMORY_MIB: u32 = 2048;
/// Default CPUs of the nested host.
pub const DEFAULT_HOST_CPUS: u8 = 2;
/// Default silence after which a host that has sent a heartbeat counts as
/// frozen: many heartbeats missed, so a busy host is not mistaken for one.
pub const DEFAULT_FROZEN_AFTER: Duration = Duration::from_secs(180);

/// Where the content of an extra file comes from.
#[derive(Debug, Clone)]
pub enum FileSource {
    /// Read from this path on the machine running the harness; the file's
    /// permission bits are kept.
    Path(PathBuf),
    /// Literal content with the given permission bits (e.g. `0o755`).
    Bytes { data: Vec<u8>, mode: u32 },
}

/// A file placed into the nested host in addition to the base image.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Absolute path inside the nested host, e.g. `/stratum/data/disk.img`.
    pub dest: String,
    pub source: FileSource,
}

/// A disk the nested host sees as a virtio-blk device (`/dev/vda`, `/dev/vdb`,
/// ... in the order they were added): for images too large for the
/// initramfs, such as the node image.
#[derive(Debug, Clone)]
pub struct Drive {
    pub path: PathBuf,
    /// The nested host may write to it; the writes go to a temporary
    /// overlay QEMU discards at exit, never to `path`.
    pub scratch_writes: bool,
}

/// A shell script run as `/scenario.sh` by the nested host's init, plus
/// files it needs and run options. Built with chained methods:
///
/// ```no_run
/// # use stratum_tests::Scenario;
/// let s = Scenario::new("vmm --help")
///     .bytes("/etc/motd", b"hi\n".to_vec(), 0o644)
///     .timeout(std::time::Duration::from_secs(60))
///     .echo(true);
/// ```
#[derive(Debug, Clone)]
pub struct Scenario {
    pub(crate) script: String,
    pub(crate) files: Vec<ExtraFile>,
    pub(crate) drives: Vec<Drive>,
    pub(crate) memory_mib: u32,
    pub(crate) host_cpus: u8,
    pub(crate) timeout: Duration,
    pub(crate) frozen_after: Duration,
    pub(crate) echo: bool,
    pub(crate) interactive: bool,
}

impl Scenario {
    /// A scenario running `script` with `sh` (not `sh -e`); its exit status
    /// becomes [`crate::Outcome::exit_code`].
    pub fn new(script: impl Into<String>) -> Self {
        Self {
            script: script.into(),
            files: Vec::new(),
            drives: Vec::new(),
            memory_mib: DEFAULT_MEMORY_MIB,
            host_cpus: DEFAULT_HOST_CPUS,
            timeout: DEFAULT_TIMEOUT,
            frozen_after: DEFAULT_FROZEN_AFTER,
            echo: false,
            interactive: false,
        }
    }

    /// Copies the host file `src` to `dest` inside the nested host.
    pub fn file(mut self, dest: impl Into<String>, src: impl Into<PathBuf>) -> Self {
        self.files.push(ExtraFile {
            dest: dest.into(),
            source: FileSource::Path(src.into()),
        });
        self
    }

    /// Copies the dynamically linked host program `src` to `dest` inside
    /// the nested host, with the shared libraries and loader `ldd` names,
    /// each at its own path (the nested host has no libraries of its own):
    /// for Debian's tools the tests drive there (`nft` for the agent,
    /// `docker-registry`, `etcdctl`). Panics if `ldd` cannot say, as a
    /// scenario without its program is a broken test.
    pub fn dynamic_binary(mut self, dest: impl Into<String>, src: impl Into<PathBuf>) -> Self {
        let src = src.into();
        let libs = crate::bench::shared_libs(&src).unwrap_or_else(|e| panic!("{e:#}"));
        for lib in libs {
            let dest = lib.to_string_lossy().into_owned();
            if !self.files.iter().any(|f| f.dest == dest) {
                self = self.file(dest, lib);
            }
        }
        self.file(dest, src)
    }

    /// Creates `dest` inside the nested host with literal content.
    pub fn bytes(mut self, dest: impl Into<String>, data: Vec<u8>, mode: u32) -> Self {
        self.files.push(ExtraFile {
            dest: dest.into(),
            source: FileSource::Bytes { data, mode },
        });
        self
    }

    /// Attaches the host file `path` as the next virtio-blk disk of the
    /// nested host; its writes are discarded (see [`Drive`]).
    pub fn drive(mut self, path: impl Into<PathBuf>) -> Self {
        self.drives.push(Drive {
            path: path.into(),
            scratch_writes: true,
        });
        self
    }

    /// The nested host's RAM (default [`DEFAULT_MEMORY_MIB`]); QEMU
    /// allocates it as the nested host touches it.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// The nested host's CPUs (default [`DEFAULT_HOST_CPUS`], at least 1).
    ///
    /// One CPU is for scenarios that boot a full distribution in a VM:
    /// with two, QEMU's multi-threaded TCG emulation of SVM sometimes
    /// corrupts what the VM sees (measured with the Debian node image: about
    /// one boot in six wedged a vCPU in an endless loop of nested page
    /// faults at an address outside the VM's memory, or ended in a triple
    /// fault; the nested host's own kernel once hit a stack guard page on a
    /// vCPU thread). With one CPU, no boot went wrong, at the price of a
    /// slower boot (about 1.6 times). The same guard-page crash came twice
    /// more in scenarios that pause and resume a VM (a snapshot benchmark,
    /// a Diff snapshot test): those run on one CPU too.
    pub fn host_cpus(mut self, cpus: u8) -> Self {
        self.host_cpus = cpus.max(1);
        self
    }

    /// Overrides [`DEFAULT_TIMEOUT`]; QEMU is killed when it expires.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Overrides [`DEFAULT_FROZEN_AFTER`]: how long a host that has sent
    /// its heartbeat (`STRATUM-HOST-ALIVE`, every 10 s) may stay silent
    /// before it counts as frozen; it is kicked on its serial line while
    /// silent (`qemu::kick_every`).
    pub fn frozen_after(mut self, silence: Duration) -> Self {
        self.frozen_after = silence;
        self
    }

    /// Streams the serial console to stdout while the host runs.
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Connects this process's stdin to the serial console (implies
    /// [`Self::echo`]), e.g. to use a shell in the guest during `make run`.
    pub fn interactive(mut self, interactive: bool) -> Self {
        self.interactive = interactive;
        self.echo |= interactive;
        self
    }

    pub fn script(&self) -> &str {
        &self.script
    }

    pub fn files(&self) -> &[ExtraFile] {
        &self.files
    }

    pub fn timeout_value(&self) -> Duration {
        self.timeout
    }
}
