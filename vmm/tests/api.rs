//! The control API, end to end: the real `vmm` binary with `--api-sock`,
//! spoken to over its Unix socket with raw HTTP/1.1, as Firecracker clients
//! do. None of these needs a guest to run, so they pass on any Linux host;
//! booting through the API is covered by the nested-host tests.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::{tiny_elf, Scratch};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// A `vmm --api-sock` process, killed when dropped.
struct Vmm {
    child: Child,
    socket: PathBuf,
}

impl Vmm {
    fn start(scratch: &Scratch, extra: &[&str]) -> Vmm {
        let socket = scratch.path("api.sock");
        let console = scratch.path("console.log");
        let child = Command::new(VMM)
            .arg("--api-sock")
            .arg(&socket)
            .arg("--console")
            .arg(&console)
            .arg("--no-console-input")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vmm");
        let mut vmm = Vmm { child, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        // The socket file appears at bind, a moment before the listen that
        // makes connections succeed: wait for a connection, not the file.
        while UnixStream::connect(&vmm.socket).is_err() {
            if let Some(status) = vmm.child.try_wait().expect("wait for vmm") {
                panic!("vmm exited with {status} before binding its socket");
            }
            assert!(Instant::now() < deadline, "vmm never bound its socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        vmm
    }

    fn connect(&self) -> Client {
        Client::new(UnixStream::connect(&self.socket).expect("connect to the API socket"))
    }

    /// Waits (bounded) for the process to exit on its own.
    fn wait_exit(mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for vmm") {
                let mut stderr = String::new();
                if let Some(mut pipe) = self.child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                return (status, stderr);
            }
            assert!(
                Instant::now() < deadline,
                "vmm did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One persistent HTTP/1.1 connection.
struct Client {
    reader: BufReader<UnixStream>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn fault(&self) -> String {
        let json = self.json();
        let message = json["fault_message"].as_str();
        message
            .unwrap_or_else(|| panic!("no fault_message in {json}"))
            .to_string()
    }

    /// The message of a framing error (Firecracker's HTTP layer's
    /// `{"error": ...}`).
    fn framing_error(&self) -> String {
        let json = self.json();
        let message = json["error"].as_str();
        message
            .unwrap_or_else(|| panic!("no error in {json}"))
            .to_string()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Client {
    fn new(stream: UnixStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("socket timeout");
        Self {
            reader: BufReader::new(stream),
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("send");
    }

    /// Sends a request with the headers the Firecracker Go SDK and
    /// requests-unixsocket send, and reads the reply.
    fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: firecracker-go-sdk\r\n\
             Accept: application/json\r\n"
        );
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or_default());
        self.send_raw(head.as_bytes());
        self.read_reply().expect("a reply")
    }

    fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    fn put(&mut self, path: &str, body: &Value) -> Reply {
        self.request("PUT", path, Some(&body.to_string()))
    }

    /// Reads one response; `None` when the server closed the connection.
    fn read_reply(&mut self) -> Option<Reply> {
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line).ok()? == 0 {
            return None;
        }
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line:?}");
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).expect("header line");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header has a colon");
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse::<usize>().expect("content-length"));
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).expect("body");
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    /// True once the server has closed its side.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0) | Err(_))
    }
}

