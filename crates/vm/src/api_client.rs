//! A minimal HTTP/1.1 client for `vmm`'s control API on its Unix socket.
//!
//! Why not hyper: the API is a handful of small JSON requests to a local
//! process, one at a time, and the callers (launch, the VM service through
//! `spawn_blocking`) are synchronous. A blocking `UnixStream` with read and
//! write timeouts is all it takes, and a hung `vmm` can never hang the
//! agent: every call fails with [`ApiError::Io`] after the timeout.
//!
//! Each request opens its own connection (vmm serves each connection on
//! its own thread), so an [`ApiClient`] is just a path and a timeout: cheap
//! to clone into a blocking task, and no connection state to repair after
//! an error. Bodies are `Content-Length` framed both ways; refusals carry
//! vmm's `{"fault_message": ...}` text in [`ApiError::Fault`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default per-request timeout (connect, write and each read).
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(10);
/// InstanceStart's timeout: vmm answers once it has loaded the kernel and
/// initrd into guest memory and started the vCPUs, which on a host busy
/// booting other VMs takes longer than a configuration request.
pub const INSTANCE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest response body accepted; vmm's biggest (`/vm/config`) is a few KiB.
const MAX_BODY: usize = 1 << 20;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be connected (vmm not running, not yet bound).
    #[error("cannot connect to vmm API at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },

    /// vmm did not take the request or answer it within the timeout.
    #[error("vmm API {method} {path}: no answer within {after:?}")]
    TimedOut {
        method: &'static str,
        path: String,
        after: Duration,
    },

    /// Writing the request or reading the reply failed.
    #[error("vmm API {method} {path}: {source}")]
    Io {
        method: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },

    /// The reply was not the HTTP/1.1 vmm speaks.
    #[error("vmm API {method} {path}: malformed reply: {reason}")]
    Malformed {
        method: &'static str,
        path: String,
        reason: String,
    },

    /// vmm answered with an error status; `message` is its `fault_message`
    /// (or the raw body when it had none).
    #[error("vmm refused {method} {path} ({status}): {message}")]
    Fault {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },

    /// A 2xx body that does not decode as the expected JSON.
    #[error("vmm API {method} {path}: unexpected body: {source}")]
    Body {
        method: &'static str,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ApiError {
    /// vmm's own explanation, when it refused the request.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            ApiError::Fault { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// `GET /` state of the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
    /// A state this client does not know (a newer vmm).
    #[serde(other)]
    Unknown,
}

/// `GET /` body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
    pub app_name: String,
}

/// `PUT /boot-source` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// `None`: vmm's default command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `PUT /machine-config` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MachineConfig {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
}

