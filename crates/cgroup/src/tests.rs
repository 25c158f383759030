//! Tests against the host's real cgroup filesystem (v1 here, v2 in the
//! nested test host). They need root and fail, with the reason, without it.
//!
//! Each test builds its own uniquely named Stratum root; a `TestTree` guard
//! kills whatever is left in it and removes it when the test ends, passed or
//! failed.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;

/// Serialises the two load tests: they measure CPU and provoke OOM, and
/// should not compete with each other on a 2-core machine.
static LOAD: Mutex<()> = Mutex::new(());

/// Env var that turns `cgroup_memory_hog_child` into the memory hog.
const HOG_ENV: &str = "STRATUM_CGROUP_MEMORY_HOG";
/// Set for the child of the working-set test.
const HOLD_ENV: &str = "STRATUM_CGROUP_MEMORY_HOLDER";

const MIB: u64 = 1 << 20;

/// A Stratum root of its own, destroyed on drop even if the test panicked.
struct TestTree {
    hier: Hierarchy,
    root: Cgroup,
}

impl TestTree {
    fn new(tag: &str) -> TestTree {
        stratum_testkit::root::require_root("cgroups");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let config = HierarchyConfig {
            root_name: format!("stratum-test-{tag}-{}-{nanos}", std::process::id()),
            ..HierarchyConfig::default()
        };
        let hier = Hierarchy::detect_with(&config).expect("detect cgroup hierarchy");
        let root = hier.root().expect("create test root");
        TestTree { hier, root }
    }
}

impl Drop for TestTree {
    fn drop(&mut self) {
        if let Err(e) = self.root.kill_all(Duration::from_secs(10)) {
            eprintln!("test cleanup: {e}");
        }
        for dir in self.root.dirs() {
            remove_tree(&dir);
        }
    }
}

/// Depth-first rmdir; cgroup directories can only be removed bottom-up.
fn remove_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path());
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("test cleanup: could not remove {}", dir.display());
}

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_in(cgroup: &Cgroup, program: &str, args: &[&str]) -> Reaped {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    cgroup.attach_command(&mut cmd).expect("prepare attach");
    Reaped(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}")),
    )
}