#[test]
fn configure_like_a_firecracker_client_on_one_connection() {
    let s = Scratch::new("configure");
    let kernel = s.file("vmlinux", &tiny_elf(16));
    let initrd = s.file("initrd", b"070701");
    let vmm = Vmm::start(&s, &["--id", "vm-42"]);
    let mut api = vmm.connect();

    let info = api.get("/");
    assert_eq!(info.status, 200);
    assert_eq!(info.header("Content-Type"), Some("application/json"));
    assert_eq!(info.header("Connection"), Some("keep-alive"));
    let info = info.json();
    assert_eq!(info["id"], "vm-42");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "stratum-vmm");
    assert!(info["vmm_version"].is_string());

    // Firecracker's defaults before any PUT.
    let machine = api.get("/machine-config").json();
    assert_eq!(
        (
            machine["vcpu_count"].clone(),
            machine["mem_size_mib"].clone()
        ),
        (json!(1), json!(128))
    );

    let boot = json!({"kernel_image_path": kernel, "initrd_path": initrd,
                      "boot_args": "console=ttyS0 reboot=k panic=1"});
    let reply = api.put("/boot-source", &boot);
    assert_eq!(
        reply.status,
        204,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(reply.body.is_empty());
    let machine = json!({"vcpu_count": 2, "mem_size_mib": 64, "smt": false,
                         "track_dirty_pages": false, "cpu_template": "None"});
    assert_eq!(api.put("/machine-config", &machine).status, 204);
    let patch = api.request("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 96}"#));
    assert_eq!(patch.status, 204);

    let machine = api.get("/machine-config").json();
    assert_eq!(machine["vcpu_count"], 2);
    assert_eq!(machine["mem_size_mib"], 96);
    assert_eq!(machine["smt"], false);

    let config = api.get("/vm/config");
    assert_eq!(config.status, 200);
    let config = config.json();
    assert_eq!(config["boot-source"], boot);
    assert_eq!(config["machine-config"]["vcpu_count"], 2);
    assert_eq!(config["machine-config"]["mem_size_mib"], 96);
    assert_eq!(config["drives"], json!([]));
    assert_eq!(config["network-interfaces"], json!([]));
    assert_eq!(config["vsock"], Value::Null);
    // A rate limiter as Firecracker's clients send it; GET /vm/config
    // shows it back, without a bucket that is off.
    let image = s.file("disk.img", &[0; 4096]);
    let limiter = json!({"bandwidth": {"size": 4194304, "one_time_burst": 0, "refill_time": 1000},
                         "ops": {"size": 0, "refill_time": 1000}});
    let drive = json!({"drive_id": "data", "path_on_host": image, "is_root_device": false,
                       "is_read_only": true, "rate_limiter": limiter});
    assert_eq!(api.put("/drives/data", &drive).status, 204);
    assert_eq!(
        api.get("/vm/config").json()["drives"][0]["rate_limiter"],
        json!({"bandwidth": {"size": 4194304, "one_time_burst": 0, "refill_time": 1000}})
    );
    let entropy = json!({"rate_limiter": {"ops": {"size": 10, "refill_time": 100}}});
    assert_eq!(api.put("/entropy", &entropy).status, 204);
    assert_eq!(api.get("/vm/config").json()["entropy"], entropy);
    let vsock_path = s.path("v.sock");
    let vsock = json!({"guest_cid": 3, "uds_path": vsock_path});
    assert_eq!(api.put("/vsock", &vsock).status, 204);
    assert_eq!(api.get("/vm/config").json()["vsock"], vsock);
    assert!(
        !vsock_path.exists(),
        "the socket is bound at boot, not at PUT"
    );

    // A query string and a trailing slash change nothing.
    assert_eq!(api.get("/vm/config/?pretty").status, 200);
    // The Firecracker release whose API this is, beside our own version.
    assert_eq!(api.get("/version").json()["firecracker_version"], "1.16.1");
    assert_eq!(info["vmm_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn bad_requests_get_400_with_a_fault_message_and_change_nothing() {
    let s = Scratch::new("bad");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2,"#,
            "deserializing the json body",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64, "vcpus": 2}"#,
            "unknown field `vcpus`",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 0, "mem_size_mib": 64}"#,
            "vcpu_count must be at least 1",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 0}"#,
            "mem_size_mib must be at least 1",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64, "smt": true}"#,
            "smt is not supported",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64, "cpu_template": "T2"}"#,
            "cpu_template",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 68719476736}"#,
            "the host has only",
        ),
        ("PATCH", "/machine-config", "{}", "empty PATCH request"),
        ("PUT", "/machine-config", "", "Empty PUT request."),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#,
            "/nonexistent/vmlinux",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel": "/boot/vmlinux"}"#,
            "unknown field `kernel`",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#,
            "no boot source",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "SendCtrlAltDel"}"#,
            "not supported before starting the microVM: SendCtrlAltDel",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "Explode"}"#,
            "unknown variant",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "FlushMetrics"}"#,
            "metrics are not configured",
        ),
        (
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}"#,
            "Unable to open the drive rootfs: /r",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "nosuchtap7"}"#,
            "TAP device nosuchtap7 does not exist",
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 2, "uds_path": "/run/v.sock"}"#,
            "guest_cid 2 is reserved",
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 3, "uds_path": "/no/such/dir/v.sock"}"#,
            "directory /no/such/dir does not exist",
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 3, "uds_path": "/"}"#,
            "/ already exists",
        ),
        (
            "PUT",
            "/vsock",
            r#"{"guest_cid": 3}"#,
            "missing field `uds_path`",
        ),
        (
            "PUT",
            "/entropy",
            r#"{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1000000000000}}}"#,
            "entropy: invalid rate_limiter: bandwidth: refill_time 1000000000000 ms is longer",
        ),
        (
            "PUT",
            "/entropy",
            r#"{"rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "burst": 5}}}"#,
            "unknown field `burst`",
        ),
        (
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                "rate_limiter": {"ops": {"size": 1, "refill_time": 18446744073709551615}}}"#,
            "drive rootfs: invalid rate_limiter: ops: refill_time",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "nosuchtap7",
                "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 18446744073709551615}}}"#,
            "network interface eth0: invalid rx_rate_limiter",
        ),
        (
            "PATCH",
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}"#,
            "not supported before starting the microVM: PATCH /drives",
        ),
        (
            "PATCH",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "rx_rate_limiter": {}}"#,
            "not supported before starting the microVM: PATCH /network-interfaces",
        ),
        (
            "PATCH",
            "/vm",
            r#"{"state": "Paused"}"#,
            "not supported before starting the microVM: PATCH /vm",
        ),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path": "s", "mem_file_path": "m"}"#,
            "not supported before starting the microVM: PUT /snapshot/create",
        ),
        (
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#,
            "not supported before starting the microVM",
        ),
        (
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path": "/nonexistent/vm.snap", "mem_file_path": "m"}"#,
            "cannot open the snapshot file /nonexistent/vm.snap",
        ),
        (
            "GET",
            "/balloon",
            "",
            "Balloon config error: No balloon device found.",
        ),
        (
            "PUT",
            "/balloon",
            r#"{"amount_mib": 129, "deflate_on_oom": false}"#,
            "Balloon config error: Amount of pages requested is too large.",
        ),
        (
            "PATCH",
            "/balloon/hinting/start",
            "{}",
            "PATCH /balloon/hinting/start is not supported",
        ),
        (
            "PUT",
            "/mmds/other",
            "{}",
            "Unrecognized PUT request path `other`.",
        ),
        (
            "GET",
            "/no-such-thing",
            "",
            "Invalid request method and/or path: GET /no-such-thing.",
        ),
        (
            "PATCH",
            "/boot-source",
            "{}",
            "Invalid request method and/or path",
        ),
    ];
    for (method, path, body, needle) in cases {
        let body = (!body.is_empty()).then_some(*body);
        let reply = api.request(method, path, body);
        assert_eq!(reply.status, 400, "{method} {path}");
        let fault = reply.fault();
        assert!(
            fault.contains(needle),
            "{method} {path}: {fault:?} lacks {needle:?}"
        );
    }
    // Every error left the configuration as it was, and the connection up.
    let machine = api.get("/machine-config").json();
    assert_eq!(
        (
            machine["vcpu_count"].clone(),
            machine["mem_size_mib"].clone()
        ),
        (json!(1), json!(128))
    );
    assert_eq!(api.get("/vm/config").json()["boot-source"], Value::Null);
    assert_eq!(api.get("/").json()["state"], "Not started");
}

