//! The control API, end to end: the real `vmm` binary with `--api-sock`,
//! spoken to over its Unix socket with raw HTTP/1.1, as Firecracker clients
//! do. None of these needs a guest to run, so they pass on any Linux host;
//! booting through the API is covered by the nested-host tests.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
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
        while !vmm.socket.exists() {
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
    assert_eq!(
        api.get("/version").json()["firecracker_version"],
        info["vmm_version"]
    );
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
            "PUT /snapshot/create is not supported",
        ),
        ("GET", "/balloon", "", "GET /balloon is not supported"),
        ("PUT", "/mmds", "{}", "PUT /mmds is not supported"),
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
        assert!(!reply.fault().is_empty());
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

#[test]
fn oversize_body_is_refused_before_it_is_read() {
    let s = Scratch::new("oversize");
    let vmm = Vmm::start(&s, &[]);
    let mut api = vmm.connect();
    api.send_raw(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n{");
    let reply = api.read_reply().expect("an error reply");
    assert_eq!(reply.status, 413);
    assert!(
        reply.fault().contains("larger than the limit"),
        "{}",
        reply.fault()
    );
    assert!(api.closed());
    assert_eq!(vmm.connect().get("/").status, 200);
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
        text.contains(":WARNING] invalid machine configuration"),
        "{text}"
    );

    let config = api.get("/vm/config").json();
    assert_eq!(config["metrics"]["metrics_path"], json!(metrics));
    assert_eq!(config["logger"]["log_path"], json!(log));
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
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = s.file(
            &format!("vm{i}.json"),
            text.replace('K', &kernel).as_bytes(),
        );
        let out = run(&["--config-file", &path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {err}");
        assert!(err.starts_with("vmm: error: "), "{err}");
        assert!(err.contains(needle), "{text}: {err:?} lacks {needle:?}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = run(&["--config-file", "/nonexistent/vm.json"]);
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
        &["--no-console-input"],
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
