//! The CRI streaming server: where `Exec` sends a kubelet (or `crictl
//! exec`) to run a command in a container with its input and output
//! streamed, as Kubernetes' remotecommand protocol carries them.
//!
//! The CRI's `Exec` call does not stream: it answers with a URL, and the
//! client then opens an HTTP/1.1 connection to it, upgraded to SPDY/3.1,
//! on which it opens one stream per channel (`error`, `stdin`, `stdout`,
//! `stderr`, `resize`). What this module owns: the listener (loopback
//! only: the kubelet runs on this host, and the URL is all the
//! authority a client shows), the one-time tokens that bind a URL to the
//! request the CRI call authorized, the upgrade handshake and protocol
//! negotiation (`v4.channel.k8s.io` down to `channel.k8s.io`), the
//! streams' plumbing to the exec'd process, and the exit status written
//! on the error stream as a Kubernetes `Status`.
//!
//! What it refuses: a token that is unknown, used or older than
//! [`TOKEN_TTL`] (404), a request that is not a SPDY/3.1 upgrade (400;
//! WebSocket clients are not served yet), a client that offers no
//! protocol version we speak (403), a request head over
//! [`MAX_REQUEST_HEAD`] or slower than [`HANDSHAKE_TIMEOUT`], streams
//! that do not arrive within [`STREAM_CREATION_TIMEOUT`], and more than
//! [`MAX_PENDING`] URLs handed out and not yet used. The process and its
//! confinement are the pod manager's; this module only moves bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use stratum_spdy::session::{Config as SessionConfig, FlowControl, Session, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Status;

use stratum_runtime::LogStream;

use crate::agent::Agent;

/// How long a URL handed out by `Exec` stays usable (the kubelet's own
/// streaming server keeps them a minute too).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// URLs handed out and not used yet, at most.
pub const MAX_PENDING: usize = 1024;
/// The request line and headers of the upgrade, at most.
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// The time a client has to send its request head.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The time a client has to open the streams it asked for (the
/// kubelet's default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// The remotecommand versions we speak, most preferred first.
const PROTOCOLS: [&str; 4] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// Headers a request may carry, at most.
const MAX_HEADERS: usize = 64;

/// The channels a remotecommand request asks for.
#[derive(Debug, Clone, Copy)]
pub struct Channels {
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Channels {
    /// The channels of `call`, checked as the kubelet checks them.
    fn checked(
        call: &str,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<Self, Status> {
        if !(stdin || stdout || stderr) {
            return Err(Status::invalid_argument(format!(
                "{call}: one of stdin, stdout and stderr must be asked for"
            )));
        }
        if tty && stderr {
            return Err(Status::invalid_argument(format!(
                "{call}: a terminal has no separate stderr (tty and stderr both set)"
            )));
        }
        Ok(Self {
            tty,
            stdin,
            stdout,
            stderr,
        })
    }

    /// The stream types the client opens for them.
    fn expected_streams(&self) -> Vec<&'static str> {
        let mut kinds = vec!["error"];
        for (asked, kind) in [
            (self.stdin, "stdin"),
            (self.stdout, "stdout"),
            (self.stderr, "stderr"),
            (self.tty, "resize"),
        ] {
            if asked {
                kinds.push(kind);
            }
        }
        kinds
    }
}

/// What an `Exec` call authorized: a command in one container.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub pod_id: String,
    pub container: String,
    pub cmd: Vec<String>,
    pub channels: Channels,
}

impl ExecTarget {
    /// The request, checked as the kubelet checks it.
    pub fn from_request(
        pod_id: String,
        container: String,
        r: &cri::ExecRequest,
    ) -> Result<Self, Status> {
        if r.cmd.first().is_none_or(String::is_empty) {
            return Err(Status::invalid_argument("exec: no command"));
        }
        if r.cmd.iter().any(|a| a.contains('\0')) {
            return Err(Status::invalid_argument(
                "exec: an argument holds a NUL byte",
            ));
        }
        Ok(Self {
            pod_id,
            container,
            cmd: r.cmd.clone(),
            channels: Channels::checked("exec", r.tty, r.stdin, r.stdout, r.stderr)?,
        })
    }
}