/// `PUT /drives/{drive_id}` body. vmm uses the drive id as the serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: PathBuf,
    pub is_root_device: bool,
    pub is_read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /vsock` body: the guest's CID and the host's hybrid-vsock socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: PathBuf,
}

/// `PUT /network-interfaces/{iface_id}` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// A device's rate limiter, as Firecracker's API takes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RateLimiter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// `size` units refilled every `refill_time` ms, `one_time_burst` first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TokenBucket {
    pub size: u64,
    pub refill_time: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub one_time_burst: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `PUT /snapshot/create` body: a Full snapshot of a paused VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotCreate {
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
}

/// `PUT /snapshot/load` body: the memory mapped from `mem_backend`'s file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotLoad {
    pub snapshot_path: PathBuf,
    pub mem_backend: MemBackend,
    pub resume_vm: bool,
    /// The clone's own TAPs in place of the parent's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    /// The clone's own vsock socket in place of the parent's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
}

/// A restored vsock device's host socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VsockOverride {
    pub uds_path: PathBuf,
}

/// Where a snapshot's guest memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemBackend {
    /// Always `File` here.
    pub backend_type: &'static str,
    pub backend_path: PathBuf,
}

impl MemBackend {
    /// Guest memory mapped from the file at `path`.
    pub fn file(path: impl Into<PathBuf>) -> MemBackend {
        MemBackend {
            backend_type: "File",
            backend_path: path.into(),
        }
    }
}

/// `PUT /balloon` body: a virtio-balloon device, configured before boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Balloon {
    /// The target at boot, MiB.
    pub amount_mib: u32,
    /// The guest may take pages back from the balloon rather than
    /// OOM-kill one of its processes.
    pub deflate_on_oom: bool,
    /// How often the guest reports its memory statistics; 0: never.
    pub stats_polling_interval_s: u16,
}

/// `GET /balloon/statistics` body, the parts the agent reads (unknown
/// fields ignored; the guest's figures are absent until it reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BalloonStatistics {
    /// What the host asked the balloon to hold.
    pub target_mib: u32,
    /// What the guest's driver says it holds.
    pub actual_mib: u32,
    /// The guest's MemAvailable, bytes.
    #[serde(default)]
    pub available_memory: Option<u64>,
    /// The guest's MemTotal, bytes (with deflate-on-OOM, Linux counts the
    /// balloon's pages in it, as used).
    #[serde(default)]
    pub total_memory: Option<u64>,
}

/// A restored NIC's TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `GET /stratum/stats` body (unknown fields ignored, for newer vmms).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmStats {
    pub uptime_ms: u64,
    #[serde(default)]
    pub guest_boot_time_us: Option<u64>,
    #[serde(default)]
    pub vcpus: Vec<VcpuStats>,
    #[serde(default)]
    pub devices: Vec<DeviceStats>,
}

/// One vCPU's exit counters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VcpuStats {
    pub index: u32,
    pub exits: VcpuExits,
}

/// Why a vCPU left the guest, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct VcpuExits {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub interrupted: u64,
}

/// One virtio device's interrupt count.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeviceStats {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub interrupts: u64,
}

/// A parsed HTTP reply.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

/// Client of one vmm's API socket. Every method blocks for at most about
/// the timeout per network step; run it in `spawn_blocking` from async code.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the socket at `socket`, with [`DEFAULT_API_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            socket: socket.into(),
            timeout: DEFAULT_API_TIMEOUT,
        }
    }

    /// The same client with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The API socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /`: instance id and state.
    pub fn info(&self) -> Result<InstanceInfo, ApiError> {
        self.get_json("/")
    }

    /// `GET /vm/config`: the VM's whole configuration as vmm holds it.
    pub fn vm_config(&self) -> Result<serde_json::Value, ApiError> {
        self.get_json("/vm/config")
    }

    /// `PUT /boot-source`.
    pub fn put_boot_source(&self, boot: &BootSource) -> Result<(), ApiError> {
        self.send("PUT", "/boot-source", boot)
    }

    /// `PUT /machine-config`.
    pub fn put_machine_config(&self, config: &MachineConfig) -> Result<(), ApiError> {
        self.send("PUT", "/machine-config", config)
    }

    /// `PUT /drives/{drive_id}`.
    pub fn put_drive(&self, drive: &Drive) -> Result<(), ApiError> {
        self.send("PUT", &format!("/drives/{}", drive.drive_id), drive)
    }

    /// `PUT /network-interfaces/{iface_id}`.
    pub fn put_network_interface(&self, nic: &NetworkInterface) -> Result<(), ApiError> {
        let path = format!("/network-interfaces/{}", nic.iface_id);
        self.send("PUT", &path, nic)
    }

    pub fn put_vsock(&self, vsock: &Vsock) -> Result<(), ApiError> {
        self.send("PUT", "/vsock", vsock)
    }

    /// `PUT /mmds/config`: the metadata service (V2, session tokens) on
    /// the interface `iface_id`.
    pub fn put_mmds_config(&self, iface_id: &str) -> Result<(), ApiError> {
        let config = serde_json::json!({
            "version": "V2",
            "network_interfaces": [iface_id],
        });
        self.send("PUT", "/mmds/config", &config)
    }

    /// `GET /mmds`: the metadata service's document.
    pub fn mmds(&self) -> Result<serde_json::Value, ApiError> {
        self.get_json("/mmds")
    }

    /// `PUT /mmds`: the metadata service's document.
    pub fn put_mmds(&self, document: &serde_json::Value) -> Result<(), ApiError> {
        self.send("PUT", "/mmds", document)
    }

    /// `PUT /balloon`, before boot.
    pub fn put_balloon(&self, balloon: &Balloon) -> Result<(), ApiError> {
        self.send("PUT", "/balloon", balloon)
    }

    /// `PATCH /balloon`: the running balloon's new target.
    pub fn set_balloon_target(&self, amount_mib: u32) -> Result<(), ApiError> {
        self.send(
            "PATCH",
            "/balloon",
            &serde_json::json!({ "amount_mib": amount_mib }),
        )
    }

    /// `GET /balloon/statistics`.
    pub fn balloon_statistics(&self) -> Result<BalloonStatistics, ApiError> {
        self.get_json("/balloon/statistics")
    }

    /// `PUT /actions` InstanceStart: returns once the vCPUs run. Waits up
    /// to [`INSTANCE_START_TIMEOUT`] when that is longer than the client's.
    pub fn instance_start(&self) -> Result<(), ApiError> {
        self.with_start_timeout()
            .action("/actions", "InstanceStart")
    }

    /// This client, waiting at least [`INSTANCE_START_TIMEOUT`].
    fn with_start_timeout(&self) -> ApiClient {
        self.clone()
            .with_timeout(self.timeout.max(INSTANCE_START_TIMEOUT))
    }

    /// `PUT /actions` SendCtrlAltDel: asks the guest to shut down.
    pub fn send_ctrl_alt_del(&self) -> Result<(), ApiError> {
        self.action("/actions", "SendCtrlAltDel")
    }

    /// `PATCH /vm` Paused.
    pub fn pause(&self) -> Result<(), ApiError> {
        self.set_vm_state("Paused")
    }

    /// `PATCH /vm` Resumed.
    pub fn resume(&self) -> Result<(), ApiError> {
        self.set_vm_state("Resumed")
    }

    /// `PUT /snapshot/create`; the VM must be paused. Writing guest memory
    /// out takes as long as InstanceStart's loading it in.
    pub fn create_snapshot(&self, snapshot: &SnapshotCreate) -> Result<(), ApiError> {
        self.with_start_timeout()
            .send("PUT", "/snapshot/create", snapshot)
    }

    /// `PUT /snapshot/load` on a vmm that has not been configured.
    pub fn load_snapshot(&self, snapshot: &SnapshotLoad) -> Result<(), ApiError> {
        self.with_start_timeout()
            .send("PUT", "/snapshot/load", snapshot)
    }

    /// `PUT /stratum/actions` HardStop: vmm ends the VM at once and exits 0.
    pub fn hard_stop(&self) -> Result<(), ApiError> {
        self.action("/stratum/actions", "HardStop")
    }

    /// `GET /stratum/stats`.
    pub fn stats(&self) -> Result<VmStats, ApiError> {
        self.get_json("/stratum/stats")
    }

    fn action(&self, path: &str, action_type: &str) -> Result<(), ApiError> {
        self.send(
            "PUT",
            path,
            &serde_json::json!({ "action_type": action_type }),
        )
    }

    fn set_vm_state(&self, state: &str) -> Result<(), ApiError> {
        self.send("PATCH", "/vm", &serde_json::json!({ "state": state }))
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, ApiError> {
        let reply = self.request("GET", path, None)?;
        serde_json::from_slice(&reply.body).map_err(|source| ApiError::Body {
            method: "GET",
            path: path.to_string(),
            source,
        })
    }

    fn send<T: Serialize>(
        &self,
        method: &'static str,
        path: &str,
        body: &T,
    ) -> Result<(), ApiError> {
        // Serialising these plain structs and `json!` values cannot fail.
        let body = serde_json::to_vec(body).map_err(|source| ApiError::Body {
            method,
            path: path.to_string(),
            source,
        })?;
        self.request(method, path, Some(&body)).map(drop)
    }

    /// One request on a fresh connection; non-2xx replies become `Fault`.
    fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, ApiError> {
        let stream = self.connect()?;
        // A socket timeout shows as WouldBlock (SO_RCVTIMEO) or TimedOut.
        let io_err = |source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ApiError::TimedOut {
                method,
                path: path.to_string(),
                after: self.timeout,
            },
            _ => ApiError::Io {
                method,
                path: path.to_string(),
                source,
            },
        };
        write_request(&stream, method, path, body).map_err(io_err)?;
        let reply = read_reply(&mut BufReader::new(&stream)).map_err(|e| match e {
            ReadError::Io(source) => io_err(source),
            ReadError::Malformed(reason) => ApiError::Malformed {
                method,
                path: path.to_string(),
                reason,
            },
        })?;
        if (200..300).contains(&reply.status) {
            return Ok(reply);
        }
        Err(ApiError::Fault {
            method,
            path: path.to_string(),
            status: reply.status,
            message: fault_message(&reply.body),
        })
    }

    fn connect(&self) -> Result<UnixStream, ApiError> {
        let connect_err = |source| ApiError::Connect {
            socket: self.socket.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.socket).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(connect_err)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(connect_err)?;
        Ok(stream)
    }
}

