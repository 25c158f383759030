//! `stratum-jailer` as the agent runs it (root, real namespaces, mounts and
//! credentials), with Debian's static busybox as the jailed program: what
//! the jailed process is (/proc seen from the host) and what it can and
//! cannot do (a script run inside writes its findings to /run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use stratum_jail::{Bind, JailSpec};

const UID: u32 = 1_900_065_001;
const GID: u32 = 1_900_065_002;
const BUSYBOX: &str = "/bin/busybox";

fn jailer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stratum-jailer"))
}

/// A run dir and two files (a "kernel" to read, a "disk" to write) in a
/// fresh temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("run")).unwrap();
        std::os::unix::fs::chown(dir.path().join("run"), Some(UID), Some(GID)).unwrap();
        std::fs::write(dir.path().join("kernel"), b"KERNEL-BYTES").unwrap();
        std::fs::write(dir.path().join("disk"), b"old").unwrap();
        std::os::unix::fs::chown(dir.path().join("disk"), Some(UID), Some(GID)).unwrap();
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spec(&self, args: &[&str]) -> JailSpec {
        let mut spec = JailSpec::new(
            "jail-test",
            UID,
            GID,
            &self.path("run"),
            Bind::new("/bin/busybox", BUSYBOX),
        );
        spec.read_only
            .push(Bind::new("/vm/kernel", self.path("kernel")));
        spec.writable
            .push(Bind::new("/vm/disk0", self.path("disk")));
        spec.devices = vec!["/dev/kvm".into(), "/dev/urandom".into()];
        spec.max_file_size = Some(1 << 20);
        spec.args = args.iter().map(|s| s.to_string()).collect();
        spec
    }
}

/// Starts the jailer; returns it (stdin still open) and the pid it printed.
fn start(spec: &JailSpec) -> (Child, u32) {
    let mut child = jailer()
        .args(spec.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().parse() {
        Ok(pid) => (child, pid),
        Err(_) => {
            let out = child.wait_with_output().unwrap();
            panic!(
                "no pid from the jailer: {line:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        }
    }
}

/// Lets the jailer go and waits for it (exit 0).
fn release(mut jailer: Child) {
    drop(jailer.stdin.take());
    assert!(jailer.wait().unwrap().success());
}

fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0);
}

/// Waits for `pid` (our child once the jailer is gone) and returns its
/// exit code.
fn wait_pid(pid: u32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid with a live status int.
    let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    assert_eq!(
        rc,
        pid as libc::pid_t,
        "{}",
        std::io::Error::last_os_error()
    );
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    libc::WEXITSTATUS(status)
}

fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} missing in {status}"))
        .trim()
        .to_string()
}

fn namespace(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap()
}

