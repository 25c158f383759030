//! A real node-agent process for the API tests: its own data dir, port
//! and cgroup subtree, killed and cleaned up (VMs, cgroups, files) on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use node_agent::cgroup::{Cgroup, Hierarchy, HierarchyConfig};
use node_agent::proto::host_client::HostClient;
use node_agent::proto::resource_pools_client::ResourcePoolsClient;
use node_agent::proto::virtual_machines_client::VirtualMachinesClient;
use tonic::transport::Channel;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestAgent {
    pub dir: PathBuf,
    pub port: u16,
    pub cgroup_root: String,
    pub child: Option<Child>,
    extra: Vec<String>,
    /// Serve mTLS (with certificates made on first start) instead of
    /// loopback plaintext.
    tls: bool,
}

/// The vmm binary the agent runs: `STRATUM_VMM`, else the workspace's
/// debug build (`cargo test --workspace` builds it for vmm's own tests).
pub fn vmm_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STRATUM_VMM") {
        return PathBuf::from(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vmm");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p vmm` or set STRATUM_VMM",
        path.display()
    );
    path
}

impl TestAgent {
    /// Starts an agent with plaintext gRPC on a free loopback port.
    pub fn start(name: &str) -> TestAgent {
        Self::start_with(name, &[])
    }

    pub fn start_with(name: &str, extra: &[&str]) -> TestAgent {
        Self::start_full(name, extra, false)
    }

    /// Starts an agent serving mTLS on a free loopback port.
    pub fn start_mtls(name: &str) -> TestAgent {
        Self::start_full(name, &[], true)
    }

    fn start_full(name: &str, extra: &[&str], tls: bool) -> TestAgent {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{name}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("stratum-agent-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut agent = TestAgent {
            dir,
            port: 0,
            cgroup_root: format!("st-{}", tag.replace('_', "-")),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        agent.spawn();
        agent
    }

    /// (Re)starts the agent process on the same data dir, on a port of its
    /// choosing.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_node-agent"));
        cmd.arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--vmm")
            .arg(vmm_binary())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("agent.log")).unwrap());
        if !self.tls {
            cmd.arg("--insecure-plaintext");
        }
        cmd.args(["--reserve-cpu", "0", "--reserve-memory-mib", "0"]);
        self.child = Some(cmd.spawn().expect("spawn node-agent"));
        self.wait_listening();
    }

    /// Waits for the agent's "serving" log line and takes the port from
    /// it (the agent listens on port 0, so no two tests can collide).
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(port) = serving_port(&self.log()) {
                self.port = port;
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("node-agent exited {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "node-agent never listened:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// kill -9, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect to the agent")
    }

    pub async fn pools(&self) -> ResourcePoolsClient<Channel> {
        ResourcePoolsClient::new(self.channel().await)
    }

    pub async fn vms(&self) -> VirtualMachinesClient<Channel> {
        VirtualMachinesClient::new(self.channel().await)
    }

    pub async fn host(&self) -> HostClient<Channel> {
        HostClient::new(self.channel().await)
    }

    /// Runs `nodectl` against this (plaintext) agent.
    pub fn nodectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_nodectl"))
            .args(["--addr", &self.url(), "--insecure"])
            .args(args)
            .output()
            .expect("run nodectl")
    }

    pub fn hierarchy(&self) -> Hierarchy {
        Hierarchy::detect_with(&HierarchyConfig {
            root_name: self.cgroup_root.clone(),
            ..HierarchyConfig::default()
        })
        .unwrap()
    }

    /// The agent's cgroup for `path` below its root (pool ids, `vm-<id>`).
    pub fn cgroup(&self, path: &str) -> Cgroup {
        self.hierarchy().open(Path::new(path)).unwrap()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
        if let Ok(root) = self.hierarchy().root() {
            teardown(&self.hierarchy(), &root, Path::new(""));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills everything in the subtree and removes it, leaves first.
fn teardown(h: &Hierarchy, cgroup: &Cgroup, path: &Path) {
    for child in cgroup.children().unwrap_or_default() {
        let child_path = path.join(&child);
        if let Ok(c) = h.open(&child_path) {
            teardown(h, &c, &child_path);
        }
    }
    let _ = cgroup.kill_all(Duration::from_secs(5));
    let _ = cgroup.remove();
}

/// The port in the "node-agent serving" line (`… bound=127.0.0.1:PORT …`);
/// each start truncates the log.
fn serving_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("node-agent serving"))?;
    let bound = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("bound="))?;
    bound.rsplit(':').next()?.parse().ok()
}

/// An x86-64 ELF "kernel" that halts forever with interrupts off (cli;
/// hlt; jmp back): a VM that runs until it is stopped, on any KVM —
/// this host's PVM-backed one included.
pub fn halting_kernel(dir: &Path) -> PathBuf {
    let code = [0xfa, 0xf4, 0xeb, 0xfd];
    let size = 4096usize;
    let mut image = vec![0u8; 0x78 + size];
    image[0..4].copy_from_slice(b"\x7fELF");
    image[4] = 2;
    image[5] = 1;
    image[6] = 1;
    image[16..18].copy_from_slice(&2u16.to_le_bytes());
    image[18..20].copy_from_slice(&62u16.to_le_bytes());
    image[20..24].copy_from_slice(&1u32.to_le_bytes());
    image[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    image[32..40].copy_from_slice(&64u64.to_le_bytes());
    image[52..54].copy_from_slice(&64u16.to_le_bytes());
    image[54..56].copy_from_slice(&56u16.to_le_bytes());
    image[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    image[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    image[ph + 4..ph + 8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    image[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
    image[ph + 16..ph + 24].copy_from_slice(&0x100_0000u64.to_le_bytes());
    image[ph + 24..ph + 32].copy_from_slice(&0x100_0000u64.to_le_bytes());
    image[ph + 32..ph + 40].copy_from_slice(&(size as u64).to_le_bytes());
    image[ph + 40..ph + 48].copy_from_slice(&(size as u64).to_le_bytes());
    image[0x78..0x78 + code.len()].copy_from_slice(&code);
    let path = dir.join("halting-kernel");
    std::fs::write(&path, image).unwrap();
    path
}