fn write_request(
    mut stream: &UnixStream,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> io::Result<()> {
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request)?;
    stream.flush()
}

enum ReadError {
    Io(io::Error),
    Malformed(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Status line, headers (only `Content-Length` matters) and body.
fn read_reply(reader: &mut impl BufRead) -> Result<Reply, ReadError> {
    let status_line = read_line(reader)?;
    let status = parse_status(&status_line)?;
    let mut length = 0usize;
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        if let Some(value) = header_value(&line, "content-length") {
            length = value
                .parse()
                .map_err(|_| ReadError::Malformed(format!("bad Content-Length {value:?}")))?;
        }
    }
    if length > MAX_BODY {
        return Err(ReadError::Malformed(format!(
            "body of {length} bytes is too large"
        )));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Reply { status, body })
}

/// One CRLF-terminated line without its terminator; EOF is an error.
fn read_line(reader: &mut impl BufRead) -> Result<String, ReadError> {
    let mut line = String::new();
    let n = reader.by_ref().take(8192).read_line(&mut line)?;
    if n == 0 {
        return Err(ReadError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the reply ended",
        )));
    }
    if !line.ends_with('\n') {
        return Err(ReadError::Malformed("header line too long or cut".into()));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn parse_status(line: &str) -> Result<u16, ReadError> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().and_then(|c| c.parse().ok());
    match code {
        Some(code) if version.starts_with("HTTP/1.") => Ok(code),
        _ => Err(ReadError::Malformed(format!("bad status line {line:?}"))),
    }
}