/// Content of interface file `name` from whichever directory of `cgroup`
/// has it (v1 keeps each controller's files in its own hierarchy).
fn read_file(cgroup: &Cgroup, name: &str) -> String {
    let path: PathBuf = cgroup
        .dirs()
        .into_iter()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no {name} in {:?}", cgroup.dirs()));
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Asserts files against expected values: (v1 file, v1 value, v2 file, v2 value).
fn assert_files(cgroup: &Cgroup, expected: &[(&str, &str, &str, &str)]) {
    for &(v1_file, v1_value, v2_file, v2_value) in expected {
        let (file, value) = match cgroup.version() {
            CgroupVersion::V1 => (v1_file, v1_value),
            CgroupVersion::V2 => (v2_file, v2_value),
        };
        assert_eq!(
            read_file(cgroup, file).trim(),
            value,
            "{file} of {:?}",
            cgroup.path()
        );
    }
}

/// v1 shows "no memory limit" as the largest page-aligned i64.
const V1_UNLIMITED: &str = "9223372036854771712";

fn sample_limits() -> CgroupLimits {
    CgroupLimits {
        cpu_shares_weight: 2048,
        cpu_limit_millicores: Some(1500),
        memory_limit_bytes: Some(256 * MIB),
        memory_reservation_bytes: Some(128 * MIB),
        pids_max: Some(100),
    }
}

const SAMPLE_FILES: &[(&str, &str, &str, &str)] = &[
    ("cpu.shares", "2048", "cpu.weight", "200"),
    ("cpu.cfs_quota_us", "150000", "cpu.max", "150000 100000"),
    ("cpu.cfs_period_us", "100000", "cpu.max", "150000 100000"),
    (
        "memory.limit_in_bytes",
        "268435456",
        "memory.max",
        "268435456",
    ),
    (
        "memory.soft_limit_in_bytes",
        "134217728",
        "memory.min",
        "134217728",
    ),
    ("pids.max", "100", "pids.max", "100"),
];

const DEFAULT_FILES: &[(&str, &str, &str, &str)] = &[
    ("cpu.shares", "1024", "cpu.weight", "100"),
    ("cpu.cfs_quota_us", "-1", "cpu.max", "max 100000"),
    ("memory.limit_in_bytes", V1_UNLIMITED, "memory.max", "max"),
    (
        "memory.soft_limit_in_bytes",
        V1_UNLIMITED,
        "memory.min",
        "0",
    ),
    ("pids.max", "max", "pids.max", "max"),
];

#[test]
fn cgroup_fs_create_apply_update_read_back() {
    let t = TestTree::new("apply");
    let pool = t.hier.create_pool(&t.root, "prod").expect("create pool");
    let leaf = t.hier.create_vm_leaf(&pool, "7").expect("create leaf");
    assert_eq!(leaf.path(), Path::new("prod/vm-7"));
    assert!(leaf.exists());
    assert_eq!(
        t.root.children().expect("children"),
        vec!["prod".to_string()]
    );

    pool.apply(&sample_limits()).expect("apply");
    assert_files(&pool, SAMPLE_FILES);

    let updated = CgroupLimits {
        cpu_limit_millicores: Some(250),
        ..sample_limits()
    };
    pool.apply(&updated).expect("update");
    assert_files(
        &pool,
        &[("cpu.cfs_quota_us", "25000", "cpu.max", "25000 100000")],
    );

    pool.apply(&CgroupLimits::default())
        .expect("reset to unlimited");
    assert_files(&pool, DEFAULT_FILES);
}

#[test]
fn cgroup_fs_new_pool_gets_its_limits_and_keeps_the_defaults_it_was_not_given() {
    let t = TestTree::new("new");
    let pool = t
        .hier
        .create_pool_with(Path::new(""), "prod", &sample_limits())
        .expect("create pool with limits");
    assert_files(&pool, SAMPLE_FILES);
    let only_memory = CgroupLimits {
        memory_limit_bytes: Some(64 * MIB),
        ..Default::default()
    };
    let child = t
        .hier
        .create_pool_with(Path::new("prod"), "web", &only_memory)
        .expect("create child pool");
    assert_eq!(child.path(), Path::new("prod/web"));
    assert_files(
        &child,
        &[(
            "memory.limit_in_bytes",
            "67108864",
            "memory.max",
            "67108864",
        )],
    );
    assert_files(
        &child,
        &DEFAULT_FILES
            .iter()
            .copied()
            .filter(|f| !f.0.starts_with("memory.limit"))
            .collect::<Vec<_>>(),
    );
}

#[test]
fn cgroup_fs_new_pool_over_a_leftover_directory_gets_every_limit() {
    // A crash between a create's mkdir and its record leaves the directory
    // with whatever was written; the next create of that name must not
    // assume the kernel's defaults.
    let t = TestTree::new("leftover");
    let stale = t.hier.create_pool(&t.root, "pool-7").expect("create");
    stale.apply(&sample_limits()).expect("stale limits");
    let pool = t
        .hier
        .create_pool_with(Path::new(""), "pool-7", &CgroupLimits::default())
        .expect("adopt");
    assert_files(&pool, DEFAULT_FILES);
}

#[test]
fn cgroup_fs_new_pool_below_a_missing_parent_leaves_nothing() {
    let t = TestTree::new("orphan");
    let err = t
        .hier
        .create_pool_with(Path::new("gone"), "child", &sample_limits())
        .expect_err("parent missing");
    assert!(matches!(err, CgroupError::NotFound { .. }), "{err}");
    // A parent in only one hierarchy: the child made there goes again.
    let first = t.root.dirs()[0].join("half");
    fs::create_dir(&first).expect("parent in one hierarchy");
    let err = t
        .hier
        .create_pool_with(Path::new("half"), "child", &sample_limits())
        .expect_err("parent missing in the others");
    assert!(matches!(err, CgroupError::NotFound { .. }), "{err}");
    assert!(!first.join("child").exists(), "child left in {first:?}");
    fs::remove_dir(&first).expect("remove half parent");
    for bad in ["../x", "/abs", "a/../b"] {
        let err = t
            .hier
            .create_pool_with(Path::new(bad), "c", &sample_limits())
            .expect_err(bad);
        assert!(
            matches!(err, CgroupError::InvalidName { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn cgroup_fs_child_cpu_limit_may_exceed_its_pool() {
    let t = TestTree::new("nested");
    let pool = t.hier.create_pool(&t.root, "pool").expect("create pool");
    let half = CgroupLimits {
        cpu_limit_millicores: Some(500),
        ..Default::default()
    };
    pool.apply(&half).expect("limit pool");
    let leaf = t.hier.create_vm_leaf(&pool, "2").expect("create leaf");
    let two_cores = CgroupLimits {
        cpu_limit_millicores: Some(2000),
        ..Default::default()
    };
    // v1 refuses a child quota above its parent's; apply clamps it instead.
    leaf.apply(&two_cores).expect("leaf above pool");
    assert_files(
        &leaf,
        &[("cpu.cfs_quota_us", "50000", "cpu.max", "200000 100000")],
    );

    // Lowering the pool below the leaf: v1 lowers the leaf first.
    let quarter = CgroupLimits {
        cpu_limit_millicores: Some(250),
        ..Default::default()
    };
    pool.apply(&quarter).expect("lower pool below leaf");
    assert_files(
        &pool,
        &[("cpu.cfs_quota_us", "25000", "cpu.max", "25000 100000")],
    );
    assert_files(
        &leaf,
        &[("cpu.cfs_quota_us", "25000", "cpu.max", "200000 100000")],
    );
}

#[test]
fn cgroup_fs_reopen_keeps_limits() {
    let t = TestTree::new("adopt");
    let pool = t.hier.create_pool(&t.root, "prod").expect("create pool");
    pool.apply(&sample_limits()).expect("apply");
    t.hier.create_vm_leaf(&pool, "1").expect("create leaf");

    // A restarted agent detects again and "creates" the same tree.
    let config = HierarchyConfig {
        root_name: t.hier.root_name().to_string(),
        ..Default::default()
    };
    let again = Hierarchy::detect_with(&config).expect("detect again");
    let root = again.root().expect("adopt root");
    let adopted = again.create_pool(&root, "prod").expect("adopt pool");
    assert_files(&adopted, SAMPLE_FILES);
    assert_eq!(
        adopted.children().expect("children"),
        vec!["vm-1".to_string()]
    );

    let opened = again.open(Path::new("prod")).expect("open pool");
    assert_files(&opened, SAMPLE_FILES);
    assert!(again.open(Path::new("prod/vm-1")).is_ok());
}

#[test]
fn cgroup_fs_open_missing_and_bad_names() {
    let t = TestTree::new("names");
    match t.hier.open(Path::new("nope")) {
        Err(CgroupError::NotFound { path }) => assert!(path.ends_with("nope"), "{path:?}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    for bad in ["a/b", "..", "cpu.max", "tasks", ""] {
        let err = t.hier.create_pool(&t.root, bad).expect_err(bad);
        assert!(
            matches!(err, CgroupError::InvalidName { .. }),
            "{bad}: {err}"
        );
    }
    assert!(t.hier.open(Path::new("../etc")).is_err());
    let gone = t.hier.create_pool(&t.root, "gone").expect("create");
    gone.remove().expect("remove");
    let err = t.hier.create_leaf(&gone, "x").expect_err("parent removed");
    assert!(matches!(err, CgroupError::NotFound { .. }), "{err}");
}

#[test]
fn cgroup_fs_spawned_and_moved_processes_join_the_leaf() {
    let t = TestTree::new("attach");
    let pool = t.hier.create_pool(&t.root, "pool").expect("create pool");
    let leaf = t.hier.create_leaf(&pool, "work").expect("create leaf");

    let spawned = spawn_in(&leaf, "sleep", &["30"]);
    let pid = spawned.0.id();
    assert_eq!(leaf.procs().expect("procs"), vec![pid]);
    assert_eq!(leaf.threads().expect("threads"), vec![pid]);
    assert!(read_file(&leaf, "cgroup.procs")
        .lines()
        .any(|l| l == pid.to_string()));

    let mut plain = Command::new("sleep");
    let moved = Reaped(plain.arg("30").spawn().expect("spawn sleep"));
    leaf.attach_pid(moved.0.id()).expect("attach pid");
    let mut expected = vec![pid, moved.0.id()];
    expected.sort_unstable();
    assert_eq!(leaf.procs().expect("procs"), expected);
    // Only direct members: the pool itself holds nobody.
    assert!(pool.procs().expect("pool procs").is_empty());
}

#[test]
fn cgroup_fs_remove_refused_while_populated_then_kill_all() {
    let t = TestTree::new("remove");
    let pool = t.hier.create_pool(&t.root, "pool").expect("create pool");
    let leaf = t.hier.create_vm_leaf(&pool, "9").expect("create leaf");
    let mut shell = spawn_in(&leaf, "sh", &["-c", "sleep 30 & sleep 30 & wait"]);
    wait_until(
        || leaf.procs().is_ok_and(|p| p.len() == 3),
        "3 processes in the leaf",
    );

    match leaf.remove() {
        Err(CgroupError::Busy { pids, .. }) => assert_eq!(pids.len(), 3),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(matches!(
        pool.remove(),
        Err(CgroupError::HasChildren { .. })
    ));

    // Killing the pool kills its whole subtree.
    pool.kill_all(Duration::from_secs(5)).expect("kill_all");
    let status = shell.0.wait().expect("wait shell");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    leaf.remove().expect("remove emptied leaf");
    assert!(!leaf.exists());
    pool.remove().expect("remove emptied pool");
    assert!(t.root.children().expect("children").is_empty());
}

#[test]
fn cgroup_fs_cpu_hog_capped_at_half_a_core() {
    let _serial = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let t = TestTree::new("cpu");
    // High weight for the test tree, so that other work on this machine
    // cannot starve the hog below its cap: what binds must be the quota.
    let heavy = CgroupLimits {
        cpu_shares_weight: 16 * DEFAULT_CPU_SHARES,
        ..Default::default()
    };
    t.root.apply(&heavy).expect("weight test root");
    let pool = t.hier.create_pool(&t.root, "half").expect("create pool");
    let limits = CgroupLimits {
        cpu_limit_millicores: Some(500),
        ..heavy
    };
    pool.apply(&limits).expect("limit pool");
    let leaf = t.hier.create_leaf(&pool, "hog").expect("create leaf");
    let _hog = spawn_in(&leaf, "sh", &["-c", "while :; do :; done"]);

    thread::sleep(Duration::from_millis(300));
    let (start, t0) = (leaf.usage().expect("usage").cpu_usage_ns, Instant::now());
    thread::sleep(Duration::from_secs(2));
    let (end, t1) = (leaf.usage().expect("usage").cpu_usage_ns, Instant::now());
    let cores = (end - start) as f64 / (t1 - t0).as_nanos() as f64;
    println!("CPU hog under a 500-millicore pool used {cores:.3} cores");
    assert!((0.35..=0.65).contains(&cores), "hog used {cores:.3} cores");
    assert!(
        pool.usage().expect("pool usage").cpu_usage_ns >= end,
        "pool counts the leaf"
    );
}

#[test]
fn cgroup_fs_memory_hog_is_oom_killed() {
    let _serial = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let t = TestTree::new("oom");
    let pool = t.hier.create_pool(&t.root, "small").expect("create pool");
    let limits = CgroupLimits {
        memory_limit_bytes: Some(64 * MIB),
        ..Default::default()
    };
    pool.apply(&limits).expect("limit pool");
    let leaf = t.hier.create_leaf(&pool, "hog").expect("create leaf");

    // The hog is this test binary, re-executed to run only the helper below.
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "tests::cgroup_memory_hog_child",
        "--test-threads=1",
    ])
    .env(HOG_ENV, "1")
    .stdout(Stdio::null());
    leaf.attach_command(&mut cmd).expect("prepare attach");
    let mut hog = Reaped(cmd.spawn().expect("spawn hog"));
    let status = wait_exit(&mut hog.0, Duration::from_secs(60));

    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "hog ended with {status}"
    );
    let usage = leaf.usage().expect("leaf usage");
    assert!(
        usage.oom_killed(),
        "no OOM kill counted in the leaf: {usage:?}"
    );
    assert!(pool.usage().expect("pool usage").memory_limit_hits > 0);
}

/// Not a test of its own: with `HOG_ENV` set (by the test above) it touches
/// 256 MiB and must be OOM-killed before it returns; otherwise a no-op.
#[test]
fn cgroup_memory_hog_child() {
    if std::env::var_os(HOG_ENV).is_none() {
        return;
    }
    // black_box: the allocation must not be optimised away.
    let hog = std::hint::black_box(vec![1u8; 256 * MIB as usize]);
    // Only reached if the limit did not hold.
    eprintln!("memory hog survived holding {} bytes", hog.len());
    std::process::exit(3);
}

/// A process holding 48 MiB it touched counts in its cgroup's working
/// set (and its pool's), never above what is charged; once it is gone,
/// so is the memory.
#[test]
fn cgroup_fs_working_set_counts_touched_memory() {
    let _serial = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let t = TestTree::new("wset");
    let pool = t.hier.create_pool(&t.root, "p").expect("create pool");
    let leaf = t.hier.create_leaf(&pool, "holder").expect("create leaf");
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "tests::cgroup_memory_holder_child",
        "--test-threads=1",
    ])
    .env(HOLD_ENV, "1")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    leaf.attach_command(&mut cmd).expect("prepare attach");
    let mut holder = Reaped(cmd.spawn().expect("spawn holder"));
    // The harness prints its own words first, on the same line.
    let stdout = holder.0.stdout.take().expect("holder's stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let holding = lines
        .by_ref()
        .map_while(std::result::Result::ok)
        .any(|line| line.ends_with("HOLDING"));
    assert!(holding, "the holder never said it held its memory");

    let held = leaf.memory_working_set_bytes().expect("working set");
    let charged = leaf.usage().expect("usage").memory_current_bytes;
    assert!(held >= 48 * MIB, "working set {held} while 48 MiB held");
    assert!(
        held <= charged,
        "working set {held} above the charge {charged}"
    );
    assert!(pool.memory_working_set_bytes().expect("pool working set") >= held);

    drop(holder.0.stdin.take());
    let status = wait_exit(&mut holder.0, Duration::from_secs(30));
    drop(lines);
    assert!(status.success(), "holder ended with {status}");
    let after = leaf.memory_working_set_bytes().expect("working set after");
    assert!(
        after < 16 * MIB,
        "working set {after} after the holder left"
    );
}

/// Not a test of its own: with `HOLD_ENV` set (by the test above) it
/// touches 48 MiB, says so, and holds it until its stdin closes.
#[test]
fn cgroup_memory_holder_child() {
    if std::env::var_os(HOLD_ENV).is_none() {
        return;
    }
    let held = std::hint::black_box(vec![1u8; 48 * MIB as usize]);
    // Straight to the pipe: the test harness captures `println!`.
    let mut out = std::io::stdout();
    let _ = std::io::Write::write_all(&mut out, b"HOLDING\n");
    let _ = std::io::Write::flush(&mut out);
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    std::hint::black_box(&held);
}

fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "child still running after {timeout:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}