fn kill(pid: u32) {
    // SAFETY: kill with a pid and a signal.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

#[test]
fn the_jailed_process_has_its_own_namespaces_uid_no_capabilities_and_a_root_of_only_its_files() {
    become_subreaper();
    let fixture = Fixture::new();
    let spec = fixture.spec(&["sleep", "60"]);
    let (jailer, pid) = start(&spec);
    release(jailer);
    let want_ids = format!("{UID}\t{UID}\t{UID}\t{UID}");
    assert_eq!(status_field(pid, "Uid:"), want_ids);
    assert_eq!(
        status_field(pid, "Gid:"),
        format!("{GID}\t{GID}\t{GID}\t{GID}")
    );
    assert_eq!(status_field(pid, "Groups:"), "");
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(status_field(pid, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    // PID 1 of a namespace of its own, one level below ours.
    let nspid = status_field(pid, "NSpid:");
    assert_eq!(nspid, format!("{pid}\t1"));
    let me = std::process::id().to_string();
    for kind in ["mnt", "pid", "ipc", "uts"] {
        assert_ne!(
            namespace(&pid.to_string(), kind),
            namespace(&me, kind),
            "{kind}"
        );
    }
    assert_eq!(
        namespace(&pid.to_string(), "net"),
        namespace(&me, "net"),
        "the host's TAPs are in the host's network namespace"
    );
    // Its root, seen from the host: the tmpfs with exactly what it was given.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["bin", "dev", "run", "vm"]);
    assert_eq!(
        std::fs::read(root.join("vm/kernel")).unwrap(),
        b"KERNEL-BYTES"
    );
    let kvm = std::fs::metadata(root.join("dev/kvm")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((kvm.uid(), kvm.gid()), (UID, GID));
    assert_eq!(kvm.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        kvm.rdev(),
        std::fs::metadata("/dev/kvm").unwrap().rdev(),
        "the host's device"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().rev().nth(1).unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert!(
        limits.contains("Max open files            2048                 2048"),
        "{limits}"
    );
    assert!(
        limits.contains("Max file size             1048576              1048576"),
        "{limits}"
    );
    assert!(
        limits.contains("Max core file size        0                    0"),
        "{limits}"
    );
    assert_eq!(limit("Max processes"), "1024", "{limits}");
    // Nothing of the jail is mounted in the host's namespace.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(fixture.dir.path().to_str().unwrap()),
        "{mounts}"
    );
    kill(pid);
    let mut status = 0;
    // SAFETY: waitpid with a live status int.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
}

#[test]
fn inside_the_jail_only_the_run_dir_and_writable_files_can_be_written_and_privileged_calls_fail() {
    become_subreaper();
    let fixture = Fixture::new();
    // Every probe prints NAME=exit status into /run/out (the host's run dir).
    let script = r#"
b=/bin/busybox
probe() { name=$1; shift; "$@" >> /run/log 2>&1; echo "$name=$?" >> /run/out; }
probe read-kernel $b cat /vm/kernel
probe write-kernel $b sh -c 'echo x > /vm/kernel'
probe write-disk $b sh -c 'echo new > /vm/disk0'
probe touch-run $b touch /run/made-inside
probe write-root $b touch /newfile
probe mknod $b mknod /run/null c 1 3
probe mount $b mount -t tmpfs none /run
probe chroot $b chroot /run /bin/busybox true
probe read-shadow $b cat /etc/shadow
probe proc $b ls /proc/1
probe kill-host-init $b kill -0 1
echo "hostname=$($b hostname)" >> /run/out
echo "id=$($b id -u):$($b id -g):$($b id -G)" >> /run/out
echo "pid=$$" >> /run/out
"#;
    let spec = fixture.spec(&["sh", "-c", script]);
    let (jailer, pid) = start(&spec);
    release(jailer);
    assert_eq!(wait_pid(pid), 0);
    let out = std::fs::read_to_string(fixture.path("run/out")).unwrap();
    let value = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing:\n{out}"))
            .to_string()
    };
    assert_eq!(value("read-kernel"), "0", "{out}");
    assert_ne!(value("write-kernel"), "0", "read-only: {out}");
    assert_eq!(value("write-disk"), "0", "{out}");
    assert_eq!(value("touch-run"), "0", "{out}");
    assert_ne!(value("write-root"), "0", "the root is read-only: {out}");
    for denied in ["mknod", "mount", "chroot", "read-shadow", "proc"] {
        assert_ne!(value(denied), "0", "{denied}: {out}");
    }
    assert_eq!(value("kill-host-init"), "0", "pid 1 is itself: {out}");
    assert_eq!(value("hostname"), "jail-test");
    assert_eq!(value("id"), format!("{UID}:{GID}:{GID}"));
    assert_eq!(value("pid"), "1");
    assert_eq!(
        std::fs::read(fixture.path("kernel")).unwrap(),
        b"KERNEL-BYTES"
    );
    assert_eq!(std::fs::read(fixture.path("disk")).unwrap(), b"new\n");
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(fixture.path("run/made-inside")).unwrap();
    assert_eq!((made.uid(), made.gid()), (UID, GID));
}

#[test]
fn a_bad_spec_is_refused_before_anything_runs() {
    let fixture = Fixture::new();
    let refuse = |spec: JailSpec, want: &str| {
        let out = jailer()
            .args(spec.to_args())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(out.stdout.is_empty(), "no pid: {stderr}");
        assert!(stderr.contains(want), "want {want:?}: {stderr}");
    };
    let mut spec = fixture.spec(&["true"]);
    spec.exec = Bind::new("/bin/ls", "/bin/ls");
    refuse(spec, "dynamically linked");
    let mut spec = fixture.spec(&["true"]);
    spec.uid = 0;
    refuse(spec, "must not be 0");
    let mut spec = fixture.spec(&["true"]);
    spec.read_only
        .push(Bind::new("/vm/missing", fixture.path("missing")));
    refuse(spec, "missing");
    let mut spec = fixture.spec(&["true"]);
    spec.read_only
        .push(Bind::new("/vm/dir", fixture.dir.path()));
    refuse(spec, "not a regular file");
    let mut spec = fixture.spec(&["true"]);
    spec.devices.push("/dev/null/../../etc/shadow".into());
    refuse(spec, "under /dev");
    let mut spec = fixture.spec(&["true"]);
    spec.devices.push("/dev/shm".into());
    refuse(spec, "not a character device");
    let mut spec = fixture.spec(&["true"]);
    spec.read_only.push(Bind::new("/vm/kernel", BUSYBOX));
    refuse(spec, "two things at jail path /vm/kernel");
    // A failure inside the new namespaces (the program is not executable)
    // comes back as the jailer's error, with nothing left running.
    let copy = fixture.path("busybox-not-executable");
    std::fs::copy(BUSYBOX, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut spec = fixture.spec(&["true"]);
    spec.exec = Bind::new("/bin/busybox", &copy);
    refuse(spec, "execve /bin/busybox: Permission denied");
    let mut args: Vec<OsString> = fixture.spec(&["true"]).to_args();
    args.retain(|a| a != "--exec");
    let out = jailer().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error");
}
