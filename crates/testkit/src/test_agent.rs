//! A real node-agent process for the API tests: its own data dir, port
//! and cgroup subtree, killed and cleaned up (VMs, cgroups, files) on drop.
//! Built on [`AgentProcess`]; it panics where that returns errors, as a
//! test wants.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::agent_process::AgentProcess;
use crate::bins::bin;

use stratum_api::proto;
use stratum_api::proto::host_client::HostClient;
use stratum_api::proto::resource_pools_client::ResourcePoolsClient;
use stratum_api::proto::virtual_machines_client::VirtualMachinesClient;
use stratum_cgroup::{Cgroup, Hierarchy, HierarchyConfig};
use tonic::transport::Channel;

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestAgent {
    /// The test's working directory: the agent's data dir and log inside.
    pub dir: PathBuf,
    /// The port it listens on now (each start picks a new one).
    pub port: u16,
    /// Its cgroup subtree's name.
    pub cgroup_root: String,
    /// The data dir is a tmpfs of this test's ([`Self::start_on_tmpfs`]).
    tmpfs: bool,
    process: AgentProcess,
}

/// The vmm binary the agent runs: `STRATUM_VMM`, else the workspace's
/// static release build (`make static`): the agent runs vmm in a jail,
/// which holds no libraries.
pub fn vmm_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("STRATUM_VMM") {
        return PathBuf::from(path);
    }
    let path = crate::bins::static_bin("vmm");
    assert!(
        path.is_file(),
        "{} is missing: build it with `make static` (or set STRATUM_VMM)",
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
        Self::start_full(name, extra, false, None)
    }

    /// Starts an agent serving mTLS on a free loopback port.
    pub fn start_mtls(name: &str) -> TestAgent {
        Self::start_mtls_with(name, &[])
    }

    /// [`Self::start_mtls`] with more agent arguments.
    pub fn start_mtls_with(name: &str, extra: &[&str]) -> TestAgent {
        Self::start_full(name, extra, true, None)
    }

    /// Starts a plaintext agent whose data dir is a tmpfs of `mib` MiB: a
    /// small disk a test can fill (needs root, as the agent does).
    pub fn start_on_tmpfs(name: &str, mib: u32, extra: &[&str]) -> TestAgent {
        Self::start_full(name, extra, false, Some(mib))
    }

    fn start_full(name: &str, extra: &[&str], tls: bool, tmpfs_mib: Option<u32>) -> TestAgent {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{name}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("stratum-agent-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(mib) = tmpfs_mib {
            mount_tmpfs(&dir.join("data"), mib);
        }
        let cgroup_root = format!("st-{}", tag.replace('_', "-"));
        let mut args = vec!["--vmm".to_string(), vmm_binary().display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let process = AgentProcess::start_with(
            &bin("node-agent"),
            dir.clone(),
            cgroup_root.clone(),
            &args,
            tls,
        )
        .unwrap_or_else(|e| panic!("node-agent: {e}"));
        TestAgent {
            dir,
            port: process.port(),
            cgroup_root,
            tmpfs: tmpfs_mib.is_some(),
            process,
        }
    }

    /// Restarts the agent process on the same data dir, on a port of its
    /// choosing.
    pub fn spawn(&mut self) {
        self.process
            .respawn()
            .unwrap_or_else(|e| panic!("node-agent: {e}"));
        self.port = self.process.port();
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    /// Waits up to `timeout` for the agent to exit by itself.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// kill -9, as a crash.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    pub fn url(&self) -> String {
        self.process.addr()
    }

    /// The CRI socket the agent serves.
    pub fn cri_socket(&self) -> PathBuf {
        self.process.cri_socket()
    }

    /// A channel to the agent's CRI socket.
    pub async fn cri_channel(&self) -> Channel {
        crate::cri::channel(&self.cri_socket())
            .await
            .unwrap_or_else(|e| panic!("CRI socket {}: {e}", self.cri_socket().display()))
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
        Command::new(bin("nodectl"))
            .args(["--addr", &self.url(), "--insecure"])
            .args(args)
            .output()
            .expect("run nodectl")
    }

    /// `nodectl vm create` arguments for a small worker VM of the
    /// [`halting_kernel`] in pool `pool`.
    pub fn halting_vm_args(&self, name: &str, pool: &str) -> Vec<String> {
        let kernel = halting_kernel(&self.dir);
        [
            "vm", "create", name, "--pool", pool, "--role", "worker", "--vcpus", "1", "--memory",
            "32", "--kernel",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([kernel.display().to_string()])
        .collect()
    }

    /// The spec of a 32 MiB, 1-vCPU worker VM in `pool` ("" = root)
    /// whose guest halts forever ([`halting_kernel`]).
    pub fn halting_vm_spec(&self, name: &str, pool: &str) -> proto::VmSpec {
        proto::VmSpec {
            name: name.into(),
            pool_id: pool.into(),
            role: proto::VmRole::Worker as i32,
            vcpus: 1,
            memory_mib: 32,
            kernel: halting_kernel(&self.dir).to_string_lossy().into_owned(),
            cmdline: "console=ttyS0".into(),
            ..Default::default()
        }
    }

    /// Runs `nodectl` against this mTLS agent ([`Self::start_mtls`]) with
    /// the client certificate directory `certs`.
    pub fn nodectl_as(&self, certs: &Path, args: &[&str]) -> std::process::Output {
        Command::new(bin("nodectl"))
            .arg("--addr")
            .arg(format!("https://127.0.0.1:{}", self.port))
            .arg("--certs")
            .arg(certs)
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
        // A test tears down hard: kill -9 first, so no orderly shutdown
        // runs, then the cgroup subtree with whatever still runs in it.
        self.process.kill9();
        self.process.stop();
        if self.tmpfs {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(self.dir.join("data"))
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The agent's runtime directory: netns files (the networks' bind
        // mount among them) and pods' state.
        let run_dir = Path::new("/run/stratum").join(&self.cgroup_root);
        crate::pod_agent::unmount_under(&run_dir);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
}

/// Creates a VM through the agent's API.
pub async fn create_vm(
    agent: &TestAgent,
    spec: proto::VmSpec,
) -> Result<proto::VirtualMachine, tonic::Status> {
    agent
        .vms()
        .await
        .create(proto::CreateVmRequest { spec: Some(spec) })
        .await
        .map(|r| r.into_inner())
}

/// A VM's state (UNSPECIFIED without a status).
pub fn vm_state(vm: &proto::VirtualMachine) -> proto::VmState {
    vm.status
        .as_ref()
        .map_or(proto::VmState::Unspecified, |s| s.state())
}

/// VM `id`, which must exist.
pub async fn get_vm(agent: &TestAgent, id: &str) -> proto::VirtualMachine {
    agent
        .vms()
        .await
        .get(proto::GetVmRequest { id: id.into() })
        .await
        .unwrap_or_else(|e| panic!("get VM {id}: {e}"))
        .into_inner()
}

/// Waits (up to 10 s) until VM `id` reaches `want`.
pub async fn wait_vm_state(
    agent: &TestAgent,
    id: &str,
    want: proto::VmState,
) -> proto::VirtualMachine {
    for _ in 0..100 {
        let vm = get_vm(agent, id).await;
        if vm_state(&vm) == want {
            return vm;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "VM {id} never became {want:?}: {:?}\n{}",
        get_vm(agent, id).await,
        agent.log()
    );
}

/// File `file` of the FAT image `image` (a VM's cloud-init seed), read
/// with mtools.
pub fn fat_file(image: &Path, file: &str) -> String {
    let out = Command::new("mtype")
        .arg("-i")
        .arg(image)
        .arg(format!("::{file}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| panic!("mtype (mtools; `make deps` installs it): {e}"));
    assert!(out.status.success(), "mtype {file}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mounts a tmpfs of `mib` MiB at `dir` (made first).
fn mount_tmpfs(dir: &Path, mib: u32) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mib}m,mode=0755"),
            "tmpfs",
        ])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(status.success(), "mount a tmpfs at {}", dir.display());
}

/// An x86-64 ELF "kernel" that halts forever with interrupts off (cli;
/// hlt; jmp back): a VM that runs until it is stopped, on any KVM —
/// this host's PVM-backed one included.
pub fn halting_kernel(dir: &Path) -> PathBuf {
    tiny_kernel(dir, "halting-kernel", &[0xfa, 0xf4, 0xeb, 0xfd])
}

/// An x86-64 ELF "kernel" that KVM cannot run, on any host: it reads an
/// address no memory backs with `crc32`, an instruction KVM's emulator
/// does not know, so the vCPU exits with KVM_EXIT_INTERNAL_ERROR
/// (emulation failure) and vmm fails with its own error line — a VM that
/// fails after a successful start.
pub fn emulation_failure_kernel(dir: &Path) -> PathBuf {
    let mut code = vec![0x48, 0xb8]; // mov rax, 0x3000_0000 (no RAM there)
    code.extend_from_slice(&0x3000_0000u64.to_le_bytes());
    code.extend_from_slice(&[0xf2, 0x0f, 0x38, 0xf0, 0x00]); // crc32 eax, byte [rax]
    code.extend_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp back
    tiny_kernel(dir, "emulation-failure-kernel", &code)
}

/// A one-segment ELF at 16 MiB whose entry runs `code`.
fn tiny_kernel(dir: &Path, name: &str, code: &[u8]) -> PathBuf {
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
    image[0x78..0x78 + code.len()].copy_from_slice(code);
    let path = dir.join(name);
    std::fs::write(&path, image).unwrap();
    path
}

/// A finished command's status and output, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
