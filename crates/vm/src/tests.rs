//! The driver against the real `vmm` binary, real cgroups (root needed)
//! and this host's `/dev/kvm`.
//!
//! The guest is a tiny ELF that prints a marker on the serial port and
//! loops forever, so the VM stays "Running" until stopped; it runs on any
//! KVM, PVM included. The binary comes from `STRATUM_VMM`, else
//! `<target dir>/debug/vmm` next to this test binary (`cargo build -p vmm`
//! first). Each test has its own uniquely named cgroup root, pool and leaf,
//! killed and removed by a guard even when the test fails.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;
use stratum_cgroup::{Cgroup, Hierarchy, HierarchyConfig};

/// What the tiny guest prints on its serial port.
const MARKER: &[u8] = b"TINY-GUEST-UP\n";

/// Env vars that turn `launcher_child` into the "agent" that launches a
/// VM and is then killed (see `vmm_survives_the_agent_process_group_dying`).
const CHILD_ENV: &str = "STRATUM_VM_TEST_LAUNCHER";
const CHILD_ROOT_ENV: &str = "STRATUM_VM_TEST_ROOT";
const CHILD_RUN_DIR_ENV: &str = "STRATUM_VM_TEST_RUN_DIR";

fn vmm_binary() -> PathBuf {
    stratum_testkit::test_agent::vmm_binary()
}

/// An x86_64 ELF whose one segment at 16 MiB writes `MARKER` to COM1 and
/// spins (`jmp $`).
fn tiny_looping_elf() -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for &byte in MARKER {
        code.extend_from_slice(&[0xb0, byte, 0xee]); // mov al, byte; out dx, al
    }
    code.extend_from_slice(&[0xeb, 0xfe]); // jmp $
    elf_with(&code)
}