fn header_value<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (key, value) = line.split_once(':')?;
    key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
}

/// The `fault_message` of an error body, or the body itself.
fn fault_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Fault {
        fault_message: String,
    }
    match serde_json::from_slice::<Fault>(body) {
        Ok(fault) => fault.fault_message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    fn parse(raw: &str) -> Result<Reply, ReadError> {
        read_reply(&mut io::Cursor::new(raw.as_bytes().to_vec()))
    }

    #[test]
    fn reply_with_and_without_body() {
        let reply = parse("HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n")
            .ok()
            .unwrap();
        assert_eq!((reply.status, reply.body.len()), (204, 0));
        let reply = parse("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            .ok()
            .unwrap();
        assert_eq!((reply.status, reply.body), (200, b"{}".to_vec()));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for raw in [
            "",
            "garbage\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
        ] {
            assert!(parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn fault_message_is_extracted_or_body_kept() {
        assert_eq!(
            fault_message(br#"{"fault_message": "no kernel"}"#),
            "no kernel"
        );
        assert_eq!(fault_message(b"plain text\n"), "plain text");
    }

    /// A one-shot server answering every request with `reply`.
    fn serve_once(reply: &'static str) -> (tempfile::TempDir, ApiClient) {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        (
            dir,
            ApiClient::new(socket).with_timeout(Duration::from_secs(2)),
        )
    }

    #[test]
    fn a_400_is_a_fault_with_vmm_message() {
        let (_dir, api) = serve_once(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 29\r\n\r\n{\"fault_message\":\"bad thing\"}",
        );
        let err = api.instance_start().unwrap_err();
        assert_eq!(err.fault_message(), Some("bad thing"), "{err}");
        assert!(
            err.to_string().contains("PUT /actions (400): bad thing"),
            "{err}"
        );
    }

    #[test]
    fn a_silent_server_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let _listener = UnixListener::bind(&socket).expect("bind");
        let api = ApiClient::new(&socket).with_timeout(Duration::from_millis(200));
        let err = api.info().unwrap_err();
        assert!(matches!(err, ApiError::TimedOut { .. }), "{err}");
        assert_eq!(err.to_string(), "vmm API GET /: no answer within 200ms");
    }

    #[test]
    fn no_socket_is_a_connect_error() {
        let err = ApiClient::new("/nonexistent/api.sock").info().unwrap_err();
        assert!(matches!(err, ApiError::Connect { .. }), "{err}");
    }
}
