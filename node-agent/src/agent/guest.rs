//! The node agent's end of the guest agent protocol: one link per running
//! VM to `stratum-guest` inside it, through the VM's hybrid-vsock socket.
//!
//! A link owns the guest's view of itself (`GuestInfo`: ready, hostname,
//! addresses, OS, kernel, last heartbeat) and the events its changes make
//! (GUEST_READY, GUEST_LOST). It is not stored: the guest agent is asked
//! again after an agent restart, which the host-initiated connection makes
//! simple (connect again; nothing to re-create in the guest).
//!
//! It trusts nothing the guest sends. Frames are bounded by the protocol's
//! decoder; a guest that sends garbage, more than [`FLOOD_LIMIT`] messages
//! in [`FLOOD_WINDOW`], or nothing for [`HEARTBEAT_TIMEOUT`] loses its link
//! (state LOST, the reason said) and is connected to again after a pause.
//! A VM without a guest agent costs a failed connection every
//! [`RETRY_MAX`], and its guest state stays UNSPECIFIED.
//!
//! A clone's link carries the clone's identity: on every connection, once
//! the guest has said hello, it is sent (Reidentify) with fresh entropy;
//! the guest applies what differs, so a second time changes nothing. A
//! refusal is logged and kept as the view's reason; the link stays.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use stratum_api::proto;
use stratum_api::proto::{GuestState, VmEventKind, VmState};
use stratum_guest::proto::{guest_message, host_message, GuestMessage, HostMessage, Reidentify};
use stratum_guest::{encode, FrameDecoder, HEADER_LEN, MAX_FRAME, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use super::now;

/// How often the host pings a connected guest.
const PING_EVERY: Duration = Duration::from_secs(10);
/// Silence after which the link counts as lost.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most messages a guest may send in one [`FLOOD_WINDOW`]; its agent
/// sends a status every few seconds at most, and a pong per ping.
pub const FLOOD_LIMIT: u32 = 200;
pub const FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// Pauses between connection attempts: from the first to the longest.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// The hybrid-vsock handshake: the request and the longest answer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_MAX: usize = 32;
/// How long a shutdown request waits for the guest's acknowledgement.
const SHUTDOWN_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Host randomness each Reidentify carries.
const ENTROPY_BYTES: usize = 64;
/// Requests waiting for the connection task.
const REQUEST_BACKLOG: usize = 4;

/// A request of the VM manager to the guest.
struct Request {
    reboot: bool,
    reply: SyncSender<Result<(), String>>,
}

/// One running VM's link to its guest agent.
pub struct GuestLink {
    view: Arc<Mutex<proto::GuestInfo>>,
    requests: mpsc::Sender<Request>,
    task: tokio::task::AbortHandle,
}

impl GuestLink {
    /// Starts linking to the guest agent of VM `vm_id` through `socket`,
    /// on `runtime`, until [`Self::stop`].
    pub fn spawn(
        runtime: &tokio::runtime::Handle,
        vm_id: String,
        socket: PathBuf,
        events: broadcast::Sender<proto::VmEvent>,
        identity: Option<Reidentify>,
    ) -> Arc<Self> {
        let view = Arc::new(Mutex::new(unknown("no guest agent has answered yet")));
        let (requests, receiver) = mpsc::channel(REQUEST_BACKLOG);
        let link = Link {
            vm_id,
            socket,
            view: Arc::clone(&view),
            events,
            identity,
        };
        let task = runtime.spawn(link.run(receiver)).abort_handle();
        Arc::new(Self {
            view,
            requests,
            task,
        })
    }

    /// The guest's view of itself, as last reported.
    pub fn info(&self) -> proto::GuestInfo {
        self.view
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True while the guest agent answers (CONNECTED or READY).
    pub fn answers(&self) -> bool {
        matches!(
            self.info().state(),
            GuestState::Connected | GuestState::Ready
        )
    }

    /// Asks the guest to power off (or reboot) and waits for it to
    /// acknowledge. Blocking: for the VM manager's blocking callers.
    pub fn request_shutdown(&self, reboot: bool) -> Result<(), String> {
        let (reply, answer) = sync_channel(1);
        self.requests
            .try_send(Request { reboot, reply })
            .map_err(|e| format!("the guest link takes no request now: {e}"))?;
        answer
            .recv_timeout(SHUTDOWN_ACK_TIMEOUT)
            .map_err(|_| "the guest agent did not acknowledge the shutdown".to_string())?
    }

    /// Ends the link: the VM is not running any more.
    pub fn stop(&self) {
        self.task.abort();
        *self.view.lock().unwrap_or_else(PoisonError::into_inner) =
            unknown("the VM is not running");
    }
}

impl Drop for GuestLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unknown(reason: &str) -> proto::GuestInfo {
    proto::GuestInfo {
        state: GuestState::Unspecified as i32,
        reason: reason.into(),
        ..Default::default()
    }
}

/// The connection task's side.
struct Link {
    vm_id: String,
    socket: PathBuf,
    view: Arc<Mutex<proto::GuestInfo>>,
    events: broadcast::Sender<proto::VmEvent>,
    /// A clone's identity, given to its guest on every connection.
    identity: Option<Reidentify>,
}

/// Where a clone's Reidentify stands in one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// Not a clone, or answered.
    Settled,
    /// To send once the guest has said hello.
    Due,
    /// Sent with this request id.
    Sent(u64),
}

/// How a conversation ended.
enum Ended {
    /// No guest agent answered the connection.
    NoAnswer(String),
    /// The guest agent answered, then the link broke for this reason.
    Lost(String),
}

impl Link {
    async fn run(self, mut requests: mpsc::Receiver<Request>) {
        let mut pause = RETRY_MIN;
        loop {
            let ended = match self.connect().await {
                Ok(stream) => self.converse(stream, &mut requests).await,
                Err(reason) => Ended::NoAnswer(reason),
            };
            match ended {
                Ended::Lost(reason) => {
                    self.lose(&reason);
                    pause = RETRY_MIN;
                }
                Ended::NoAnswer(reason) => {
                    let mut view = self.view();
                    if view.state() == GuestState::Unspecified {
                        view.reason = format!("no guest agent has answered yet ({reason})");
                    }
                }
            }
            // Nothing can be asked of a guest that is not linked.
            while let Ok(request) = requests.try_recv() {
                let _ = request
                    .reply
                    .try_send(Err("the guest agent is not connected".into()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, proto::GuestInfo> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connects through the hybrid-vsock socket to the guest agent's port.
    async fn connect(&self) -> Result<UnixStream, String> {
        let handshake = async {
            let mut stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| format!("{}: {e}", self.socket.display()))?;
            let request = format!("CONNECT {}\n", stratum_guest::PORT);
            stream
                .write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while line.len() < HANDSHAKE_MAX {
                match stream.read(&mut byte).await {
                    Ok(0) => return Err("the guest refused the connection".to_string()),
                    Ok(_) if byte[0] == b'\n' => break,
                    Ok(_) => line.push(byte[0]),
                    Err(e) => return Err(e.to_string()),
                }
            }
            if line.starts_with(b"OK ") {
                Ok(stream)
            } else {
                Err(format!("vmm answered {:?}", String::from_utf8_lossy(&line)))
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .unwrap_or_else(|_| Err("the vsock handshake timed out".into()))
    }

    /// Says Hello, then follows the guest's messages, pings it and passes
    /// on the manager's requests until the link breaks.
    async fn converse(&self, stream: UnixStream, requests: &mut mpsc::Receiver<Request>) -> Ended {
        let (mut reader, mut writer) = stream.into_split();
        let hello = host_message::Body::Hello(stratum_guest::proto::Hello {
            protocol_version: PROTOCOL_VERSION,
        });
        if let Err(e) = send(&mut writer, 1, hello).await {
            return Ended::NoAnswer(e);
        }
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; HEADER_LEN + MAX_FRAME];
        let mut answered = false;
        let mut last_heard = Instant::now();
        let mut flood = (Instant::now(), 0u32);
        let mut next_id = 2u64;
        let mut pending: Option<(u64, SyncSender<Result<(), String>>)> = None;
        let mut identity = if self.identity.is_some() {
            Identity::Due
        } else {
            Identity::Settled
        };
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let broken = |answered: bool, reason: String| {
            if answered {
                Ended::Lost(reason)
            } else {
                Ended::NoAnswer(reason)
            }
        };
        loop {
            tokio::select! {
                message = read_message(&mut reader, &mut decoder, &mut buf) => {
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => return broken(answered, e),
                    };
                    last_heard = Instant::now();
                    if flood.0.elapsed() > FLOOD_WINDOW {
                        flood = (Instant::now(), 0);
                    }
                    flood.1 += 1;
                    if flood.1 > FLOOD_LIMIT {
                        return broken(answered, format!(
                            "the guest agent sent more than {FLOOD_LIMIT} messages in {} s",
                            FLOOD_WINDOW.as_secs()
                        ));
                    }
                    match self.take(message, &mut answered, &mut pending, &mut identity) {
                        Ok(()) => {}
                        Err(reason) => return broken(answered, reason),
                    }
                    if answered && identity == Identity::Due {
                        next_id += 1;
                        if let Err(e) = self.send_identity(&mut writer, next_id).await {
                            return broken(answered, e);
                        }
                        identity = Identity::Sent(next_id);
                    }
                }
                _ = tokio::time::sleep_until(last_heard + HEARTBEAT_TIMEOUT) => {
                    return broken(answered, format!(
                        "no word from the guest agent for {} s",
                        HEARTBEAT_TIMEOUT.as_secs()
                    ));
                }
                _ = ping.tick() => {
                    next_id += 1;
                    let ping = host_message::Body::Ping(stratum_guest::proto::Ping {});
                    if let Err(e) = send(&mut writer, next_id, ping).await {
                        return broken(answered, e);
                    }
                }
                Some(request) = requests.recv() => {
                    next_id += 1;
                    let body = host_message::Body::Shutdown(stratum_guest::proto::Shutdown {
                        reboot: request.reboot,
                    });
                    if let Err(e) = send(&mut writer, next_id, body).await {
                        let _ = request.reply.try_send(Err(e.clone()));
                        return broken(answered, e);
                    }
                    pending = Some((next_id, request.reply));
                }
            }
        }
    }

    /// Sends the clone's identity, with entropy drawn for this sending.
    async fn send_identity(&self, writer: &mut OwnedWriteHalf, id: u64) -> Result<(), String> {
        let Some(identity) = &self.identity else {
            return Ok(());
        };
        let mut entropy = vec![0u8; ENTROPY_BYTES];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy))
            .map_err(|e| format!("/dev/urandom: {e}"))?;
        let body = host_message::Body::Reidentify(Reidentify {
            entropy,
            ..identity.clone()
        });
        send(writer, id, body).await
    }

    /// Takes one message into the view; an error ends the link.
    fn take(
        &self,
        message: GuestMessage,
        answered: &mut bool,
        pending: &mut Option<(u64, SyncSender<Result<(), String>>)>,
        identity: &mut Identity,
    ) -> Result<(), String> {
        if *identity == Identity::Sent(message.id) {
            *identity = Identity::Settled;
            match &message.body {
                Some(guest_message::Body::Reidentify(_)) => {
                    tracing::info!(vm = %self.vm_id, "the clone's guest took its identity");
                }
                Some(guest_message::Body::Error(error)) => {
                    let reason = bounded(error.message.clone());
                    tracing::warn!(vm = %self.vm_id, "the clone's guest refused its identity: {reason}");
                    self.view().reason = reason;
                }
                _ => return Err("the guest agent did not answer Reidentify".into()),
            }
            return Ok(());
        }
        let mut answer_to_pending = |result: Result<(), String>| {
            if let Some((_, reply)) = pending.take_if(|(id, _)| *id == message.id) {
                let _ = reply.try_send(result);
                true
            } else {
                false
            }
        };
        match message.body {
            Some(guest_message::Body::Hello(hello)) => {
                if hello.protocol_version != PROTOCOL_VERSION {
                    return Err(format!(
                        "the guest agent speaks protocol version {}, not {PROTOCOL_VERSION}",
                        hello.protocol_version
                    ));
                }
                *answered = true;
                let mut view = self.view();
                view.agent_version = bounded(hello.agent_version);
                if view.state() != GuestState::Ready {
                    view.state = GuestState::Connected as i32;
                    view.reason = String::new();
                }
                view.last_heartbeat = Some(now());
            }
            Some(guest_message::Body::Status(status)) if *answered => self.update(status),
            Some(guest_message::Body::Shutdown(_)) => {
                answer_to_pending(Ok(()));
            }
            Some(guest_message::Body::Error(error)) => {
                if !answer_to_pending(Err(bounded(error.message.clone()))) {
                    return Err(format!("the guest agent says: {}", bounded(error.message)));
                }
            }
            Some(guest_message::Body::Status(_)) => {
                return Err("the guest agent sent its status before its hello".into())
            }
            Some(guest_message::Body::Pong(_) | guest_message::Body::Reidentify(_)) | None => {}
        }
        if *answered {
            self.view().last_heartbeat = Some(now());
        }
        Ok(())
    }

    /// A new status from the guest; READY for the first time since the
    /// link was made is an event.
    fn update(&self, status: stratum_guest::proto::GuestStatus) {
        let became_ready = {
            let mut view = self.view();
            let was_ready = view.state() == GuestState::Ready;
            view.hostname = bounded(status.hostname);
            view.os = bounded(status.os);
            view.kernel = bounded(status.kernel);
            view.interfaces = status
                .interfaces
                .into_iter()
                .map(|i| proto::GuestInterface {
                    name: bounded(i.name),
                    mac: bounded(i.mac),
                    addresses: i.addresses.into_iter().map(bounded).collect(),
                })
                .collect();
            if status.ready {
                view.state = GuestState::Ready as i32;
                view.reason = bounded(status.ready_detail);
            } else {
                view.state = GuestState::Connected as i32;
                view.reason = String::new();
            }
            status.ready && !was_ready
        };
        if became_ready {
            let reason = self.view().reason.clone();
            self.emit(VmEventKind::GuestReady, reason);
        }
    }

    fn lose(&self, reason: &str) {
        {
            let mut view = self.view();
            view.state = GuestState::Lost as i32;
            view.reason = reason.to_string();
        }
        tracing::info!(vm = %self.vm_id, "guest agent link lost: {reason}");
        self.emit(VmEventKind::GuestLost, reason.to_string());
    }

    fn emit(&self, kind: VmEventKind, reason: String) {
        // Guest events happen while the VM runs: its state is unchanged.
        let _ = self.events.send(proto::VmEvent {
            vm_id: self.vm_id.clone(),
            old_state: VmState::Running as i32,
            new_state: VmState::Running as i32,
            reason,
            timestamp: Some(now()),
            kind: kind as i32,
        });
    }
}

/// A guest's string as the agent keeps it: at most 256 bytes (the whole
/// frame is bounded; this keeps one field from filling the view).
fn bounded(mut text: String) -> String {
    const MAX: usize = 256;
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

async fn send(
    writer: &mut OwnedWriteHalf,
    id: u64,
    body: host_message::Body,
) -> Result<(), String> {
    let frame = encode(&HostMessage {
        id,
        body: Some(body),
    })
    .map_err(|e| e.to_string())?;
    writer
        .write_all(&frame)
        .await
        .map_err(|e| format!("writing to the guest agent: {e}"))
}

/// The next whole message. Cancel-safe: what was read stays in `decoder`.
async fn read_message(
    reader: &mut OwnedReadHalf,
    decoder: &mut FrameDecoder,
    buf: &mut [u8],
) -> Result<GuestMessage, String> {
    loop {
        match decoder.next_message::<GuestMessage>() {
            Ok(Some(message)) => return Ok(message),
            Ok(None) => {}
            Err(e) => return Err(format!("protocol error: {e}")),
        }
        let wanted = decoder.wanted().min(buf.len());
        let n = reader
            .read(&mut buf[..wanted])
            .await
            .map_err(|e| format!("reading from the guest agent: {e}"))?;
        if n == 0 {
            return Err("the guest agent closed the connection".into());
        }
        decoder
            .push(&buf[..n])
            .map_err(|e| format!("protocol error: {e}"))?;
    }
}

#[cfg(test)]
mod tests {
    //! The link against a guest that misbehaves on purpose, behind a
    //! socket that answers the hybrid-vsock handshake as vmm does. (The
    //! real guest agent, which does not misbehave, is tested in the nested
    //! host: tests/tests/node_agent.rs.)

    use super::*;
    use stratum_guest::proto::{
        GuestStatus, HelloReply, Interface, Pong, ReidentifyReply, ShutdownReply,
    };
    use tokio::net::UnixListener;

    struct Guest {
        stream: UnixStream,
        decoder: FrameDecoder,
    }

    impl Guest {
        /// Accepts the link's connection and answers its handshake.
        async fn accept(listener: &UnixListener) -> Guest {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while byte[0] != b'\n' {
                stream.read_exact(&mut byte).await.unwrap();
                line.push(byte[0]);
            }
            assert_eq!(line, b"CONNECT 1024\n");
            stream.write_all(b"OK 1073741824\n").await.unwrap();
            Guest {
                stream,
                decoder: FrameDecoder::new(),
            }
        }

        async fn receive(&mut self) -> HostMessage {
            let mut buf = vec![0u8; HEADER_LEN + MAX_FRAME];
            loop {
                if let Some(message) = self.decoder.next_message().unwrap() {
                    return message;
                }
                let wanted = self.decoder.wanted();
                let n = self.stream.read(&mut buf[..wanted]).await.unwrap();
                assert!(n > 0, "the link closed");
                self.decoder.push(&buf[..n]).unwrap();
            }
        }

        async fn send(&mut self, id: u64, body: guest_message::Body) {
            let frame = encode(&GuestMessage {
                id,
                body: Some(body),
            })
            .unwrap();
            self.stream.write_all(&frame).await.unwrap();
        }

        /// Answers the link's Hello and reports `ready`.
        async fn greet(&mut self, ready: bool) {
            let hello = self.receive().await;
            assert!(matches!(hello.body, Some(host_message::Body::Hello(_))));
            let reply = guest_message::Body::Hello(HelloReply {
                protocol_version: PROTOCOL_VERSION,
                agent_version: "test guest".into(),
            });
            self.send(hello.id, reply).await;
            let status = GuestStatus {
                ready,
                ready_detail: if ready {
                    "cloud-init: done".into()
                } else {
                    String::new()
                },
                hostname: "guest-1".into(),
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mac: "06:00:00:00:00:01".into(),
                    addresses: vec!["10.1.0.2/24".into()],
                }],
                os: "Test OS".into(),
                kernel: "6.1.0".into(),
            };
            self.send(0, guest_message::Body::Status(status)).await;
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        listener: UnixListener,
        link: Arc<GuestLink>,
        events: broadcast::Receiver<proto::VmEvent>,
    }

    fn fixture() -> Fixture {
        fixture_with(None)
    }

    fn fixture_with(identity: Option<Reidentify>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (sender, events) = broadcast::channel(16);
        let link = GuestLink::spawn(
            &tokio::runtime::Handle::current(),
            "vm-1".into(),
            socket,
            sender,
            identity,
        );
        Fixture {
            _dir: dir,
            listener,
            link,
            events,
        }
    }

    async fn wait_for(link: &GuestLink, state: GuestState) -> proto::GuestInfo {
        for _ in 0..200 {
            let info = link.info();
            if info.state() == state {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never {state:?}: {:?}", link.info());
    }

    async fn next_event(events: &mut broadcast::Receiver<proto::VmEvent>) -> proto::VmEvent {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("an event in time")
            .unwrap()
    }

    #[tokio::test]
    async fn a_ready_guest_is_seen_and_losing_it_to_garbage_is_an_event() {
        let mut f = fixture();
        assert_eq!(f.link.info().state(), GuestState::Unspecified);
        let mut guest = Guest::accept(&f.listener).await;
        guest.greet(true).await;
        let info = wait_for(&f.link, GuestState::Ready).await;
        assert_eq!(info.reason, "cloud-init: done");
        assert_eq!(info.hostname, "guest-1");
        assert_eq!(info.interfaces[0].addresses, ["10.1.0.2/24"]);
        assert_eq!(info.agent_version, "test guest");
        assert!(info.last_heartbeat.is_some());
        let ready = next_event(&mut f.events).await;
        assert_eq!(ready.kind(), VmEventKind::GuestReady);
        assert_eq!(ready.vm_id, "vm-1");

        // A length no frame may have: the link drops the guest.
        guest.stream.write_all(&[0xff; 8]).await.unwrap();
        let info = wait_for(&f.link, GuestState::Lost).await;
        assert!(info.reason.contains("protocol error"), "{}", info.reason);
        let lost = next_event(&mut f.events).await;
        assert_eq!(lost.kind(), VmEventKind::GuestLost);

        // And connects again: a guest agent that restarted is found.
        let mut again = Guest::accept(&f.listener).await;
        again.greet(true).await;
        wait_for(&f.link, GuestState::Ready).await;
        assert_eq!(
            next_event(&mut f.events).await.kind(),
            VmEventKind::GuestReady
        );
        f.link.stop();
        assert_eq!(f.link.info().state(), GuestState::Unspecified);
    }

    /// The next message of `guest` that is a Reidentify, with its id.
    async fn next_reidentify(guest: &mut Guest) -> (u64, Reidentify) {
        loop {
            let message = guest.receive().await;
            if let Some(host_message::Body::Reidentify(r)) = message.body {
                return (message.id, r);
            }
        }
    }

    #[tokio::test]
    async fn a_clone_is_told_its_identity_on_every_connection_and_a_refusal_keeps_the_link() {
        let identity = Reidentify {
            hostname: "clone-1".into(),
            interfaces: vec![stratum_guest::proto::InterfaceIdentity {
                old_mac: "06:00:00:00:00:01".into(),
                mac: "06:00:00:00:00:09".into(),
                addresses: vec!["10.1.0.9/24".into()],
                gateway: "10.1.0.1".into(),
            }],
            entropy: Vec::new(),
        };
        let f = fixture_with(Some(identity.clone()));
        let mut guest = Guest::accept(&f.listener).await;
        guest.greet(true).await;
        let (id, first) = next_reidentify(&mut guest).await;
        assert_eq!(first.hostname, "clone-1");
        assert_eq!(first.interfaces, identity.interfaces);
        assert_eq!(first.entropy.len(), ENTROPY_BYTES, "fresh entropy");
        let refusal = guest_message::Body::Error(stratum_guest::proto::Error {
            message: "reidentify: no interface has MAC x".into(),
        });
        guest.send(id, refusal).await;
        // The link stays, and says why the identity did not take.
        for _ in 0..200 {
            if f.link.info().reason.contains("no interface") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(f.link.info().reason.contains("no interface"));
        assert!(f.link.answers());
        // A new connection (the guest agent restarted) is told again, with
        // other entropy.
        drop(guest);
        let mut again = Guest::accept(&f.listener).await;
        again.greet(true).await;
        let (id, second) = next_reidentify(&mut again).await;
        assert_ne!(second.entropy, first.entropy);
        again
            .send(id, guest_message::Body::Reidentify(ReidentifyReply {}))
            .await;
        wait_for(&f.link, GuestState::Ready).await;
    }

    #[tokio::test]
    async fn a_flooding_guest_loses_its_link() {
        let f = fixture();
        let mut guest = Guest::accept(&f.listener).await;
        guest.greet(false).await;
        wait_for(&f.link, GuestState::Connected).await;
        for _ in 0..=FLOOD_LIMIT {
            guest.send(0, guest_message::Body::Pong(Pong {})).await;
        }
        let info = wait_for(&f.link, GuestState::Lost).await;
        assert!(info.reason.contains("more than"), "{}", info.reason);
    }

    #[tokio::test]
    async fn a_guest_that_never_says_hello_stays_unknown_with_the_reason() {
        let f = fixture();
        let mut guest = Guest::accept(&f.listener).await;
        let _hello = guest.receive().await;
        guest
            .send(0, guest_message::Body::Status(GuestStatus::default()))
            .await;
        for _ in 0..200 {
            if f.link.info().reason.contains("before its hello") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let info = f.link.info();
        assert_eq!(info.state(), GuestState::Unspecified);
        assert!(info.reason.contains("before its hello"), "{}", info.reason);
    }

    #[tokio::test]
    async fn shutdown_goes_to_the_guest_and_waits_for_its_answer() {
        let f = fixture();
        let mut guest = Guest::accept(&f.listener).await;
        guest.greet(true).await;
        wait_for(&f.link, GuestState::Ready).await;
        assert!(f.link.answers());
        let link = Arc::clone(&f.link);
        let asked = tokio::task::spawn_blocking(move || link.request_shutdown(false));
        let request = loop {
            let message = guest.receive().await;
            if let Some(host_message::Body::Shutdown(shutdown)) = message.body {
                assert!(!shutdown.reboot);
                break message.id;
            }
        };
        guest
            .send(request, guest_message::Body::Shutdown(ShutdownReply {}))
            .await;
        assert_eq!(asked.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn no_guest_agent_is_unknown_and_refuses_shutdown() {
        let f = fixture();
        // vmm closes the stream when nothing in the guest listens.
        let (stream, _) = f.listener.accept().await.unwrap();
        drop(stream);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let info = f.link.info();
        assert_eq!(info.state(), GuestState::Unspecified);
        assert!(!f.link.answers());
        let link = Arc::clone(&f.link);
        let refused = tokio::task::spawn_blocking(move || link.request_shutdown(false))
            .await
            .unwrap();
        assert!(refused.is_err());
    }
}