fn elf_with(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x100_0000;
    let size = code.len() as u64;
    let mut image = vec![0u8; 0x78];
    image[0..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    image[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    image[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86_64
    image[20..24].copy_from_slice(&1u32.to_le_bytes());
    image[24..32].copy_from_slice(&LOAD.to_le_bytes()); // entry
    image[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    image[52..54].copy_from_slice(&64u16.to_le_bytes());
    image[54..56].copy_from_slice(&56u16.to_le_bytes());
    image[56..58].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    image[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    image[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
    image[ph + 16..ph + 24].copy_from_slice(&LOAD.to_le_bytes());
    image[ph + 24..ph + 32].copy_from_slice(&LOAD.to_le_bytes());
    image[ph + 32..ph + 40].copy_from_slice(&size.to_le_bytes());
    image[ph + 40..ph + 48].copy_from_slice(&size.to_le_bytes());
    image.extend_from_slice(code);
    image
}

/// A unique cgroup root with one pool and one VM leaf, torn down on drop.
struct TestCgroup {
    root_name: String,
    root: Cgroup,
    pool: Cgroup,
    leaf: Cgroup,
}

impl TestCgroup {
    fn new(tag: &str) -> TestCgroup {
        stratum_testkit::root::require_root("cgroups");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root_name = format!("stratum-vmtest-{tag}-{}-{nanos}", std::process::id());
        let hier = hierarchy(&root_name);
        let root = hier.root().expect("create test root");
        let pool = hier.create_pool(&root, "pool").expect("create pool");
        let leaf = hier.create_vm_leaf(&pool, tag).expect("create leaf");
        TestCgroup {
            root_name,
            root,
            pool,
            leaf,
        }
    }

    /// Waits (bounded) until the leaf holds no process.
    fn assert_leaf_empties(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.leaf.procs().expect("read procs").is_empty() {
            assert!(
                Instant::now() < deadline,
                "leaf still holds {:?}",
                self.leaf.procs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn hierarchy(root_name: &str) -> Hierarchy {
    let config = HierarchyConfig {
        root_name: root_name.to_string(),
        ..HierarchyConfig::default()
    };
    Hierarchy::detect_with(&config).expect("detect cgroups")
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.leaf.kill_all(Duration::from_secs(10));
        for cgroup in [&self.leaf, &self.pool, &self.root] {
            if let Err(e) = cgroup.remove() {
                eprintln!("test cleanup: {e}");
            }
        }
    }
}

/// A scratch dir with the tiny kernel and a run dir path.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("vmlinux"), tiny_looping_elf()).expect("write kernel");
        Scratch { dir }
    }

    fn kernel(&self) -> PathBuf {
        self.dir.path().join("vmlinux")
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn spec(&self, id: &str) -> VmProcessSpec {
        VmProcessSpec {
            id: id.to_string(),
            kernel: self.kernel(),
            initrd: None,
            cmdline: None,
            vcpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            nics: Vec::new(),
            vsock_cid: None,
            restore: None,
            metadata: None,
            balloon: None,
        }
    }
}

/// Kills a launched VM on drop if a test failed halfway.
struct Running(VmProcess);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait_exit_timeout(Duration::from_secs(5));
    }
}

fn state(vm: &VmProcess) -> InstanceState {
    vm.info().expect("GET /").state
}

fn wait_for_console(path: &Path, want: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read(path).unwrap_or_default();
        if log.windows(want.len()).any(|w| w == want) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn launch_drive_and_hard_stop_in_a_real_cgroup() {
    let cg = TestCgroup::new("life");
    let s = Scratch::new();
    let vm =
        Running(launch(&vmm_binary(), &s.run_dir(), &s.spec("life"), &cg.leaf).expect("launch"));
    let vm = &vm.0;
    assert!(cg.leaf.procs().expect("procs").contains(&vm.pid()));
    assert!(vm.is_alive() && vm.is_child());
    let info = vm.info().expect("GET /");
    assert_eq!(
        (info.id.as_str(), info.state),
        ("life", InstanceState::Running)
    );

    vm.pause().expect("pause");
    assert_eq!(state(vm), InstanceState::Paused);
    vm.resume().expect("resume");
    assert_eq!(state(vm), InstanceState::Running);
    // The marker first: the guest may still be writing it (a loaded
    // machine runs it late), and the exits are counted as it writes.
    let log = wait_for_console(&vm.console_log(), MARKER);
    let stats = vm.stats().expect("stats");
    assert_eq!(stats.vcpus.len(), 1);
    assert!(
        stats.vcpus[0].exits.io_out >= MARKER.len() as u64,
        "{stats:?}"
    );
    assert!(
        log.ends_with(MARKER),
        "console: {:?}",
        String::from_utf8_lossy(&log)
    );

    vm.hard_stop().expect("hard stop");
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.wait_exit()).await;
    assert_eq!(
        exit.expect("exit in time").expect("wait"),
        ExitInfo {
            code: Some(0),
            signal: None
        }
    );
    assert!(!vm.is_alive());
    cg.assert_leaf_empties();
    assert!(!vm.api_sock().exists(), "vmm removes its socket at exit");
}

#[tokio::test]
async fn kill_is_seen_as_signal_9_and_the_console_stream_ends() {
    let cg = TestCgroup::new("kill");
    let s = Scratch::new();
    let vm =
        Running(launch(&vmm_binary(), &s.run_dir(), &s.spec("kill"), &cg.leaf).expect("launch"));
    let vm = &vm.0;
    let console = ConsoleFollower::new(vm.console_log(), 0)
        .poll_interval(Duration::from_millis(20))
        .until_exit_of(vm.identity());
    wait_for_console(&vm.console_log(), MARKER);
    vm.kill().expect("SIGKILL");
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.wait_exit()).await;
    assert_eq!(
        exit.expect("in time").expect("wait"),
        ExitInfo {
            code: None,
            signal: Some(9)
        }
    );
    // Repeated waits give the same answer.
    assert_eq!(vm.wait_exit().await.expect("again").signal, Some(9));
    vm.kill().expect("killing a dead process is not an error");

    use tokio_stream::StreamExt;
    let chunks = tokio::time::timeout(
        Duration::from_secs(5),
        console.into_stream().collect::<Vec<_>>(),
    )
    .await;
    let bytes: Vec<u8> = chunks
        .expect("stream ends")
        .into_iter()
        .flat_map(|c| c.expect("read"))
        .collect();
    assert_eq!(bytes, MARKER);
    cg.assert_leaf_empties();
}

#[test]
fn a_missing_kernel_is_vmm_message_and_nothing_is_left() {
    let cg = TestCgroup::new("nokernel");
    let s = Scratch::new();
    let mut spec = s.spec("nokernel");
    spec.kernel = s.dir.path().join("no-such-vmlinux");
    let err = launch(&vmm_binary(), &s.run_dir(), &spec, &cg.leaf).unwrap_err();
    let message = err.vmm_message().unwrap_or_default().to_string();
    assert!(
        matches!(&err, LaunchError::Api { step, .. } if step == "boot-source"),
        "{err}"
    );
    assert!(message.contains("no-such-vmlinux"), "{err}");
    cg.assert_leaf_empties();
    assert!(!s.run_dir().exists(), "the run dir is cleaned up");
}

#[test]
fn a_vmm_that_exits_early_reports_its_stderr() {
    use std::os::unix::fs::PermissionsExt;
    let cg = TestCgroup::new("early");
    let s = Scratch::new();
    let fake = s.dir.path().join("fake-vmm");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'vmm: error: cannot open /dev/kvm' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = s.spec("early");
    let err = launch(&fake, &s.run_dir(), &spec, &cg.leaf).unwrap_err();
    assert!(
        matches!(
            err,
            LaunchError::Exited {
                exit: ExitInfo { code: Some(1), .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.vmm_message(), Some("vmm: error: cannot open /dev/kvm"));
    let err = launch(&s.dir.path().join("no-vmm"), &s.run_dir(), &spec, &cg.leaf).unwrap_err();
    assert!(matches!(err, LaunchError::Spawn { .. }), "{err}");
    cg.assert_leaf_empties();
    assert!(!s.run_dir().exists(), "the run dir is cleaned up");
}

#[test]
fn a_bad_drive_names_the_drive() {
    let cg = TestCgroup::new("drive");
    let s = Scratch::new();
    let mut spec = s.spec("drive");
    spec.disks.push(DiskSpec {
        path: s.dir.path().join("missing.img"),
        read_only: false,
        serial: None,
        rate_limit: None,
    });
    let err = launch(&vmm_binary(), &s.run_dir(), &spec, &cg.leaf).unwrap_err();
    assert!(
        matches!(&err, LaunchError::Api { step, .. } if step == "drive disk0"),
        "{err}"
    );
    assert!(
        err.vmm_message()
            .unwrap_or_default()
            .contains("missing.img"),
        "{err}"
    );
    cg.assert_leaf_empties();
}

#[tokio::test]
async fn adopt_checks_the_start_time_and_the_api() {
    let cg = TestCgroup::new("adopt");
    let s = Scratch::new();
    let vm =
        Running(launch(&vmm_binary(), &s.run_dir(), &s.spec("adopt"), &cg.leaf).expect("launch"));
    let vm = &vm.0;

    let adopted = VmProcess::adopt(vm.pid(), vm.start_time(), &s.run_dir()).expect("adopt");
    assert!(!adopted.is_child() && adopted.is_alive());
    assert_eq!(adopted.info().expect("GET /").state, InstanceState::Running);
    let err = VmProcess::adopt(vm.pid(), vm.start_time() + 1, &s.run_dir()).unwrap_err();
    assert!(matches!(err, AdoptError::StartTimeMismatch { .. }), "{err}");
    let err =
        VmProcess::adopt(vm.pid(), vm.start_time(), &s.dir.path().join("elsewhere")).unwrap_err();
    assert!(matches!(err, AdoptError::Api { .. }), "{err}");

    adopted.kill().expect("kill through the adopted handle");
    let exit = tokio::time::timeout(Duration::from_secs(10), adopted.wait_exit()).await;
    assert!(
        !exit.expect("in time").expect("wait").is_known(),
        "not our child: unknown"
    );
    assert_eq!(vm.wait_exit().await.expect("reap").signal, Some(9));
    let err = VmProcess::adopt(vm.pid(), vm.start_time(), &s.run_dir()).unwrap_err();
    assert!(matches!(err, AdoptError::Gone { .. }), "{err}");
}

/// The "agent" launches a VM, then its whole process group gets SIGTERM
/// and SIGKILL (as `kill -9` of an agent started from a shell would): the
/// vmm, in its own session, keeps running and is re-adopted.
#[tokio::test]
async fn vmm_survives_the_agent_process_group_dying() {
    let cg = TestCgroup::new("survive");
    let s = Scratch::new();
    let mut agent = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "tests::launcher_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, s.kernel())
        .env(CHILD_ROOT_ENV, &cg.root_name)
        .env(CHILD_RUN_DIR_ENV, s.run_dir())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn launcher");
    let (pid, start_time) = read_launched(&mut agent);
    let agent_group = i32::try_from(agent.id()).expect("pid");
    // SAFETY: signals to the launcher's own process group only.
    unsafe {
        libc::kill(-agent_group, libc::SIGTERM);
        libc::kill(-agent_group, libc::SIGKILL);
    }
    agent.wait().expect("reap launcher");

    // SAFETY: getsid(2) has no preconditions.
    let (vmm_sid, our_sid) = unsafe { (libc::getsid(pid as i32), libc::getsid(0)) };
    assert_eq!(
        vmm_sid, pid as i32,
        "vmm leads its own session (ours: {our_sid})"
    );
    let vm =
        VmProcess::adopt(pid, start_time, &s.run_dir()).expect("vmm survived and is adoptable");
    assert_eq!(vm.info().expect("GET /").state, InstanceState::Running);
    assert!(cg.leaf.procs().expect("procs").contains(&pid));
    vm.hard_stop().expect("hard stop");
    let exit = tokio::time::timeout(Duration::from_secs(10), vm.wait_exit()).await;
    assert!(!exit.expect("in time").expect("wait").is_known());
    cg.assert_leaf_empties();
}

/// Reads `LAUNCHED <pid> <start time>` from the launcher's stdout.
fn read_launched(agent: &mut std::process::Child) -> (u32, u64) {
    let stdout = agent.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read launcher output");
        // libtest may print "test … ... " on the same line first.
        if let Some((_, rest)) = line.split_once("LAUNCHED ") {
            let mut fields = rest
                .split_whitespace()
                .map(|f| f.parse::<u64>().expect("number"));
            let pid = fields.next().expect("pid");
            let start = fields.next().expect("start time");
            return (u32::try_from(pid).expect("pid"), start);
        }
    }
    panic!("the launcher ended without launching");
}

/// Not a test on its own: the launcher process of
/// `vmm_survives_the_agent_process_group_dying` (does nothing otherwise).
#[test]
fn launcher_child() {
    let Some(kernel) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let root_name = std::env::var(CHILD_ROOT_ENV).expect("root name");
    let run_dir = PathBuf::from(std::env::var_os(CHILD_RUN_DIR_ENV).expect("run dir"));
    let hier = hierarchy(&root_name);
    let leaf_path = Path::new("pool").join(stratum_cgroup::vm_leaf_name("survive"));
    let leaf = hier.open(&leaf_path).expect("open leaf");
    let mut spec = Scratch::new().spec("survive");
    spec.kernel = PathBuf::from(kernel);
    let vm = launch(&vmm_binary(), &run_dir, &spec, &leaf).expect("launch");
    println!("LAUNCHED {} {}", vm.pid(), vm.start_time());
    std::thread::sleep(Duration::from_secs(60));
}

/// The uid and gid of the jailed tests' VMs (the agent's default range's
/// top, which its own tests do not reach).
const JAIL_ID: u32 = 1_900_065_500;

fn jail_options() -> LaunchOptions {
    // The jailed vmm becomes our child when the jailer exits only if we
    // are a subreaper, as the agent is; then its exit status is known.
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
    LaunchOptions {
        jail: Some(JailConfig {
            jailer: stratum_testkit::bins::bin("stratum-jailer"),
            uid: JAIL_ID,
            gid: JAIL_ID,
        }),
        ..LaunchOptions::default()
    }
}

fn proc_status(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} not in {status}"))
        .trim()
        .to_string()
}

/// A persistent TAP made for a test and deleted on drop.
struct TestTap(String);

impl TestTap {
    fn new(name: &str) -> TestTap {
        let status = Command::new("ip")
            .args(["tuntap", "add", name, "mode", "tap"])
            .status()
            .expect("ip tuntap");
        assert!(status.success());
        TestTap(name.to_string())
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["tuntap", "del", &self.0, "mode", "tap"])
            .status();
    }
}

#[tokio::test]
async fn a_jailed_vmm_runs_confined_and_is_driven_and_killed_as_any() {
    let cg = TestCgroup::new("jailed");
    let s = Scratch::new();
    let options = jail_options();
    let disk = s.dir.path().join("disk0.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk");
    let tap = TestTap::new(&format!("stj{}", std::process::id() % 100_000));
    let mut spec = s.spec("jailed");
    spec.disks.push(DiskSpec {
        path: disk.clone(),
        read_only: false,
        serial: None,
        rate_limit: None,
    });
    spec.nics.push(NicSpec {
        tap: tap.0.clone(),
        mac: None,
        rx_rate_limit: None,
        tx_rate_limit: None,
    });
    spec.vsock_cid = Some(3);
    let vm = Running(
        launch_with(&vmm_binary(), &s.run_dir(), &spec, &cg.leaf, &options).expect("launch"),
    );
    let vm = &vm.0;
    let pid = vm.pid();
    let log = wait_for_console(&vm.console_log(), MARKER);
    assert!(log.starts_with(MARKER));
    assert_eq!(
        state(vm),
        InstanceState::Running,
        "the API through the jail"
    );
    vm.pause().expect("pause");
    assert_eq!(state(vm), InstanceState::Paused);
    vm.resume().expect("resume");
    let ids = format!("{JAIL_ID}\t{JAIL_ID}\t{JAIL_ID}\t{JAIL_ID}");
    assert_eq!(proc_status(pid, "Uid:"), ids);
    assert_eq!(proc_status(pid, "Gid:"), ids);
    assert_eq!(proc_status(pid, "CapEff:"), "0000000000000000");
    assert_eq!(proc_status(pid, "CapBnd:"), "0000000000000000");
    assert_eq!(proc_status(pid, "NoNewPrivs:"), "1");
    assert_eq!(proc_status(pid, "Seccomp:"), "2", "vmm's own filters");
    assert_eq!(proc_status(pid, "NSpid:"), format!("{pid}\t1"));
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("its root")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["dev", "run", "vm", "vmm"]);
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let disk_meta = std::fs::metadata(&disk).expect("disk");
    assert_eq!(
        (disk_meta.uid(), disk_meta.mode() & 0o777),
        (JAIL_ID, 0o600)
    );
    let run_meta = std::fs::metadata(s.run_dir()).expect("run dir");
    assert_eq!((run_meta.uid(), run_meta.mode() & 0o777), (JAIL_ID, 0o700));
    let config = vm.api().vm_config().expect("config");
    assert_eq!(config["vsock"]["uds_path"], "/run/vsock.sock", "{config}");
    let vsock = crate::RunDir::new(s.run_dir()).vsock_sock();
    assert!(
        std::os::unix::net::UnixStream::connect(&vsock).is_ok(),
        "the host reaches the jailed VM's vsock socket at {}",
        vsock.display()
    );
    assert_eq!(
        tap::owner(&tap.0).expect("owner"),
        i64::from(JAIL_ID),
        "the TAP is the VM's uid's"
    );
    assert!(
        std::fs::metadata(s.kernel())
            .expect("kernel")
            .permissions()
            .mode()
            & 0o777
            == 0o644,
        "a shared file is left as it was"
    );
    assert!(cg.leaf.procs().expect("procs").contains(&pid));
    vm.kill().expect("kill");
    let exit = vm
        .wait_exit_timeout(Duration::from_secs(5))
        .expect("wait")
        .expect("exited");
    assert_eq!(exit.signal, Some(libc::SIGKILL), "its status reaches us");
    cg.assert_leaf_empties();
}

#[test]
fn a_jail_that_cannot_be_built_is_the_jailers_message_and_nothing_is_left() {
    let cg = TestCgroup::new("jailfail");
    let s = Scratch::new();
    let options = jail_options();
    // A dynamically linked vmm cannot run in a jail without libraries.
    let err = launch_with(
        Path::new("/bin/ls"),
        &s.run_dir(),
        &s.spec("x"),
        &cg.leaf,
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, LaunchError::Exited { .. }), "{err}");
    assert!(
        err.vmm_message()
            .is_some_and(|m| m.contains("dynamically linked")),
        "{err}"
    );
    // A kernel the VM's uid could not read is refused before anything runs.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(s.kernel(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = launch_with(
        &vmm_binary(),
        &s.run_dir(),
        &s.spec("x"),
        &cg.leaf,
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, LaunchError::Unreadable { .. }), "{err}");
    // A TAP that does not exist is named.
    std::fs::set_permissions(s.kernel(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut spec = s.spec("x");
    spec.nics.push(NicSpec {
        tap: "stjnosuch0".into(),
        mac: None,
        rx_rate_limit: None,
        tx_rate_limit: None,
    });
    let err = launch_with(&vmm_binary(), &s.run_dir(), &spec, &cg.leaf, &options).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    cg.assert_leaf_empties();
    assert!(!s.run_dir().join("api.sock").exists());
}