/// What an `Attach` call authorized: a running container's own stdio.
#[derive(Debug, Clone)]
pub struct AttachTarget {
    pub pod_id: String,
    pub container: String,
    pub channels: Channels,
}

impl AttachTarget {
    /// The request, checked as the kubelet checks it.
    pub fn from_request(
        pod_id: String,
        container: String,
        r: &cri::AttachRequest,
    ) -> Result<Self, Status> {
        Ok(Self {
            pod_id,
            container,
            channels: Channels::checked("attach", r.tty, r.stdin, r.stdout, r.stderr)?,
        })
    }
}

/// What a `PortForward` call authorized: connections to a pod's ports
/// (any port when the request named none, as the kubelet allows).
#[derive(Debug, Clone)]
pub struct PortForwardTarget {
    pub pod_id: String,
    pub ports: Vec<u16>,
}

impl PortForwardTarget {
    pub fn from_request(pod_id: String, r: &cri::PortForwardRequest) -> Result<Self, Status> {
        let ports =
            r.port
                .iter()
                .map(|p| {
                    u16::try_from(*p).ok().filter(|p| *p != 0).ok_or_else(|| {
                        Status::invalid_argument(format!("port forward: no port {p}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { pod_id, ports })
    }
}

/// A URL's purpose.
#[derive(Debug, Clone)]
enum Target {
    Exec(ExecTarget),
    Attach(AttachTarget),
    PortForward(PortForwardTarget),
}

impl Target {
    /// The URL path's first segment.
    fn kind(&self) -> &'static str {
        match self {
            Target::Exec(_) => "exec",
            Target::Attach(_) => "attach",
            Target::PortForward(_) => "portforward",
        }
    }

    /// The protocol versions spoken for it, most preferred first.
    fn protocols(&self) -> &'static [&'static str] {
        match self {
            Target::Exec(_) | Target::Attach(_) => &PROTOCOLS,
            Target::PortForward(_) => &[PORT_FORWARD_PROTOCOL],
        }
    }
}

/// The port-forward protocol's one version.
const PORT_FORWARD_PROTOCOL: &str = "portforward.k8s.io";

/// The streaming server: its address and the URLs handed out.
pub struct StreamingServer {
    addr: SocketAddr,
    pending: Mutex<HashMap<String, (Instant, Target)>>,
}

impl std::fmt::Debug for StreamingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingServer")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Why the streaming server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    #[error("the CRI streaming address {addr} is not a loopback address: the URLs it serves are the only authority a client shows")]
    NotLoopback { addr: SocketAddr },
    #[error("cannot listen on {addr} for CRI streaming: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StreamingServer {
    /// Listens on `addr` (loopback only; port 0 picks one).
    pub async fn bind(addr: SocketAddr) -> Result<(Arc<Self>, TcpListener), StreamingError> {
        if !addr.ip().is_loopback() {
            return Err(StreamingError::NotLoopback { addr });
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StreamingError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StreamingError::Bind { addr, source })?;
        let server = Arc::new(Self {
            addr,
            pending: Mutex::new(HashMap::new()),
        });
        Ok((server, listener))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Hands out a one-time URL for `target`.
    pub fn exec_url(&self, target: ExecTarget) -> Result<String, Status> {
        self.url_for(Target::Exec(target))
    }

    /// Hands out a one-time URL for `target`.
    pub fn attach_url(&self, target: AttachTarget) -> Result<String, Status> {
        self.url_for(Target::Attach(target))
    }

    /// Hands out a one-time URL for `target`.
    pub fn port_forward_url(&self, target: PortForwardTarget) -> Result<String, Status> {
        self.url_for(Target::PortForward(target))
    }

    fn url_for(&self, target: Target) -> Result<String, Status> {
        let token = new_token().map_err(|e| Status::internal(format!("no token: {e}")))?;
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        pending.retain(|_, (made, _)| now.duration_since(*made) < TOKEN_TTL);
        if pending.len() >= MAX_PENDING {
            return Err(Status::resource_exhausted(format!(
                "{MAX_PENDING} streaming URLs are waiting to be used"
            )));
        }
        let kind = target.kind();
        pending.insert(token.clone(), (now, target));
        Ok(format!("http://{}/{kind}/{token}", self.addr))
    }

    /// Takes the target of `token` if it is pending, fresh and of `kind`.
    fn take(&self, kind: &str, token: &str) -> Option<Target> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.get(token).is_none_or(|(_, t)| t.kind() != kind) {
            return None;
        }
        let (made, target) = pending.remove(token)?;
        (made.elapsed() < TOKEN_TTL).then_some(target)
    }

    /// Serves connections until the listener fails; each on its own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, agent: Arc<Agent>) {
        tracing::info!(addr = %self.addr, "CRI streaming serving");
        loop {
            let (conn, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("CRI streaming: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (server, agent) = (Arc::clone(&self), Arc::clone(&agent));
            tokio::spawn(async move {
                if let Err(e) = server.connection(conn, &agent).await {
                    tracing::info!(%peer, "CRI streaming: {e}");
                }
            });
        }
    }

    async fn connection(&self, mut conn: TcpStream, agent: &Arc<Agent>) -> Result<(), String> {
        let head = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut conn))
            .await
            .map_err(|_| "the client sent no request in time".to_string())?;
        let request = match head.and_then(|head| parse_request(&head)) {
            Ok(request) => request,
            Err(refusal) => {
                let _ = respond(&mut conn, refusal.status, &refusal.message).await;
                return Err(refusal.message);
            }
        };
        let Some(target) = self.take(&request.kind, &request.token) else {
            let message = "unknown or expired streaming URL".to_string();
            let _ = respond(&mut conn, "404 Not Found", &message).await;
            return Err(message);
        };
        let protocol = match negotiate(&request, target.protocols()) {
            Ok(protocol) => protocol,
            Err(refusal) => {
                let _ = respond(&mut conn, refusal.status, &refusal.message).await;
                return Err(refusal.message);
            }
        };
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
        );
        conn.write_all(answer.as_bytes())
            .await
            .map_err(|e| format!("cannot answer the upgrade: {e}"))?;
        let config = SessionConfig {
            // Go's spdystream neither sends nor heeds WINDOW_UPDATE.
            flow_control: FlowControl::Lenient,
            ..SessionConfig::default()
        };
        let mut session = Session::new(conn, stratum_spdy::session::Role::Server, config)
            .map_err(|e| format!("SPDY session: {e}"))?;
        match target {
            Target::Exec(target) => {
                let mut streams =
                    collect_streams(&mut session, &target.channels.expected_streams()).await?;
                let error = streams.error.take();
                let outcome = run_exec(agent, &target, streams).await;
                finish(error, protocol, outcome).await;
            }
            Target::Attach(target) => {
                let mut streams =
                    collect_streams(&mut session, &target.channels.expected_streams()).await?;
                let error = streams.error.take();
                let outcome = run_attach(agent, &target, streams, &session)
                    .await
                    .map(|()| 0);
                finish(error, protocol, outcome).await;
            }
            Target::PortForward(target) => forward_ports(session, agent, target).await,
        }
        Ok(())
    }
}

/// A refused upgrade: the HTTP status and why.
struct Refusal {
    status: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// An upgrade request: the URL's kind and token, the versions offered.
#[derive(Debug, PartialEq, Eq)]
struct UpgradeRequest {
    kind: String,
    token: String,
    offered: Vec<String>,
}

/// Reads up to the blank line that ends the request head.
async fn read_head(conn: &mut TcpStream) -> Result<Vec<u8>, Refusal> {
    let mut head = Vec::with_capacity(1024);
    let mut byte = [0u8; 1];
    // Byte by byte: nothing past the head may be taken from the socket,
    // it is the SPDY session's.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST_HEAD {
            return Err(Refusal::new(
                "431 Request Header Fields Too Large",
                format!("the request head is over {MAX_REQUEST_HEAD} bytes"),
            ));
        }
        match conn.read(&mut byte).await {
            Ok(0) | Err(_) => {
                return Err(Refusal::new(
                    "400 Bad Request",
                    "the connection ended inside the request head",
                ))
            }
            Ok(_) => head.push(byte[0]),
        }
    }
    Ok(head)
}