/// The balloon before boot: PUT, GET and `GET /vm/config` show it, a
/// machine too small for it is refused, and what needs the running device
/// is refused with Firecracker's texts.
#[test]
fn balloon_before_boot() {
    let s = Scratch::new("balloon");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    let balloon = json!({"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1});
    assert_eq!(api.put("/balloon", &balloon).status, 204);
    let shown = json!({"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1,
        "free_page_hinting": false, "free_page_reporting": false});
    assert_eq!(api.get("/balloon").json(), shown);
    assert_eq!(api.get("/vm/config").json()["balloon"], shown);
    let small = api.put(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 63}),
    );
    assert_eq!(small.status, 400);
    assert!(
        small
            .fault()
            .contains("smaller than the previously set balloon"),
        "{}",
        small.fault()
    );
    let cases = [
        (
            "GET",
            "/balloon/statistics",
            None,
            "not supported before starting the microVM",
        ),
        (
            "PATCH",
            "/balloon",
            Some(r#"{"amount_mib": 1}"#),
            "not supported before starting the microVM",
        ),
        (
            "PATCH",
            "/balloon/statistics",
            Some(r#"{"stats_polling_interval_s": 2}"#),
            "not supported before starting the microVM",
        ),
        (
            "PUT",
            "/balloon",
            Some(r#"{"amount_mib": 1, "deflate_on_oom": false, "free_page_hinting": true}"#),
            "free_page_hinting is not supported by this VMM yet.",
        ),
        (
            "GET",
            "/balloon/hinting/status",
            None,
            "is not supported by this VMM yet.",
        ),
    ];
    for (method, path, body, needle) in cases {
        let reply = api.request(method, path, body);
        assert_eq!(reply.status, 400, "{method} {path}");
        assert!(
            reply.fault().contains(needle),
            "{method} {path}: {}",
            reply.fault()
        );
    }
    // Refusals changed nothing; a new PUT replaces the balloon.
    assert_eq!(api.get("/balloon").json(), shown);
    assert_eq!(
        api.put(
            "/balloon",
            &json!({"amount_mib": 0, "deflate_on_oom": false})
        )
        .status,
        204
    );
    assert_eq!(api.get("/balloon").json()["stats_polling_interval_s"], 0);
}

#[test]
fn malformed_http_gets_400_and_the_server_goes_on() {
    let s = Scratch::new("malformed");
    let vmm = Vmm::start(&s, &[]);
    for garbage in [
        &b"HELLO\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nContent-Length: twelve\r\n\r\n",
        b"PUT /boot-source HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"DELETE / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nbroken header\r\n\r\n",
    ] {
        let mut api = vmm.connect();
        api.send_raw(garbage);
        let reply = api.read_reply().expect("an error reply");
        assert_eq!(reply.status, 400, "{:?}", String::from_utf8_lossy(garbage));
        assert!(!reply.framing_error().is_empty());
        assert!(
            api.closed(),
            "the connection is closed after a framing error"
        );
    }
    // A client that hangs up mid-request does not disturb anyone.
    let mut half = vmm.connect();
    half.send_raw(b"PUT /machine-config HTTP/1.1\r\nContent-Length: 40\r\n\r\n{\"vcpu");
    drop(half);
    assert_eq!(vmm.connect().get("/").status, 200);
}

/// Requests with a form Firecracker deprecates are served, and the answer
/// says so as Firecracker's does (`Deprecation: true`).
#[test]
fn deprecated_fields_are_answered_with_a_deprecation_header() {
    let s = Scratch::new("deprecation");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    let plain = api.put(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(plain.status, 204);
    assert_eq!(plain.header("Deprecation"), None);
    let template = api.put(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "None"}),
    );
    assert_eq!(template.status, 204);
    assert_eq!(template.header("Deprecation"), Some("true"));
    let vsock = json!({"guest_cid": 3, "uds_path": s.path("v.sock"), "vsock_id": "vsock0"});
    let reply = api.put("/vsock", &vsock);
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("Deprecation"), Some("true"));
}

#[test]
fn oversize_body_is_refused_before_it_is_read() {
    let s = Scratch::new("oversize");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    api.send_raw(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n{");
    let reply = api.read_reply().expect("an error reply");
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.framing_error(),
        "Request payload with size 1000000 is larger than the limit of 51200 allowed by server."
    );
    assert!(api.closed());
    assert_eq!(vmm.connect().get("/").status, 200);
    drop(vmm);

    // Firecracker's --http-api-max-payload-size moves the limit.
    let s = Scratch::new("oversize-flag");
    let vmm = Vmm::start(&s, &["--http-api-max-payload-size", "16"]);
    let reply = vmm.connect().put(
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": 64}),
    );
    assert_eq!(reply.status, 400);
    assert!(
        reply.framing_error().contains("limit of 16 allowed"),
        "{}",
        reply.framing_error()
    );
    let reply = vmm.connect().put("/actions", &json!({"a": 1}));
    assert_eq!(reply.status, 400, "a small body still passes the limit");
    assert!(!reply.fault().is_empty());
}

#[test]
fn pipelined_requests_and_expect_continue() {
    let s = Scratch::new("pipeline");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    let body = r#"{"vcpu_count": 3, "mem_size_mib": 32}"#;
    api.send_raw(
        format!(
            "PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /machine-config HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(api.read_reply().expect("reply 1").status, 204);
    assert_eq!(api.read_reply().expect("reply 2").json()["vcpu_count"], 3);
    let last = api.read_reply().expect("reply 3");
    assert_eq!(last.header("Connection"), Some("close"));
    assert!(api.closed());

    // curl sends Expect: 100-continue for larger bodies and waits for it.
    let mut api = vmm.connect();
    api.send_raw(
        format!(
            "PATCH /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            r#"{"vcpu_count": 4}"#.len()
        )
        .as_bytes(),
    );
    let interim = api.read_reply().expect("100 Continue");
    assert_eq!(interim.status, 100);
    api.send_raw(br#"{"vcpu_count": 4}"#);
    assert_eq!(api.read_reply().expect("final reply").status, 204);
    assert_eq!(api.get("/machine-config").json()["vcpu_count"], 4);
}

#[test]
fn instance_start_failures_are_400_and_the_api_keeps_serving() {
    let s = Scratch::new("start");
    let kernel = s.file("vmlinux", &tiny_elf(16));
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();

    // The kernel vanishes between PUT /boot-source and InstanceStart.
    assert_eq!(
        api.put("/boot-source", &json!({"kernel_image_path": kernel}))
            .status,
        204
    );
    std::fs::remove_file(&kernel).expect("remove kernel");
    let start = json!({"action_type": "InstanceStart"});
    let reply = api.put("/actions", &start);
    assert_eq!(reply.status, 400);
    let fault = reply.fault();
    assert!(
        fault.contains("cannot open kernel") && fault.contains(&kernel),
        "{fault}"
    );
    assert_eq!(api.get("/").json()["state"], "Not started");

    // A kernel that does not fit the memory: refused before KVM is touched.
    let kernel = s.file("vmlinux2", &tiny_elf(16));
    assert_eq!(
        api.put("/boot-source", &json!({"kernel_image_path": kernel}))
            .status,
        204
    );
    assert_eq!(
        api.put(
            "/machine-config",
            &json!({"vcpu_count": 1, "mem_size_mib": 8})
        )
        .status,
        204
    );
    let reply = api.put("/actions", &start);
    assert_eq!(reply.status, 400);
    assert!(
        reply.fault().contains("too small for the kernel"),
        "{}",
        reply.fault()
    );

    // Still configurable and still not started.
    assert_eq!(
        api.put(
            "/machine-config",
            &json!({"vcpu_count": 1, "mem_size_mib": 64})
        )
        .status,
        204
    );
    assert_eq!(api.get("/").json()["state"], "Not started");
}

#[test]
fn logger_and_metrics_write_their_files() {
    let s = Scratch::new("logs");
    let log = s.path("vmm.log");
    let metrics = s.path("metrics.json");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();

    let logger =
        json!({"log_path": log, "level": "Info", "show_level": true, "show_log_origin": false});
    assert_eq!(api.put("/logger", &logger).status, 204);
    assert_eq!(
        api.put("/metrics", &json!({"metrics_path": metrics}))
            .status,
        204
    );
    assert_eq!(
        api.put("/metrics", &json!({"metrics_path": metrics}))
            .status,
        400
    );
    assert_eq!(api.get("/").status, 200);
    let reply = api.put(
        "/machine-config",
        &json!({"vcpu_count": 0, "mem_size_mib": 64}),
    );
    assert_eq!(reply.status, 400);
    assert_eq!(
        api.put("/actions", &json!({"action_type": "FlushMetrics"}))
            .status,
        204
    );

    let line = std::fs::read_to_string(&metrics).expect("metrics file");
    let line: Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert!(line["utc_timestamp_ms"].as_u64().is_some());
    assert_eq!(line["get_api_requests"]["instance_info_count"], 1);
    assert_eq!(line["put_api_requests"]["machine_cfg_fails"], 1);
    assert_eq!(line["put_api_requests"]["metrics_fails"], 1);

    let text = std::fs::read_to_string(&log).expect("log file");
    assert!(
        text.contains(":INFO] The API server received a GET request on \"/\"."),
        "{text}"
    );
    assert!(
        text.contains(":WARN] invalid machine configuration"),
        "{text}"
    );

    let config = api.get("/vm/config").json();
    assert_eq!(config["metrics"]["metrics_path"], json!(metrics));
    assert_eq!(config["logger"]["log_path"], json!(log));
}

/// A named pipe at `path`, mode 0600.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: mkfifo with a NUL-terminated path that lives across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn pipes_named_as_guest_files_are_refused_and_log_pipes_wait_for_their_reader() {
    let s = Scratch::new("fifos");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();

    // A kernel, initrd or read-only drive that is a pipe would block an
    // open until a writer came, the controller's lock held: refused at
    // once, and the API goes on.
    let pipe = s.path("pipe");
    mkfifo(&pipe);
    let kernel = s.file("vmlinux", &tiny_elf(16));
    for (path, body) in [
        ("/boot-source", json!({"kernel_image_path": pipe})),
        (
            "/boot-source",
            json!({"kernel_image_path": kernel, "initrd_path": pipe}),
        ),
        (
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "path_on_host": pipe,
                   "is_root_device": true, "is_read_only": true}),
        ),
    ] {
        let reply = api.put(path, &body);
        assert_eq!(reply.status, 400, "{path} {body}");
        assert!(
            reply
                .fault()
                .contains("not a regular file or a block device"),
            "{}",
            reply.fault()
        );
    }
    assert_eq!(api.get("/").status, 200);
    assert_eq!(api.get("/vm/config").json()["drives"], json!([]));

    // A log pipe whose reader comes later (as firecracker-go-sdk makes
    // it): opened, and the lines wait in it; "warn" is Firecracker's name.
    let log = s.path("log.fifo");
    mkfifo(&log);
    let logger = json!({"log_path": log, "level": "warn", "show_level": true});
    assert_eq!(api.put("/logger", &logger).status, 204);
    let reply = api.put(
        "/machine-config",
        &json!({"vcpu_count": 0, "mem_size_mib": 64}),
    );
    assert_eq!(reply.status, 400);
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&log)
        .expect("open the log pipe's read end");
    let mut text = vec![0u8; 4096];
    let n = reader.read(&mut text).expect("lines wait in the pipe");
    let text = String::from_utf8_lossy(&text[..n]);
    assert!(
        text.contains(":WARN] invalid machine configuration"),
        "{text}"
    );
    assert!(!text.contains(":INFO]"), "below the level: {text}");
}

/// The monotonic clock in µs, as Firecracker's jailer reads it.
fn monotonic_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[test]
fn firecracker_launch_flags_configure_what_the_api_would() {
    let s = Scratch::new("launch-flags");
    let (log, metrics) = (s.path("vmm.log"), s.path("metrics.json"));
    let launched = monotonic_us();
    std::thread::sleep(Duration::from_millis(20));
    // What Firecracker's jailer and firectl put on the command line.
    let vmm = Vmm::start(
        &s,
        &[
            "--start-time-us",
            &launched.to_string(),
            "--start-time-cpu-us",
            "0",
            "--parent-cpu-time-us",
            "7",
            "--log-path",
            log.to_str().unwrap(),
            "--level",
            "WARN",
            "--show-level",
            "--metrics-path",
            metrics.to_str().unwrap(),
        ],
    );
    let mut api = vmm.connect();
    let config = api.get("/vm/config").json();
    assert_eq!(config["logger"]["log_path"], json!(log));
    assert_eq!(config["logger"]["level"], "Warn");
    assert_eq!(config["metrics"]["metrics_path"], json!(metrics));
    let reply = api.put(
        "/machine-config",
        &json!({"vcpu_count": 0, "mem_size_mib": 64}),
    );
    assert_eq!(reply.status, 400);
    let flush = json!({"action_type": "FlushMetrics"});
    assert_eq!(api.put("/actions", &flush).status, 204);
    let line = std::fs::read_to_string(&metrics).expect("metrics file");
    let line: Value = serde_json::from_str(line.trim()).expect("one JSON line");
    let startup = line["api_server"]["process_startup_time_us"]
        .as_u64()
        .unwrap();
    assert!(startup >= 20_000, "{line}");
    let cpu = line["api_server"]["process_startup_time_cpu_us"]
        .as_u64()
        .unwrap();
    assert!(cpu >= 7, "{line}");
    let text = std::fs::read_to_string(&log).expect("log file");
    assert!(
        text.contains(":WARN] invalid machine configuration"),
        "{text}"
    );
    assert!(!text.contains(":INFO]"), "{text}");
}

#[test]
fn socket_in_use_is_an_error() {
    let s = Scratch::new("inuse");
    let _first = Vmm::start(&s, &[]);
    let out = Command::new(VMM)
        .args(["--api-sock", &s.path("api.sock").display().to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run vmm");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot bind the API socket"), "{err}");
}

fn run(args: &[&str]) -> Output {
    Command::new(VMM)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vmm")
}

/// Firecracker's version line, which launchers parse (Kata takes the
/// second word of the first line as a semantic version of at least
/// 0.21.1), then ours.
#[test]
fn version_is_printed_firecrackers_way() {
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().next().unwrap_or_default();
        let words: Vec<&str> = first.split(' ').collect();
        assert_eq!(words[0], "Firecracker", "{text}");
        let version: Vec<u32> = words[1]
            .strip_prefix('v')
            .unwrap_or_default()
            .split('.')
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(version.len(), 3, "{text}");
        assert!(version >= vec![0, 21, 1], "{text}");
        assert!(
            text.contains(&format!("vmm {}", env!("CARGO_PKG_VERSION"))),
            "{text}"
        );
    }
}

