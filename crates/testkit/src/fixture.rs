//! Test fixtures for image and pod tests: a throwaway local registry and a
//! busybox-based OCI image built from the host's static busybox.
//!
//! Needs the Debian packages `docker-registry` (/usr/bin/docker-registry),
//! `umoci`, `skopeo` and `busybox-static`, and root (umoci unpacks with
//! real owners).
//!
//! ```ignore
//! let work = tempfile::tempdir()?;
//! let (registry, reference) = registry_with_busybox(work.path())?;
//! // reference = "127.0.0.1:<port>/busybox:1"; registry.addr() is insecure (HTTP)
//! ```

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository and tag [`registry_with_busybox`] pushes.
pub const BUSYBOX_REPO_TAG: &str = "busybox:1";

/// A `docker-registry` serving plain HTTP on 127.0.0.1, storage in a temp
/// dir; killed on drop.
pub struct TestRegistry {
    child: Child,
    addr: String,
    storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts a registry on a free port and waits until it answers.
    pub fn start() -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        let config = dir.path().join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        fs::write(&config, yaml).map_err(|e| format!("write {}: {e}", config.display()))?;
        let log =
            fs::File::create(dir.path().join("registry.log")).map_err(|e| format!("log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| {
                format!("start /usr/bin/docker-registry (apt-get install docker-registry): {e}")
            })?;
        let mut registry = TestRegistry {
            child,
            addr,
            storage,
            _dir: dir,
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    /// The registry's storage directory: what it serves, to be served
    /// again by another registry (the nested host's).
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// `127.0.0.1:<port>`: list it in `PullOptions::insecure_registries`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `127.0.0.1:<port>/<repo_tag>`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// The file holding a blob in the registry's storage (to tamper with).
    pub fn blob_file(&self, digest_hex: &str) -> PathBuf {
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&digest_hex[..2])
            .join(digest_hex)
            .join("data")
    }

    /// Pushes the image `tag` of the OCI layout `layout` as `repo_tag`;
    /// returns its reference.
    pub fn push_layout(&self, layout: &Path, tag: &str, repo_tag: &str) -> Result<String, String> {
        let reference = self.reference(repo_tag);
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{reference}"),
        ]))?;
        Ok(reference)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log =
                    fs::read_to_string(self._dir.path().join("registry.log")).unwrap_or_default();
                return Err(format!("docker-registry exited ({status}): {log}"));
            }
            if http_get_ok(&self.addr, "/v2/") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "docker-registry on {} did not answer within 15 s",
            self.addr
        ))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

fn http_get_ok(addr: &str, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// On a hybrid-cgroup host, mounts each controller the unified hierarchy
/// offers as a v1 hierarchy at `/sys/fs/cgroup/<controller>` (as systemd
/// does), which crun needs to accept the host; idempotent. Returns the
/// controllers it mounted. Needs root.
///
/// What it mounts it unmounts when the process exits (a test binary ends
/// with `exit`), so a test run leaves the host's mounts as it found them.
pub fn mount_unified_controllers_as_v1() -> Result<Vec<String>, String> {
    let list = fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers").unwrap_or_default();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounted = Vec::new();
    for controller in list.split_whitespace() {
        let dir = format!("/sys/fs/cgroup/{controller}");
        if mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(dir.as_str()))
        {
            continue;
        }
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
        run(Command::new("mount").args(["-t", "cgroup", "-o", controller, "cgroup", &dir]))
            .map_err(|e| format!("mounting the {controller} v1 hierarchy: {e}"))?;
        unmount_at_exit(dir);
        mounted.push(controller.to_string());
    }
    Ok(mounted)
}

/// Mount points [`mount_unified_controllers_as_v1`] made, for the exit
/// handler.
static MOUNTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn unmount_at_exit(dir: String) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    MOUNTED.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
    REGISTER.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function without
        // arguments; it runs once, at exit.
        unsafe { libc::atexit(unmount_mounted) };
    });
}

extern "C" fn unmount_mounted() {
    let dirs = std::mem::take(&mut *MOUNTED.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in dirs {
        // Lazy: a cgroup some process still sits in keeps the hierarchy
        // alive, but no longer mounted on the host.
        let _ = Command::new("umount")
            .args(["-l", &dir])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir(&dir);
    }
}

/// Runs a command to completion: its stdout, or an error with its output.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{shown}: {e} (is the Debian package installed?)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{shown}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Builds an OCI layout at `<work>/busybox-oci` holding the image `tag`:
/// one layer with /bin/busybox (the host's static one) and a symlink per
/// applet, /etc/passwd and /etc/group for root and `app` (1000, also in
/// `staff`, 50), /tmp, and a config with
/// `Cmd ["/bin/sh"]` and a PATH. Returns the layout directory.
pub fn build_busybox_layout(work: &Path, tag: &str) -> Result<PathBuf, String> {
    let layout = work.join("busybox-oci");
    let bundle = work.join("busybox-bundle");
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    populate_rootfs(&bundle.join("rootfs"))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle))?;
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd=/bin/sh",
        "--config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]))?;
    fs::remove_dir_all(&bundle).map_err(|e| format!("remove bundle: {e}"))?;
    Ok(layout)
}

fn populate_rootfs(rootfs: &Path) -> Result<(), String> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        fs::create_dir_all(rootfs.join(dir)).map_err(io(dir))?;
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(io("tmp"))?;
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .map_err(io("copy /bin/busybox (apt-get install busybox-static)"))?;
    let out = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .map_err(io("busybox --list"))?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            symlink("busybox", rootfs.join("bin").join(applet)).map_err(io(applet))?;
        }
    }
    // A user to run as by name, a member of one more group.
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/tmp:/bin/sh\n",
    )
    .map_err(io("passwd"))?;
    fs::write(
        rootfs.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    )
    .map_err(io("group"))?;
    Ok(())
}

/// Starts a registry and pushes a freshly built busybox image to it as
/// [`BUSYBOX_REPO_TAG`]; returns the registry and the image's reference.
/// `work` holds the build (the layout stays at `<work>/busybox-oci`).
pub fn registry_with_busybox(work: &Path) -> Result<(TestRegistry, String), String> {
    let layout = build_busybox_layout(work, "1")?;
    let registry = TestRegistry::start()?;
    let reference = registry.push_layout(&layout, "1", BUSYBOX_REPO_TAG)?;
    Ok((registry, reference))
}