/// Checks the request head: a SPDY/3.1 upgrade of `/<kind>/<token>`.
fn parse_request(head: &[u8]) -> Result<UpgradeRequest, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(Refusal::new("400 Bad Request", "a malformed HTTP request"))
        }
    }
    let path = request.path.unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default();
    let not_found = || Refusal::new("404 Not Found", format!("no such streaming URL {path:?}"));
    let (kind, token) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .ok_or_else(not_found)?;
    if !matches!(kind, "exec" | "attach" | "portforward")
        || token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(not_found());
    }
    let values = |name: &str| -> Vec<String> {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .map(|v| v.trim().to_string())
            .collect()
    };
    if !values("upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("SPDY/3.1"))
    {
        return Err(Refusal::new(
            "400 Bad Request",
            "only SPDY/3.1 upgrades are served (Upgrade: SPDY/3.1)",
        ));
    }
    Ok(UpgradeRequest {
        kind: kind.to_string(),
        token: token.to_string(),
        offered: values("x-stream-protocol-version"),
    })
}

/// The most preferred of `spoken` that the client offers.
fn negotiate(request: &UpgradeRequest, spoken: &[&'static str]) -> Result<&'static str, Refusal> {
    spoken
        .iter()
        .find(|p| request.offered.iter().any(|o| o == *p))
        .copied()
        .ok_or_else(|| {
            Refusal::new(
                "403 Forbidden",
                format!(
                    "unable to negotiate a protocol: the client offers {:?}, the server speaks {spoken:?}",
                    request.offered
                ),
            )
        })
}

async fn respond(conn: &mut TcpStream, status: &str, message: &str) -> std::io::Result<()> {
    let body = format!("{message}\n");
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(answer.as_bytes()).await?;
    conn.shutdown().await
}

/// The client's streams, by type.
#[derive(Default)]
struct ClientStreams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

/// Waits for the streams `expected` (by their `streamtype` header) up to
/// [`STREAM_CREATION_TIMEOUT`]; refuses others.
async fn collect_streams(
    session: &mut Session,
    expected: &[&str],
) -> Result<ClientStreams, String> {
    let mut streams = ClientStreams::default();
    let mut missing: Vec<&str> = expected.to_vec();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !missing.is_empty() {
        let stream = tokio::time::timeout_at(deadline, session.accept())
            .await
            .map_err(|_| format!("the client did not open its {missing:?} streams in time"))?
            .ok_or_else(|| format!("the connection ended before the {missing:?} streams"))?;
        let kind = stream
            .headers()
            .get("streamtype")
            .unwrap_or_default()
            .to_string();
        let Some(at) = missing.iter().position(|m| *m == kind) else {
            let mut stream = stream;
            stream.reset(stratum_spdy::RstStatus::REFUSED_STREAM);
            continue;
        };
        missing.swap_remove(at);
        let slot = match kind.as_str() {
            "error" => &mut streams.error,
            "stdin" => &mut streams.stdin,
            "stdout" => &mut streams.stdout,
            "stderr" => &mut streams.stderr,
            _ => &mut streams.resize,
        };
        *slot = Some(stream);
    }
    Ok(streams)
}

/// How the command ended: its exit code, or why it could not run.
type ExecOutcome = Result<i32, String>;

/// Writes the outcome on the error stream as the protocol wants it, then
/// ends the stream.
async fn finish(error: Option<Stream>, protocol: &str, outcome: ExecOutcome) {
    let Some(mut error) = error else { return };
    let message = status_message(protocol, &outcome);
    if !message.is_empty() {
        let _ = error.write_all(message.as_bytes()).await;
    }
    let _ = error.shutdown().await;
}

/// What the error stream carries: from v4 on a Kubernetes `Status` (JSON)
/// whose `NonZeroExitCode` reason clients turn into the exit code; before
/// it, nothing on success and the error's text otherwise.
fn status_message(protocol: &str, outcome: &ExecOutcome) -> String {
    if protocol != PROTOCOLS[0] {
        return match outcome {
            Ok(0) => String::new(),
            Ok(code) => format!("command terminated with non-zero exit code: {code}"),
            Err(e) => e.clone(),
        };
    }
    let status = match outcome {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": e,
            "reason": "InternalError",
        }),
    };
    status.to_string()
}