/// Firecracker's `--snapshot-version` and `--describe-snapshot`: the
/// format this vmm writes, and the format of a state file (only its
/// header is read); a file that is not a snapshot is an error.
#[test]
fn snapshot_format_versions_are_printed() {
    let out = run(&["--snapshot-version"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\n");
    let s = Scratch::new("describe");
    let mut state = Vec::new();
    vmm::snapshot::format::write(&mut state, &json!({"any": "state"})).unwrap();
    let path = s.file("vm.snap", &state);
    let out = run(&["--describe-snapshot", &path]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\n");
    let other = s.file("vm.mem", &[0u8; 4096]);
    let out = run(&["--describe-snapshot", &other]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a VM snapshot"));
}

/// Without --api-sock (and without --kernel or --no-api) the API is on
/// Firecracker's default socket. Run in a mount namespace of its own with
/// a fresh /run, so that no real /run/firecracker.socket is touched.
#[test]
fn the_api_is_on_firecrackers_default_socket() {
    let script = format!(
        "mount -t tmpfs stratum-test /run || exit 3\n\
         {VMM} --no-console-input --console /dev/null & pid=$!\n\
         i=0; while [ ! -S /run/firecracker.socket ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n\
         [ -S /run/firecracker.socket ] && echo BOUND\n\
         kill $pid; wait $pid\n"
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("BOUND"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `--seccomp-filter` file that cannot be what it claims is refused at
/// start, before anything is built, with what is wrong in it.
#[test]
fn bad_seccomp_filter_files_are_refused_at_start() {
    let s = Scratch::new("seccomp-file");
    let allow_all = r#"{"default_action": "allow", "filter_action": "log", "filter": [{"syscall": "getpgid"}]}"#;
    let three = |extra: &str| {
        format!(r#"{{"vmm": {allow_all}, "api": {allow_all}, "vcpu": {allow_all}{extra}}}"#)
    };
    let cases = [
        ("not json".to_string(), "invalid seccomp filter file"),
        (
            format!(r#"{{"vmm": {allow_all}, "api": {allow_all}}}"#),
            "no filter for the vcpu thread",
        ),
        (
            three(&format!(r#", "gpu": {allow_all}"#)),
            "names \"gpu\", which is not a thread kind",
        ),
        (
            three("").replacen("getpgid", "no_such_call", 1),
            "Invalid syscall name: no_such_call",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = s.file(&format!("filter{i}.json"), text.as_bytes());
        let out = run(&[
            "--seccomp-filter",
            &path,
            "--api-sock",
            &s.path("api.sock").display().to_string(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.starts_with("vmm: error: "), "{err}");
        assert!(err.contains(needle), "{text}: {err:?} lacks {needle:?}");
        assert!(!s.path("api.sock").exists(), "nothing was started");
    }
    let fifo = s.path("filter.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let out = run(&[
        "--seccomp-filter",
        &fifo.display().to_string(),
        "--api-sock",
        "s",
    ]);
    assert_eq!(out.status.code(), Some(2), "a FIFO is not read");
    let out = run(&["--seccomp-filter", "f", "--no-seccomp", "--api-sock", "s"]);
    assert_eq!(out.status.code(), Some(2), "the two flags conflict");
}

#[test]
fn config_file_errors_exit_1_and_start_nothing() {
    let s = Scratch::new("config");
    let kernel = s.file("vmlinux", &tiny_elf(16));
    let cases = [
        ("{\"boot-source\": ", "invalid config file"),
        (
            r#"{"boot-source": {"kernel_image_path": "K"}, "machine_config": {}}"#,
            "unknown field `machine_config`",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#,
            "missing field `boot-source`",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#,
            "/nonexistent/vmlinux",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "K"}, "machine-config": {"vcpu_count": 0, "mem_size_mib": 64}}"#,
            "vcpu_count must be at least 1",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "K"}, "drives": [{"drive_id": "rootfs"}]}"#,
            "missing field",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "K"}, "drives": [{"drive_id": "d",
                "path_on_host": "K", "is_root_device": false,
                "rate_limiter": {"ops": {"size": 1, "refill_time": 99999999999999}}}]}"#,
            "drive d: invalid rate_limiter: ops: refill_time 99999999999999 ms",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "K"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 8}}"#,
            "too small for the kernel",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "K"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
                "balloon": {"amount_mib": 65, "deflate_on_oom": false}}"#,
            "Amount of pages requested is too large.",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "K"},
                "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]}}"#,
            "does not correspond to any existing network interface",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "K"},
                "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "lo"}],
                "mmds-config": {"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}}"#,
            "The MMDS IPv4 address is not link local.",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = s.file(
            &format!("vm{i}.json"),
            text.replace('K', &kernel).as_bytes(),
        );
        let out = run(&["--config-file", &path, "--no-api"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(err.starts_with("vmm: error: "), "{err}");
        assert!(err.contains(needle), "{text}: {err:?} lacks {needle:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = run(&["--config-file", "/nonexistent/vm.json", "--no-api"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

#[test]
fn conflicting_options_are_command_line_errors() {
    for args in [
        &["--kernel", "k", "--config-file", "c"][..],
        &["--kernel", "k", "--api-sock", "s"],
        &["--api-sock", "s", "--vcpus", "2"],
        &["--config-file", "c", "--initrd", "i"],
        &["--api-sock", "s", "--id", "not valid!"],
        &["--no-api"],
        &["--no-api", "--api-sock", "s", "--config-file", "c"],
        &["--kernel", "k", "--no-api"],
        &["--api-sock", "s", "--http-api-max-payload-size", "lots"],
        &["--api-sock", "s", "--level", "loud"],
        &["--api-sock", "s", "--start-time-us", "-1"],
        &["--kernel", "k", "--metrics-path", "m"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// The whole path on this host: configure and start a real guest through
/// the API. Where KVM runs it, it reboots and vmm exits 0; on a PVM host it
/// fails with the hint and exits 1. Either way the API thread must not keep
/// the process alive, and the socket is removed.
#[test]
fn a_started_vm_ends_the_process() {
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/images");
    let kernel = images.join("guest-vmlinux");
    assert!(
        kernel.exists(),
        "{} is missing: run `make images`",
        kernel.display()
    );
    let s = Scratch::new("boot");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    let boot = json!({"kernel_image_path": kernel,
                      "initrd_path": images.join("guest-initramfs.cpio.gz"),
                      "boot_args": "console=ttyS0 reboot=k panic=-1 quiet"});
    assert_eq!(api.put("/boot-source", &boot).status, 204);
    assert_eq!(
        api.put(
            "/machine-config",
            &json!({"vcpu_count": 1, "mem_size_mib": 256})
        )
        .status,
        204
    );
    let start = json!({"action_type": "InstanceStart"});
    assert_eq!(api.put("/actions", &start).status, 204);
    // The guest may already have ended the process; if not, a second start
    // and a late PUT are refused.
    let mut api = api;
    api.send_raw(b"PUT /actions HTTP/1.1\r\nContent-Length: 33\r\n\r\n{\"action_type\": \"InstanceStart\"}\n");
    if let Some(reply) = api.read_reply() {
        assert_eq!(reply.status, 400);
        assert!(
            reply
                .fault()
                .contains("not supported after starting the microVM"),
            "{}",
            reply.fault()
        );
    }
    let socket = vmm.socket.clone();
    let (status, stderr) = vmm.wait_exit(Duration::from_secs(60));
    let console = std::fs::read_to_string(s.path("console.log")).unwrap_or_default();
    if status.success() {
        assert!(
            console.contains("STRATUM-GUEST-UP"),
            "exit 0 without a boot: {console}"
        );
    } else {
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("KVM_EXIT_INTERNAL_ERROR") || stderr.contains("cannot open /dev/kvm"),
            "{stderr}"
        );
    }
    assert!(!socket.exists(), "the API socket is removed at exit");
}

/// Firecracker's MMDS sequences before boot: the data store works with or
/// without `PUT /mmds/config`, which needs configured interfaces and a
/// link-local address.
#[test]
fn mmds_config_and_data_store() {
    let s = Scratch::new("mmds");
    let metrics = s.path("metrics.json");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    assert_eq!(
        api.put("/metrics", &json!({"metrics_path": metrics}))
            .status,
        204
    );

    // Empty before any PUT; a PATCH has nothing to merge into.
    let reply = api.get("/mmds");
    assert_eq!((reply.status, reply.json()), (200, json!({})));
    let reply = api.request("PATCH", "/mmds", Some(r#"{"a": 1}"#));
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.fault(),
        "MMDS error: The MMDS data store is not initialized."
    );

    let config = |body: Value| body;
    let cases = [
        (
            config(json!({"network_interfaces": ["eth0"]})),
            "MMMDS config error: The list of network interface IDs provided contains at least one \
             ID that does not correspond to any existing network interface.",
        ),
        (
            config(json!({"network_interfaces": []})),
            "MMMDS config error: The list of network interface IDs that allow forwarding MMDS \
             requests is empty.",
        ),
        (
            config(json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"})),
            "MMMDS config error: The MMDS IPv4 address is not link local.",
        ),
        (
            config(json!({"network_interfaces": ["eth0"], "ipv4_address": "169.254.0.5"})),
            "MMMDS config error: The MMDS IPv4 address is not link local.",
        ),
        (
            config(json!({"network_interfaces": ["eth0"], "version": "V3"})),
            "unknown variant `V3`, expected `V1` or `V2`",
        ),
        (
            config(json!({"network_interfaces": ["eth0"], "ipv4_address": "x"})),
            "invalid IPv4 address syntax",
        ),
        (
            config(json!({"network_interfaces": ["eth0"], "extra": 1})),
            "unknown field `extra`",
        ),
    ];
    // The unknown interface is checked against what is configured: the
    // first case before eth0 exists, the others after.
    let (first, first_fault) = &cases[0];
    let reply = api.put("/mmds/config", first);
    assert_eq!(
        (reply.status, reply.fault()),
        (400, first_fault.to_string())
    );
    let nic = json!({"iface_id": "eth0", "host_dev_name": "lo"});
    assert_eq!(api.put("/network-interfaces/eth0", &nic).status, 204);
    for (body, needle) in &cases[1..] {
        let reply = api.put("/mmds/config", body);
        assert_eq!(reply.status, 400, "{body}");
        assert!(reply.fault().contains(needle), "{body}: {}", reply.fault());
    }
    assert_eq!(api.get("/vm/config").json()["mmds-config"], Value::Null);

    // V1 (also the default) is deprecated.
    let reply = api.put("/mmds/config", &json!({"network_interfaces": ["eth0"]}));
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("Deprecation"), Some("true"));
    let v2 = json!({"version": "V2", "network_interfaces": ["eth0"],
                    "ipv4_address": "169.254.170.2", "imds_compat": true});
    let reply = api.put("/mmds/config", &v2);
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("Deprecation"), None);
    assert_eq!(api.get("/vm/config").json()["mmds-config"], v2);
    let reply = api.put(
        "/mmds/config",
        &json!({"version": "V2", "network_interfaces": ["eth0"]}),
    );
    assert_eq!(reply.status, 204);
    assert_eq!(
        api.get("/vm/config").json()["mmds-config"],
        json!({"version": "V2", "network_interfaces": ["eth0"],
               "ipv4_address": "169.254.169.254", "imds_compat": false}),
        "the default address, filled in"
    );

    // PUT replaces, PATCH merges (RFC 7396).
    let data = json!({"latest": {"meta-data": {"ami-id": "ami-1", "reservation-id": "r-1"}}});
    assert_eq!(api.put("/mmds", &data).status, 204);
    assert_eq!(api.get("/mmds").json(), data);
    let patch = r#"{"latest": {"meta-data": {"ami-id": "ami-2", "reservation-id": null}}, "user-data": "x"}"#;
    assert_eq!(api.request("PATCH", "/mmds", Some(patch)).status, 204);
    assert_eq!(
        api.get("/mmds").json(),
        json!({"latest": {"meta-data": {"ami-id": "ami-2"}}, "user-data": "x"})
    );
    // Not JSON: refused, nothing changed.
    let reply = api.request("PUT", "/mmds", Some("{not json"));
    assert_eq!(reply.status, 400);
    assert!(
        reply.fault().contains("deserializing the json body"),
        "{}",
        reply.fault()
    );
    assert_eq!(
        api.request("PUT", "/mmds", None).fault(),
        "Empty PUT request."
    );
    assert_eq!(api.get("/mmds").json()["user-data"], "x");

    // A configured service is a boot resource: no snapshot load.
    let load = json!({"snapshot_path": s.path("none.state"), "mem_backend":
                      {"backend_type": "File", "backend_path": s.path("none.mem")}});
    let reply = api.put("/snapshot/load", &load);
    assert_eq!(reply.status, 400);
    assert!(
        reply.fault().contains("not allowed after configuring"),
        "{}",
        reply.fault()
    );

    assert_eq!(
        api.put("/actions", &json!({"action_type": "FlushMetrics"}))
            .status,
        204
    );
    let line = std::fs::read_to_string(&metrics).expect("metrics file");
    let line: Value = serde_json::from_str(line.trim()).expect("one JSON line");
    assert_eq!(line["get_api_requests"]["mmds_count"], 4);
    assert_eq!(line["patch_api_requests"]["mmds_count"], 2);
    assert_eq!(line["patch_api_requests"]["mmds_fails"], 1);
    // The four refused by the controller (bodies that do not parse are
    // refused before any counter, as for every endpoint here).
    assert_eq!(line["put_api_requests"]["mmds_fails"], 4);
    assert_eq!(line["mmds"]["rx_no_token"], 0, "{line}");
}

/// The data store alone (no `PUT /mmds/config`) does not stop a snapshot
/// load: the load fails only for want of a snapshot.
#[test]
fn mmds_data_before_a_snapshot_load() {
    let s = Scratch::new("mmds-load");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    assert_eq!(api.put("/mmds", &json!({"a": "b"})).status, 204);
    let load = json!({"snapshot_path": s.path("none.state"), "mem_backend":
                      {"backend_type": "File", "backend_path": s.path("none.mem")}});
    let reply = api.put("/snapshot/load", &load);
    assert_eq!(reply.status, 400);
    assert!(
        reply.fault().starts_with("Cannot load the snapshot"),
        "{}",
        reply.fault()
    );
    assert_eq!(api.get("/mmds").json(), json!({"a": "b"}));
}

/// `--mmds-size-limit` bounds the serialised document (413 past it, as
/// Firecracker); without it the limit is `--http-api-max-payload-size`,
/// which also bounds each request body (400 past it).
#[test]
fn mmds_size_limit() {
    let s = Scratch::new("mmds-limit");
    let vmm = Vmm::start(
        &s,
        &[
            "--http-api-max-payload-size",
            "1000",
            "--mmds-size-limit",
            "100",
        ],
    );
    let mut api = vmm.connect();
    let small = json!({"latest": {"meta-data": {"ami-id": "dummy"}}});
    assert_eq!(api.put("/mmds", &small).status, 204);
    let large = json!({"latest": {"meta-data": {"ami-id": "x".repeat(200)}}});
    let reply = api.put("/mmds", &large);
    assert_eq!(reply.status, 413);
    assert_eq!(
        reply.fault(),
        "MMDS limit exceeded error: The MMDS patch request doesn't fit."
    );
    assert_eq!(api.get("/mmds").json(), small);
    // Up to the limit exactly: {"latest":{"meta-data":{"ami-id":"…"}}} is
    // 38 bytes around the value.
    let full = json!({"latest": {"meta-data": {"ami-id": "y".repeat(62)}}});
    assert_eq!(serde_json::to_vec(&full).unwrap().len(), 100);
    let reply = api.request("PATCH", "/mmds", Some(&full.to_string()));
    assert_eq!(reply.status, 204);
    let reply = api.request("PATCH", "/mmds", Some(r#"{"b": "c"}"#));
    assert_eq!(reply.status, 413);
    assert_eq!(api.get("/mmds").json(), full);
    // The request body limit comes first.
    let huge = json!({"a": "z".repeat(2000)});
    let reply = api.put("/mmds", &huge);
    assert_eq!(reply.status, 400);
    assert!(reply
        .framing_error()
        .contains("is larger than the limit of 1000"));
    drop(api);
    drop(vmm);

    let s = Scratch::new("mmds-default-limit");
    let vmm = Vmm::start(&s, &["--http-api-max-payload-size", "70000"]);
    let mut api = vmm.connect();
    let big = json!({"a": "b".repeat(60_000)});
    assert_eq!(
        api.put("/mmds", &big).status,
        204,
        "past Firecracker's 51200"
    );
    // A PUT cannot pass that limit (its body would be refused first); a
    // PATCH growing the document can.
    let grow = json!({"c": "d".repeat(9_990)});
    let reply = api.request("PATCH", "/mmds", Some(&grow.to_string()));
    assert_eq!(reply.status, 413);
}

/// `--metadata` fills the store at launch, as Firecracker's.
#[test]
fn mmds_metadata_flag() {
    let s = Scratch::new("mmds-metadata");
    let file = s.file("metadata.json", br#"{"latest": {"user-data": "hello"}}"#);
    let vmm = Vmm::start(&s, &["--metadata", &file]);
    let mut api = vmm.connect();
    assert_eq!(
        api.get("/mmds").json(),
        json!({"latest": {"user-data": "hello"}})
    );
    let bad = s.file("bad.json", b"{");
    let other = s.path("other.sock").display().to_string();
    let out = run(&["--api-sock", &other, "--metadata", &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid metadata file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `PUT /serial` before boot: Firecracker's bodies are taken, bad ones
/// refused with the reason, and a named pipe without a reader is fine (it
/// is opened non-blocking at start). It is not a resource of the VM: a
/// snapshot may still be loaded after it, as in Firecracker.
#[test]
fn serial_before_boot() {
    let s = Scratch::new("serial");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    for (body, fault) in [
        (json!({"serial_out_path": ""}), "serial_out_path is empty"),
        (
            json!({"serial_out_path": "x", "stdin": true}),
            "unknown field",
        ),
        (
            json!({"rate_limiter": {"size": 1, "refill_time": 99_999_999_999_999u64}}),
            "one year",
        ),
        (json!({"rate_limiter": {"size": 1}}), "refill_time"),
    ] {
        let reply = api.put("/serial", &body);
        assert_eq!(reply.status, 400, "{body}");
        assert!(reply.fault().contains(fault), "{body}: {}", reply.fault());
    }
    let fifo = s.path("serial.fifo");
    mkfifo(&fifo);
    let body = json!({"serial_out_path": fifo,
                      "rate_limiter": {"size": 1024, "one_time_burst": 65536, "refill_time": 1000}});
    assert_eq!(api.put("/serial", &body).status, 204);
    // Firecracker's GET /vm/config has no serial section either.
    assert!(api.get("/vm/config").json().get("serial").is_none());
    let load = api.put(
        "/snapshot/load",
        &json!({"snapshot_path": s.path("missing.state"), "mem_file_path": s.path("missing.mem")}),
    );
    assert_eq!(load.status, 400);
    assert!(
        load.fault().starts_with("Cannot load the snapshot"),
        "not refused for PUT /serial: {}",
        load.fault()
    );
}

/// `PUT /cpu-config` with a Firecracker custom template: taken before
/// boot and shown in `GET /vm/config` as Firecracker writes it; bad
/// templates refused with the reason; one this host's KVM cannot honour
/// fails InstanceStart, naming what is missing, and nothing starts.
#[test]
fn cpu_config_before_boot() {
    let s = Scratch::new("cpu-config");
    let kernel = s.file("vmlinux", &tiny_elf(16));
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    for (body, fault) in [
        (json!({"reg_modifiers": []}), "unknown field"),
        (json!({"kvm_capabilities": ["one"]}), "not a number"),
        (
            json!({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                   "modifiers": [{"register": "ecx", "bitmap": "0b2"}]}]}),
            "is not 0, 1, x or _",
        ),
    ] {
        let reply = api.put("/cpu-config", &body);
        assert_eq!(reply.status, 400, "{body}");
        assert!(reply.fault().contains(fault), "{body}: {}", reply.fault());
    }
    let template = json!({
        "kvm_capabilities": ["!1"],
        "cpuid_modifiers": [{"leaf": "1", "subleaf": "0b0", "flags": 0,
            "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxx0xxxxxxxxxxxxxxxxxxxxxxx"}]}],
        "msr_modifiers": [{"addr": "0x1a0", "bitmap": "0bxxxxxxxx"}]
    });
    assert_eq!(api.put("/cpu-config", &template).status, 204);
    let shown = api.get("/vm/config").json()["cpu-config"].clone();
    assert_eq!(shown["cpuid_modifiers"][0]["leaf"], "0x1");
    assert_eq!(
        shown["cpuid_modifiers"][0]["modifiers"][0]["bitmap"],
        "0bxxxxxxxx0xxxxxxxxxxxxxxxxxxxxxxx"
    );
    assert_eq!(shown["msr_modifiers"][0]["addr"], "0x1a0");
    assert_eq!(shown["kvm_capabilities"], json!(["!1"]));

    // A leaf KVM offers no guest, then a capability no KVM has: each fails
    // the start and leaves the VMM configurable.
    assert_eq!(
        api.put("/boot-source", &json!({"kernel_image_path": kernel}))
            .status,
        204
    );
    let start = json!({"action_type": "InstanceStart"});
    for (template, missing) in [
        (
            json!({"cpuid_modifiers": [{"leaf": "0x4ffffff0", "subleaf": "0x0", "flags": 0,
                   "modifiers": []}]}),
            "CPUID leaf 0x4ffffff0 subleaf 0x0 is not one KVM offers",
        ),
        (
            json!({"kvm_capabilities": ["4000000"]}),
            "has no capability 4000000",
        ),
    ] {
        assert_eq!(api.put("/cpu-config", &template).status, 204);
        let reply = api.put("/actions", &start);
        assert_eq!(reply.status, 400);
        let fault = reply.fault();
        assert!(
            fault.contains(missing) || fault.contains("/dev/kvm"),
            "{fault}"
        );
        assert_eq!(api.get("/").json()["state"], "Not started");
    }
}