/// 16 random bytes, hex: a URL nobody can guess.
fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Copies `from` into `to` until `from` ends, then ends `to`.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> std::io::Result<u64> {
    let copied = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
    copied
}

/// Runs the target's command with the client's streams as its input and
/// output; its exit code once it ended and its output was sent. A client
/// that goes away does not stop the process: a shell on a terminal gets
/// SIGHUP when the terminal goes, a piped command sees its input end.
async fn run_exec(agent: &Arc<Agent>, target: &ExecTarget, streams: ClientStreams) -> ExecOutcome {
    let mut child = agent
        .pods()
        .spawn_exec(
            &target.pod_id,
            &target.container,
            &target.cmd,
            target.channels.tty,
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut outputs = tokio::task::JoinSet::new();
    let mut input = None;
    if let Some(terminal) = child.terminal.take() {
        if let Some(resize) = streams.resize {
            let resizer = terminal.resizer();
            outputs.spawn(async move {
                follow_resizes(resize, |w, h| resizer.resize(w, h).is_ok()).await;
                Ok(0)
            });
        }
        let (from_terminal, to_terminal) = tokio::io::split(terminal);
        if let Some(stdout) = streams.stdout {
            outputs.spawn(pump(from_terminal, stdout));
        }
        if let Some(stdin) = streams.stdin {
            // The terminal stays open at the input's end: a user's ^D is
            // in the data, and the shell decides.
            input = Some(tokio::spawn(async move {
                let (mut stdin, mut to_terminal) = (stdin, to_terminal);
                tokio::io::copy(&mut stdin, &mut to_terminal).await
            }));
        }
    } else {
        if let (Some(stdout), Some(from)) = (streams.stdout, child.stdout.take()) {
            outputs.spawn(pump(from, stdout));
        }
        if let (Some(stderr), Some(from)) = (streams.stderr, child.stderr.take()) {
            outputs.spawn(pump(from, stderr));
        }
        if let (Some(stdin), Some(to)) = (streams.stdin, child.stdin.take()) {
            input = Some(tokio::spawn(pump(stdin, to)));
        }
    }
    let code = child.wait().await.map_err(|e| e.to_string());
    // The output ends when every holder of the process's end is gone
    // (children it left running too): bounded, so that the status comes.
    let drained = tokio::time::timeout(OUTPUT_DRAIN, async {
        while outputs.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        outputs.abort_all();
    }
    if let Some(input) = input {
        input.abort();
    }
    code
}

/// What a client sends toward an attached container.
enum AttachInput {
    Data(Vec<u8>),
    CloseStdin,
    Resize(u16, u16),
}

/// Joins the client's streams to the container's own stdio (its log
/// writer's attach socket) until the container's output ends, the client
/// goes away (its session ends: a quiet container must not keep one of
/// the writer's places), or — unless the container's stdin is closed by
/// its end — the client's input ends (a detach, as containerd ends an
/// attach).
async fn run_attach(
    agent: &Arc<Agent>,
    target: &AttachTarget,
    streams: ClientStreams,
    session: &Session,
) -> Result<(), String> {
    let (attachment, stdio) = agent
        .pods()
        .attach(&target.pod_id, &target.container)
        .await
        .map_err(|e| e.to_string())?;
    let (mut output, mut to_container) = attachment.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<AttachInput>(16);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        while let Some(input) = rx.recv().await {
            let sent = match input {
                AttachInput::Data(data) => to_container.stdin(&data).await,
                AttachInput::CloseStdin => to_container.close_stdin().await,
                AttachInput::Resize(w, h) => to_container.resize(w, h).await,
            };
            if sent.is_err() {
                return;
            }
        }
        // The writer takes a connection whose sending side ends for a
        // client gone: it stays open while the output is wanted.
        std::future::pending::<()>().await;
        drop(to_container);
    });
    if let Some(resize) = streams.resize {
        // Sizes for a container without a terminal are read and dropped.
        let (tx, tty) = (tx.clone(), stdio.tty);
        tasks.spawn(follow_resizes(resize, move |w, h| {
            !tty || tx.try_send(AttachInput::Resize(w, h)).is_ok()
        }));
    }
    let (detach, mut detached) = tokio::sync::oneshot::channel::<()>();
    match streams.stdin {
        // (The CRI call refused stdin for a container without one.)
        Some(stdin) => {
            let close_at_end = stdio.stdin_once && !stdio.tty;
            tasks.spawn(read_attach_input(stdin, tx, close_at_end, detach));
        }
        None => drop(detach),
    }
    let (mut stdout, mut stderr) = (streams.stdout, streams.stderr);
    let mut may_detach = true;
    loop {
        // (`next` is cancel-safe: bytes are consumed only once read.)
        let next = tokio::select! {
            next = output.next() => next,
            _ = session.closed() => break,
            detach = &mut detached, if may_detach => {
                if detach.is_ok() {
                    break;
                }
                may_detach = false;
                continue;
            }
        };
        let Ok(Some((stream, data))) = next else {
            break;
        };
        let to = match stream {
            LogStream::Stderr if !stdio.tty => stderr.as_mut(),
            _ => stdout.as_mut(),
        };
        if let Some(to) = to {
            if to.write_all(&data).await.is_err() {
                break;
            }
        }
    }
    for stream in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = stream.shutdown().await;
    }
    tasks.abort_all();
    Ok(())
}

/// Reads the client's stdin stream into `tx`; at its end either closes
/// the container's stdin or detaches the client.
async fn read_attach_input(
    mut stdin: Stream,
    tx: tokio::sync::mpsc::Sender<AttachInput>,
    close_at_end: bool,
    detach: tokio::sync::oneshot::Sender<()>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(AttachInput::Data(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
    if close_at_end {
        let _ = tx.send(AttachInput::CloseStdin).await;
    } else {
        let _ = detach.send(());
    }
}

/// How long the output of an exited command may take to reach its end.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// A resize message's size, at most (`{"Width":65535,"Height":65535}`
/// with room for spaces).
const MAX_RESIZE_MESSAGE: usize = 256;

/// Applies the terminal sizes the client sends (a stream of JSON objects
/// `{"Width":W,"Height":H}`) until the stream ends or holds garbage.
async fn follow_resizes(mut stream: Stream, mut resize: impl FnMut(u16, u16) -> bool) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 128];
    loop {
        // Every complete object in the buffer.
        while let Some(parsed) = next_size(&buf) {
            let Ok((size, used)) = parsed else { return };
            buf.drain(..used);
            if !resize(size.width, size.height) {
                return;
            }
        }
        if buf.len() > MAX_RESIZE_MESSAGE {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The first whole TerminalSize in `buf` and the bytes it took; `None`
/// if it needs more bytes, an error for garbage.
fn next_size(buf: &[u8]) -> Option<Result<(TerminalSize, usize), ()>> {
    let mut objects = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    match objects.next()? {
        Ok(size) => Some(Ok((size, objects.byte_offset()))),
        Err(e) if e.is_eof() => None,
        Err(_) => Some(Err(())),
    }
}

/// remotecommand's TerminalSize.
#[derive(Debug, serde::Deserialize)]
struct TerminalSize {
    #[serde(rename = "Width")]
    width: u16,
    #[serde(rename = "Height")]
    height: u16,
}

/// A forwarded connection's two streams, as they arrive.
#[derive(Default)]
struct PortPair {
    port: u16,
    error: Option<Stream>,
    data: Option<Stream>,
}

/// Serves a port-forward session until the client ends it: each of its
/// connections is a pair of streams (`error` and `data`, one `port` and
/// `requestID`), joined to a new connection to that port inside the pod.
async fn forward_ports(mut session: Session, agent: &Arc<Agent>, target: PortForwardTarget) {
    let mut pairs: HashMap<String, PortPair> = HashMap::new();
    while let Some(mut stream) = session.accept().await {
        let (request, port, kind) = match pair_key(&stream, &target) {
            Ok(key) => key,
            Err(e) => {
                if stream.headers().get("streamtype") == Some("error") {
                    let _ = stream.write_all(e.as_bytes()).await;
                    let _ = stream.shutdown().await;
                } else {
                    stream.reset(stratum_spdy::RstStatus::REFUSED_STREAM);
                }
                continue;
            }
        };
        // Halves whose other half never came are not kept for ever.
        if pairs.len() >= MAX_HALF_PAIRS && !pairs.contains_key(&request) {
            stream.reset(stratum_spdy::RstStatus::REFUSED_STREAM);
            continue;
        }
        let pair = pairs.entry(request.clone()).or_default();
        if pair.port != 0 && pair.port != port {
            stream.reset(stratum_spdy::RstStatus::PROTOCOL_ERROR);
            continue;
        }
        pair.port = port;
        let slot = if kind == "error" {
            &mut pair.error
        } else {
            &mut pair.data
        };
        if slot.is_some() {
            stream.reset(stratum_spdy::RstStatus::PROTOCOL_ERROR);
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_none() || pair.data.is_none() {
            continue;
        }
        if let Some(PortPair {
            port,
            error: Some(error),
            data: Some(data),
        }) = pairs.remove(&request)
        {
            let (agent, pod) = (Arc::clone(agent), target.pod_id.clone());
            tokio::spawn(forward_one(agent, pod, port, error, data));
        }
    }
}

/// Half-made pairs a session may hold.
const MAX_HALF_PAIRS: usize = 32;

/// A stream's pair: its request id (older clients send none: the error
/// stream's id, which its data stream follows by 2), port and type.
fn pair_key(stream: &Stream, target: &PortForwardTarget) -> Result<(String, u16, String), String> {
    let headers = stream.headers();
    let kind = headers.get("streamtype").unwrap_or_default();
    if kind != "error" && kind != "data" {
        return Err(format!("unknown stream type {kind:?}"));
    }
    let port = headers
        .get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("a {kind} stream without a valid port header"))?;
    if !target.ports.is_empty() && !target.ports.contains(&port) {
        return Err(format!(
            "port {port} was not asked for (PortForward named {:?})",
            target.ports
        ));
    }
    let request = match headers.get("requestid") {
        Some(id) if !id.is_empty() => id.to_string(),
        _ if kind == "data" => stream.id().saturating_sub(2).to_string(),
        _ => stream.id().to_string(),
    };
    Ok((request, port, kind.to_string()))
}

/// One forwarded connection: the data stream joined to the pod's port
/// until either side ends; a failure to connect goes on the error stream.
async fn forward_one(
    agent: Arc<Agent>,
    pod_id: String,
    port: u16,
    mut error: Stream,
    mut data: Stream,
) {
    match agent.pods().connect_port(&pod_id, port).await {
        Ok(mut conn) => {
            let _ = tokio::io::copy_bidirectional(&mut data, &mut conn).await;
        }
        Err(e) => {
            let message = format!("error forwarding port {port} to pod {pod_id}: {e}");
            let _ = error.write_all(message.as_bytes()).await;
        }
    }
    let _ = data.shutdown().await;
    let _ = error.shutdown().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn head(lines: &[&str]) -> Vec<u8> {
        let mut text = lines.join("\r\n");
        text.push_str("\r\n\r\n");
        text.into_bytes()
    }

    #[test]
    fn an_upgrade_names_its_kind_token_and_offered_versions() {
        let request = parse_request(&head(&[
            "POST /exec/00ff?command=sh HTTP/1.1",
            "Host: 127.0.0.1:1",
            "Connection: Upgrade",
            "Upgrade: SPDY/3.1",
            "X-Stream-Protocol-Version: v4.channel.k8s.io",
            "X-Stream-Protocol-Version: v3.channel.k8s.io, channel.k8s.io",
        ]))
        .map_err(|r| r.message)
        .unwrap();
        assert_eq!(request.kind, "exec");
        assert_eq!(request.token, "00ff");
        assert_eq!(
            request.offered,
            ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"]
        );
        assert_eq!(
            negotiate(&request, &PROTOCOLS).ok(),
            Some("v4.channel.k8s.io")
        );
        let older = UpgradeRequest {
            offered: vec!["channel.k8s.io".into()],
            ..request
        };
        assert_eq!(negotiate(&older, &PROTOCOLS).ok(), Some("channel.k8s.io"));
        let refused = negotiate(&older, &[PORT_FORWARD_PROTOCOL]).unwrap_err();
        assert_eq!(refused.status, "403 Forbidden");
    }

    #[test]
    fn requests_that_are_not_a_spdy_upgrade_of_a_known_url_are_refused() {
        for (lines, status) in [
            (
                vec!["GET /exec/00ff HTTP/1.1", "Host: x"],
                "400 Bad Request",
            ),
            (
                vec!["GET /exec/00ff HTTP/1.1", "Upgrade: websocket"],
                "400 Bad Request",
            ),
            (
                vec!["GET /logs/00ff HTTP/1.1", "Upgrade: SPDY/3.1"],
                "404 Not Found",
            ),
            (
                vec!["GET /exec/../x HTTP/1.1", "Upgrade: SPDY/3.1"],
                "404 Not Found",
            ),
            (
                vec!["GET /exec/ HTTP/1.1", "Upgrade: SPDY/3.1"],
                "404 Not Found",
            ),
            (
                vec!["GET /exec HTTP/1.1", "Upgrade: SPDY/3.1"],
                "404 Not Found",
            ),
            (vec!["\u{1}\u{2} garbage"], "400 Bad Request"),
        ] {
            let refused = parse_request(&head(&lines)).unwrap_err();
            assert_eq!(refused.status, status, "{lines:?}: {}", refused.message);
        }
    }

    #[test]
    fn the_exit_status_is_a_kubernetes_status_from_v4_and_text_before() {
        let ok = status_message("v4.channel.k8s.io", &Ok(0));
        assert_eq!(ok, r#"{"metadata":{},"status":"Success"}"#);
        let failed: serde_json::Value =
            serde_json::from_str(&status_message("v4.channel.k8s.io", &Ok(7))).unwrap();
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "7");
        assert_eq!(status_message("channel.k8s.io", &Ok(0)), "");
        assert!(status_message("v3.channel.k8s.io", &Ok(7)).contains("exit code: 7"));
        let error: serde_json::Value = serde_json::from_str(&status_message(
            "v4.channel.k8s.io",
            &Err("no such container".into()),
        ))
        .unwrap();
        assert_eq!(error["status"], "Failure");
        assert_eq!(error["message"], "no such container");
    }

    #[test]
    fn resize_messages_are_read_whole_and_garbage_ends_them() {
        let buf = br#"{"Width":80,"Height":24}{"Width":1"#;
        let (size, used) = next_size(buf).unwrap().unwrap();
        assert_eq!((size.width, size.height), (80, 24));
        assert!(next_size(&buf[used..]).is_none(), "a partial object waits");
        assert!(next_size(br#"{"Width":-1,"Height":2}"#).unwrap().is_err());
        assert!(next_size(b"not json").unwrap().is_err());
    }

    #[test]
    fn urls_are_one_time_and_of_their_kind() {
        let server = StreamingServer {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            pending: Mutex::new(HashMap::new()),
        };
        let target = PortForwardTarget {
            pod_id: "pod-1".into(),
            ports: vec![80],
        };
        let url = server.port_forward_url(target).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(url.starts_with("http://127.0.0.1:1/portforward/"), "{url}");
        assert_eq!(token.len(), 32);
        assert!(server.take("exec", &token).is_none(), "not an exec URL");
        assert!(server.take("portforward", &token).is_some());
        assert!(server.take("portforward", &token).is_none(), "used once");
    }
}
