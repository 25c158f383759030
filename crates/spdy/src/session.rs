//! SPDY/3.1 sessions over an async connection: streams, flow control and
//! the background task that reads and writes frames.
//!
//! [`Session::server`] takes the connection left after the HTTP/1.1 upgrade
//! and spawns one task that owns it: it decodes the peer's frames, answers
//! what the protocol answers by itself (SYN_REPLY to an admitted stream,
//! PING, WINDOW_UPDATE as the application reads) and writes what the
//! streams queue. The application sees only [`Stream`]s, from
//! [`Session::accept`] (opened by the peer) or [`Session::open`] (opened by
//! us; the client side, mostly for tests). A stream is [`AsyncRead`] (the
//! peer's DATA; end of file on its FIN) and [`AsyncWrite`] (our DATA;
//! shutdown sends FIN), so `tokio::io::copy` works on it.
//!
//! **Flow control** ([`FlowControl::Enforce`], the default) follows
//! SPDY/3.1: we never send more than the peer's stream and session windows
//! allow (a writer waits for WINDOW_UPDATE; SETTINGS_INITIAL_WINDOW_SIZE
//! moves every stream's window), and we give the peer 64 KiB per stream
//! and [`Config::session_window`] for the session, topped up as the
//! application reads. Go's `moby/spdystream` (kubelet, kubectl, crictl)
//! implements none of this: it never sends WINDOW_UPDATE and ignores ours.
//! Against it use [`FlowControl::Lenient`]: windows are not waited for nor
//! enforced, and memory is bounded instead by no longer reading the
//! connection while a stream has over 1 MiB unread (as Go does).
//!
//! **Refused:** malformed frames and DATA beyond the session window end the
//! session with GOAWAY (`PROTOCOL_ERROR`) and a [`SessionError`]; DATA
//! beyond a stream's window resets that stream (`FLOW_CONTROL_ERROR`); a
//! SYN_STREAM over [`Config::max_concurrent_streams`], after our GOAWAY or
//! once nobody accepts gets `REFUSED_STREAM`, and one with the wrong parity
//! or a non-increasing ID `PROTOCOL_ERROR`. Memory is bounded: frames of at
//! most 1 MiB, at most 256 KiB of frames queued for writing (writers and
//! the reader wait), receive buffers bounded by the windows.
//!
//! **Not done:** priorities (frames go out in the order queued), HEADERS
//! frames after the reply (read and dropped), the peer's
//! SETTINGS_MAX_CONCURRENT_STREAMS for [`Session::open`], and our own
//! PINGs (we only answer).

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::error::SessionError;
use crate::frame::{
    setting_id, Codec, Data, Frame, GoAway, GoAwayStatus, RstStatus, RstStream, SynReply,
    SynStream, WindowUpdate, FRAME_HEADER_LEN,
};
use crate::headers::Headers;

/// The window SPDY/3.1 starts every stream and the session with.
pub const DEFAULT_WINDOW: u32 = 65_536;

/// Largest window or window delta (2^31 - 1).
const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Largest DATA payload we write in one frame, so one stream cannot hold
/// the connection for long.
const MAX_DATA_CHUNK: usize = 16 * 1024;
/// Largest frame payload we read; Kubernetes' frames are 32 KiB at most.
const MAX_INBOUND_FRAME: usize = 1 << 20;
/// Bytes of frames queued for the writer before writers and the reader
/// wait for it.
const OUT_QUEUE_LIMIT: usize = 256 * 1024;
/// Unread bytes a stream may hold before the reader stops reading the
/// connection (reached only under [`FlowControl::Lenient`]).
const STREAM_BUFFER_LIMIT: usize = 1 << 20;
/// Bytes read from the connection at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Which end of the connection we are: it fixes the stream ID parity
/// (clients open odd streams, servers even) and whose PINGs we echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection; the peer opens odd streams.
    Server,
    /// We opened the connection; we open odd streams.
    Client,
}

/// Whether windows are enforced (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    /// SPDY/3.1: wait for the peer's windows, refuse overruns of ours.
    Enforce,
    /// Go's spdystream: ignore windows both ways (we still send
    /// WINDOW_UPDATE), bound memory by pausing the reader.
    Lenient,
}

/// A session's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Peer-opened streams open at once before more are refused.
    pub max_concurrent_streams: usize,
    /// Our session receive window. Above [`DEFAULT_WINDOW`] we announce
    /// it with a WINDOW_UPDATE at the start, so one stream left unread
    /// does not stall the others. Capped at 2^31 - 1.
    pub session_window: u32,
    /// Enforce windows or not.
    pub flow_control: FlowControl,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 64,
            session_window: 16 * DEFAULT_WINDOW,
            flow_control: FlowControl::Enforce,
        }
    }
}

/// One SPDY/3.1 connection. Dropping it stops accepting streams; the
/// connection closes (GOAWAY) once its last [`Stream`] is dropped too.
/// Must be created inside a Tokio runtime.
pub struct Session {
    shared: Arc<Mutex<State>>,
}

/// One stream: read the peer's DATA, write ours. Dropping it before our
/// half is finished (FIN) resets it (`CANCEL`); after, the peer's half is
/// left to end by itself.
pub struct Stream {
    id: u32,
    headers: Headers,
    shared: Arc<Mutex<State>>,
}

/// Everything the task and the handles share, behind one lock that is
/// never held across an await.
struct State {
    role: Role,
    config: Config,
    streams: HashMap<u32, StreamState>,
    /// Peer-opened streams not yet handed to `accept`.
    incoming: VecDeque<u32>,
    next_local_id: u32,
    last_peer_id: u32,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE.
    peer_initial_window: i64,
    /// What the peer's session window still lets us send.
    send_window: i64,
    /// What our session window still lets the peer send.
    recv_window: i64,
    /// Bytes read by the application (or discarded) not yet given back
    /// with a session WINDOW_UPDATE.
    recv_unacked: i64,
    out: VecDeque<Frame>,
    out_bytes: usize,
    goaway_received: bool,
    goaway_sent: bool,
    acceptor_gone: bool,
    end: Option<Result<(), SessionError>>,
    writer_waker: Option<Waker>,
    reader_waker: Option<Waker>,
    accept_waker: Option<Waker>,
    end_wakers: Vec<Waker>,
}

struct StreamState {
    peer_opened: bool,
    /// The SYN_STREAM's headers until `accept` takes them.
    headers: Headers,
    buf: VecDeque<u8>,
    recv_fin: bool,
    send_fin: bool,
    /// Reset by either side, with the status.
    reset: Option<RstStatus>,
    /// (Streams we opened) the peer's SYN_REPLY came.
    replied: bool,
    send_window: i64,
    recv_window: i64,
    recv_unacked: i64,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl StreamState {
    fn new(peer_opened: bool, headers: Headers, send_window: i64) -> Self {
        Self {
            peer_opened,
            headers,
            buf: VecDeque::new(),
            recv_fin: false,
            send_fin: false,
            reset: None,
            replied: peer_opened,
            send_window,
            recv_window: i64::from(DEFAULT_WINDOW),
            recv_unacked: 0,
            read_waker: None,
            write_waker: None,
        }
    }

    /// Nothing more will move either way.
    fn done(&self) -> bool {
        self.reset.is_some() || (self.recv_fin && self.send_fin)
    }

    fn wake(&mut self) {
        wake(&mut self.read_waker);
        wake(&mut self.write_waker);
    }
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

/// Takes the lock even if a holder panicked: the counters it guards are
/// still more use than a second panic.
fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn window(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What a queued frame counts against [`OUT_QUEUE_LIMIT`].
fn cost(frame: &Frame) -> usize {
    FRAME_HEADER_LEN
        + match frame {
            Frame::Data(d) => d.data.len(),
            _ => 16,
        }
}

impl State {
    fn new(role: Role, config: Config) -> Self {
        let session_window = i64::from(config.session_window).min(MAX_WINDOW);
        let mut state = Self {
            role,
            config,
            streams: HashMap::new(),
            incoming: VecDeque::new(),
            next_local_id: if role == Role::Client { 1 } else { 2 },
            last_peer_id: 0,
            peer_initial_window: i64::from(DEFAULT_WINDOW),
            send_window: i64::from(DEFAULT_WINDOW),
            recv_window: session_window,
            recv_unacked: 0,
            out: VecDeque::new(),
            out_bytes: 0,
            goaway_received: false,
            goaway_sent: false,
            acceptor_gone: false,
            end: None,
            writer_waker: None,
            reader_waker: None,
            accept_waker: None,
            end_wakers: Vec::new(),
        };
        let extra = session_window - i64::from(DEFAULT_WINDOW);
        if let Ok(delta @ 1..) = u32::try_from(extra) {
            state.queue(Frame::WindowUpdate(WindowUpdate {
                stream_id: 0,
                delta,
            }));
        }
        state
    }

    fn enforce(&self) -> bool {
        self.config.flow_control == FlowControl::Enforce
    }

    /// Parity of the IDs the peer opens.
    fn peer_parity(&self) -> u32 {
        match self.role {
            Role::Server => 1,
            Role::Client => 0,
        }
    }

    fn queue(&mut self, frame: Frame) {
        self.out_bytes += cost(&frame);
        self.out.push_back(frame);
        wake(&mut self.writer_waker);
    }

    fn rst(&mut self, stream_id: u32, status: RstStatus) {
        self.queue(Frame::RstStream(RstStream { stream_id, status }));
    }

    /// Ends the session once (the first cause wins) and wakes everyone.
    fn finish(&mut self, result: Result<(), SessionError>) {
        if self.end.is_none() {
            self.end = Some(result);
        }
        for s in self.streams.values_mut() {
            s.wake();
        }
        wake(&mut self.writer_waker);
        wake(&mut self.reader_waker);
        wake(&mut self.accept_waker);
        self.end_wakers.drain(..).for_each(Waker::wake);
    }

    /// Closes cleanly once nobody can use the session any more.
    fn close_if_unused(&mut self) {
        if self.acceptor_gone && self.streams.is_empty() && self.end.is_none() {
            self.send_goaway(GoAwayStatus::OK);
            self.finish(Ok(()));
        }
    }

    fn send_goaway(&mut self, status: GoAwayStatus) {
        if !self.goaway_sent {
            self.goaway_sent = true;
            let last_good_stream_id = self.last_peer_id;
            self.queue(Frame::GoAway(GoAway {
                last_good_stream_id,
                status,
            }));
        }
        wake(&mut self.accept_waker);
    }

    /// Gives `n` bytes back to the peer's session window, in batches of
    /// half the window so a byte-at-a-time reader does not flood it.
    fn credit_session(&mut self, n: usize) {
        self.recv_unacked += window(n);
        let threshold = i64::from(self.config.session_window).min(MAX_WINDOW) / 2;
        if self.recv_unacked >= threshold.max(1) {
            let delta = self.recv_unacked.min(MAX_WINDOW);
            self.recv_unacked -= delta;
            self.recv_window += delta;
            self.queue_window_update(0, delta);
        }
    }

    fn credit_stream(&mut self, id: u32, n: usize) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        // After the peer's FIN it sends nothing more: no window to give.
        if s.recv_fin || s.reset.is_some() {
            return;
        }
        s.recv_unacked += window(n);
        if s.recv_unacked < i64::from(DEFAULT_WINDOW / 2) {
            return;
        }
        let delta = s.recv_unacked.min(MAX_WINDOW);
        s.recv_unacked -= delta;
        s.recv_window += delta;
        self.queue_window_update(id, delta);
    }

    fn queue_window_update(&mut self, stream_id: u32, delta: i64) {
        if let Ok(delta @ 1..) = u32::try_from(delta) {
            self.queue(Frame::WindowUpdate(WindowUpdate { stream_id, delta }));
        }
    }

    /// Handles one frame from the peer. Returns the stream that just got
    /// data, for the reader to check its buffer.
    fn on_frame(&mut self, frame: Frame) -> Result<Option<u32>, SessionError> {
        match frame {
            Frame::SynStream(f) => self.on_syn_stream(f),
            Frame::SynReply(f) => self.on_syn_reply(f.stream_id, f.fin),
            Frame::Data(d) => return self.on_data(d),
            Frame::RstStream(r) => self.on_rst(r),
            Frame::Settings(s) => {
                for e in s.entries {
                    if e.id == setting_id::INITIAL_WINDOW_SIZE {
                        self.on_initial_window(e.value);
                    }
                }
            }
            Frame::Ping(id) => {
                // Only the peer's own pings (its parity) are echoed; one of
                // ours coming back is an answer.
                if id % 2 == self.peer_parity() {
                    self.queue(Frame::Ping(id));
                }
            }
            Frame::GoAway(_) => {
                self.goaway_received = true;
                wake(&mut self.accept_waker);
            }
            Frame::Headers(h) if h.fin => self.on_remote_fin(h.stream_id),
            Frame::WindowUpdate(w) => self.on_window_update(w)?,
            Frame::Headers(_) | Frame::Unknown(_) => {}
        }
        Ok(None)
    }

    fn on_syn_stream(&mut self, f: SynStream) {
        let id = f.stream_id;
        if id % 2 != self.peer_parity() || id <= self.last_peer_id {
            self.rst(id, RstStatus::PROTOCOL_ERROR);
            return;
        }
        self.last_peer_id = id;
        let open = self
            .streams
            .values()
            .filter(|s| s.peer_opened && !s.done())
            .count();
        if self.goaway_sent || self.acceptor_gone || open >= self.config.max_concurrent_streams {
            self.rst(id, RstStatus::REFUSED_STREAM);
            return;
        }
        let mut s = StreamState::new(true, f.headers, self.peer_initial_window);
        s.recv_fin = f.fin;
        // A unidirectional stream starts with our half closed: nothing to
        // reply on.
        s.send_fin = f.unidirectional;
        self.streams.insert(id, s);
        if !f.unidirectional {
            // spdystream's opener waits for this before it writes.
            self.queue(Frame::SynReply(SynReply {
                stream_id: id,
                fin: false,
                headers: Headers::new(),
            }));
        }
        self.incoming.push_back(id);
        wake(&mut self.accept_waker);
    }

    fn on_syn_reply(&mut self, id: u32, fin: bool) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.replied = true;
            s.recv_fin |= fin;
            s.wake();
        }
    }

    fn on_remote_fin(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.recv_fin = true;
            s.wake();
        }
    }

    fn on_data(&mut self, d: Data) -> Result<Option<u32>, SessionError> {
        let len = d.data.len();
        let enforce = self.enforce();
        // The session window counts every DATA frame, even one for a
        // stream that is gone.
        if enforce && window(len) > self.recv_window {
            return Err(SessionError::SessionWindowExceeded {
                len,
                window: self.recv_window,
            });
        }
        self.recv_window -= window(len);
        let id = d.stream_id;
        let Some(s) = self
            .streams
            .get_mut(&id)
            .filter(|s| !s.recv_fin && s.reset.is_none())
        else {
            // Late data for a stream that ended: dropped, but its bytes go
            // back to the session window.
            self.credit_session(len);
            return Ok(None);
        };
        if enforce && window(len) > s.recv_window {
            s.reset = Some(RstStatus::FLOW_CONTROL_ERROR);
            s.wake();
            self.rst(id, RstStatus::FLOW_CONTROL_ERROR);
            self.credit_session(len);
            return Ok(None);
        }
        s.recv_window -= window(len);
        s.buf.extend(d.data);
        s.recv_fin = d.fin;
        wake(&mut s.read_waker);
        Ok(Some(id))
    }

    fn on_rst(&mut self, r: RstStream) {
        if let Some(s) = self.streams.get_mut(&r.stream_id) {
            s.reset.get_or_insert(r.status);
            s.wake();
        }
    }

    fn on_initial_window(&mut self, value: u32) {
        let value = i64::from(value).min(MAX_WINDOW);
        // SPDY/3.1: the change applies to the windows of open streams too.
        let delta = value - self.peer_initial_window;
        self.peer_initial_window = value;
        for s in self.streams.values_mut() {
            s.send_window += delta;
            wake(&mut s.write_waker);
        }
    }

    fn on_window_update(&mut self, w: WindowUpdate) -> Result<(), SessionError> {
        let delta = i64::from(w.delta);
        if w.stream_id == 0 {
            self.send_window += delta;
            if self.send_window > MAX_WINDOW {
                return Err(SessionError::SendWindowOverflow);
            }
            for s in self.streams.values_mut() {
                wake(&mut s.write_waker);
            }
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&w.stream_id) else {
            return Ok(());
        };
        s.send_window += delta;
        if s.send_window > MAX_WINDOW && s.reset.is_none() {
            s.reset = Some(RstStatus::FLOW_CONTROL_ERROR);
            s.wake();
            self.rst(w.stream_id, RstStatus::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        wake(&mut s.write_waker);
        Ok(())
    }

    /// The error a stream's reads and writes get once the session is over.
    fn ended_error(&self) -> io::Error {
        match &self.end {
            Some(Err(e)) => io::Error::new(io::ErrorKind::ConnectionAborted, e.clone()),
            _ => io::Error::new(io::ErrorKind::ConnectionAborted, SessionError::Closed),
        }
    }
}

impl Session {
    /// A server session with the default [`Config`] (windows enforced).
    pub fn server<T>(io: T) -> Result<Self, SessionError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::new(io, Role::Server, Config::default())
    }

    /// A client session with the default [`Config`].
    pub fn client<T>(io: T) -> Result<Self, SessionError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::new(io, Role::Client, Config::default())
    }

    /// A session over `io`, whose frames a spawned task reads and writes
    /// from now on.
    pub fn new<T>(io: T, role: Role, config: Config) -> Result<Self, SessionError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // One codec per direction: the reader only inflates and the
        // writer only deflates, so each owns its half of the contexts.
        let reader = Codec::new()?.with_max_frame_len(MAX_INBOUND_FRAME);
        let writer = Codec::new()?;
        let shared = Arc::new(Mutex::new(State::new(role, config)));
        let (rd, wr) = tokio::io::split(io);
        let task = Arc::clone(&shared);
        tokio::spawn(async move {
            tokio::join!(read_loop(&task, rd, reader), write_loop(&task, wr, writer));
        });
        Ok(Self { shared })
    }

    /// The next stream the peer opened (already answered with SYN_REPLY),
    /// or `None` once the peer sent GOAWAY, we did, or the session ended.
    pub async fn accept(&mut self) -> Option<Stream> {
        poll_fn(|cx| {
            let mut st = lock(&self.shared);
            if let Some(id) = st.incoming.pop_front() {
                let headers = st
                    .streams
                    .get_mut(&id)
                    .map(|s| std::mem::take(&mut s.headers))
                    .unwrap_or_default();
                return Poll::Ready(Some(Stream {
                    id,
                    headers,
                    shared: Arc::clone(&self.shared),
                }));
            }
            if st.goaway_received || st.goaway_sent || st.end.is_some() {
                return Poll::Ready(None);
            }
            st.accept_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Opens a stream with `headers` (SYN_STREAM) and waits for the peer's
    /// SYN_REPLY.
    pub async fn open(&self, headers: Headers) -> Result<Stream, SessionError> {
        // Checked here so a bad header cannot fail the writer later.
        headers.to_block().map_err(crate::Error::from)?;
        let id = {
            let mut st = lock(&self.shared);
            if st.end.is_some() {
                return Err(SessionError::Closed);
            }
            if st.goaway_received {
                return Err(SessionError::GoneAway);
            }
            let id = st.next_local_id;
            if i64::from(id) > MAX_WINDOW {
                return Err(SessionError::StreamIdsExhausted);
            }
            st.next_local_id = id.saturating_add(2);
            let s = StreamState::new(false, Headers::new(), st.peer_initial_window);
            st.streams.insert(id, s);
            st.queue(Frame::SynStream(SynStream {
                stream_id: id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: headers.clone(),
            }));
            id
        };
        // Made first, so a cancelled open still cleans up on drop.
        let stream = Stream {
            id,
            headers,
            shared: Arc::clone(&self.shared),
        };
        poll_fn(|cx| stream.poll_replied(cx)).await?;
        Ok(stream)
    }

    /// Sends GOAWAY (`OK`): the peer may open no more streams; those open
    /// go on.
    pub fn go_away(&self) {
        lock(&self.shared).send_goaway(GoAwayStatus::OK);
    }

    /// Waits for the session to end: `Ok` when the peer closed the
    /// connection or we closed it, the error otherwise.
    pub async fn closed(&self) -> Result<(), SessionError> {
        poll_fn(|cx| {
            let mut st = lock(&self.shared);
            if let Some(end) = &st.end {
                return Poll::Ready(end.clone());
            }
            if !st.end_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                st.end_wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut st = lock(&self.shared);
        st.acceptor_gone = true;
        // Streams admitted but never accepted: nobody will read them.
        while let Some(id) = st.incoming.pop_front() {
            if let Some(s) = st.streams.remove(&id) {
                st.credit_session(s.buf.len());
                if !s.done() && st.end.is_none() {
                    st.rst(id, RstStatus::CANCEL);
                }
            }
        }
        st.close_if_unused();
    }
}

impl Stream {
    /// The stream's ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The headers it was opened with (Kubernetes: `streamtype`, `port`,
    /// `requestid`).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Sends FIN: we write nothing more. The same as `shutdown()`.
    pub async fn finish(&mut self) -> io::Result<()> {
        AsyncWriteExt::shutdown(self).await
    }

    /// Resets the stream with `status` (a status of 0, which the protocol
    /// lacks, is sent as `CANCEL`). Reads and writes fail from then on.
    pub fn reset(&mut self, status: RstStatus) {
        let status = if status.0 == 0 {
            RstStatus::CANCEL
        } else {
            status
        };
        let mut st = lock(&self.shared);
        let Some(s) = st.streams.get_mut(&self.id) else {
            return;
        };
        if s.reset.is_some() {
            return;
        }
        s.reset = Some(status);
        s.wake();
        if st.end.is_none() {
            st.rst(self.id, status);
        }
    }

    fn poll_replied(&self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        let mut st = lock(&self.shared);
        let end = st.end.clone();
        let Some(s) = st.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(SessionError::Closed));
        };
        if let Some(status) = s.reset {
            let stream_id = self.id;
            return Poll::Ready(Err(SessionError::Refused { stream_id, status }));
        }
        if s.replied {
            return Poll::Ready(Ok(()));
        }
        if let Some(end) = end {
            return Poll::Ready(Err(end.err().unwrap_or(SessionError::Closed)));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

fn reset_error(id: u32, status: RstStatus) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("stream {id} reset (status {})", status.0),
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut st = lock(&self.shared);
        let ended = st.end.is_some();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(st.ended_error()));
        };
        // Data that came before a FIN or a reset is still handed out.
        if !s.buf.is_empty() {
            let n = buf.remaining().min(s.buf.len());
            let (a, b) = s.buf.as_slices();
            let from_a = n.min(a.len());
            buf.put_slice(&a[..from_a]);
            buf.put_slice(&b[..n - from_a]);
            s.buf.drain(..n);
            st.credit_session(n);
            st.credit_stream(id, n);
            // The reader may be waiting for this stream's buffer to drain.
            wake(&mut st.reader_waker);
            return Poll::Ready(Ok(()));
        }
        if let Some(status) = s.reset {
            return Poll::Ready(Err(reset_error(id, status)));
        }
        if s.recv_fin {
            return Poll::Ready(Ok(()));
        }
        if ended {
            return Poll::Ready(Err(st.ended_error()));
        }
        s.read_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let id = self.id;
        let mut st = lock(&self.shared);
        if st.end.is_some() {
            return Poll::Ready(Err(st.ended_error()));
        }
        let (enforce, session_window, queue_full) = (
            st.enforce(),
            st.send_window,
            st.out_bytes >= OUT_QUEUE_LIMIT,
        );
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(st.ended_error()));
        };
        if let Some(status) = s.reset {
            return Poll::Ready(Err(reset_error(id, status)));
        }
        if s.send_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("stream {id}: write after FIN"),
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut n = buf.len().min(MAX_DATA_CHUNK);
        if enforce {
            let allowed = s.send_window.min(session_window).max(0);
            n = n.min(usize::try_from(allowed).unwrap_or(0));
        }
        if n == 0 || queue_full {
            // Woken by a WINDOW_UPDATE or by the writer draining.
            s.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        s.send_window -= window(n);
        st.send_window -= window(n);
        st.queue(Frame::Data(Data {
            stream_id: id,
            fin: false,
            data: buf[..n].to_vec(),
        }));
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued frames go out as fast as the writer can; there is
        // nothing of ours to push.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let id = self.id;
        let mut st = lock(&self.shared);
        let ended = st.end.is_some();
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(Err(st.ended_error()));
        };
        if s.send_fin {
            return Poll::Ready(Ok(()));
        }
        if let Some(status) = s.reset {
            return Poll::Ready(Err(reset_error(id, status)));
        }
        if ended {
            return Poll::Ready(Err(st.ended_error()));
        }
        s.send_fin = true;
        st.queue(Frame::Data(Data {
            stream_id: id,
            fin: true,
            data: Vec::new(),
        }));
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut st = lock(&self.shared);
        if let Some(s) = st.streams.remove(&self.id) {
            // Unread bytes still count against the session window.
            st.credit_session(s.buf.len());
            // A stream whose half we finished is left to end by itself:
            // a reset after our FIN could overtake the peer's reading of
            // what came before it (Go's spdystream drops buffered data on
            // a reset). What the peer still sends is dropped.
            if !s.done() && !s.send_fin && st.end.is_none() {
                st.rst(self.id, RstStatus::CANCEL);
            }
            wake(&mut st.reader_waker);
        }
        st.close_if_unused();
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.shared);
        f.debug_struct("Session")
            .field("role", &st.role)
            .field("streams", &st.streams.len())
            .field("end", &st.end)
            .finish_non_exhaustive()
    }
}

/// Reads frames until the connection ends, the peer breaks the protocol
/// or the session is closed from our side.
async fn read_loop<R: AsyncRead + Unpin>(shared: &Mutex<State>, mut rd: R, mut codec: Codec) {
    let result = read_frames(shared, &mut rd, &mut codec).await;
    let mut st = lock(shared);
    if let Err(
        SessionError::Frame(_)
        | SessionError::SessionWindowExceeded { .. }
        | SessionError::SendWindowOverflow,
    ) = &result
    {
        st.goaway_sent = false;
        st.send_goaway(GoAwayStatus::PROTOCOL_ERROR);
    }
    st.finish(result);
}

async fn read_frames<R: AsyncRead + Unpin>(
    shared: &Mutex<State>,
    rd: &mut R,
    codec: &mut Codec,
) -> Result<(), SessionError> {
    let mut buf = Vec::new();
    let mut chunk = vec![0; READ_CHUNK];
    loop {
        let n = tokio::select! {
            n = rd.read(&mut chunk) => n?,
            () = wait_end(shared) => return Ok(()),
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(())
            } else {
                Err(SessionError::Truncated)
            };
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        while let Some((frame, len)) = codec.decode(&buf[used..])? {
            used += len;
            let fed = lock(shared).on_frame(frame)?;
            wait_room(shared, fed).await;
        }
        buf.drain(..used);
    }
}

fn wait_end(shared: &Mutex<State>) -> impl std::future::Future<Output = ()> + '_ {
    poll_fn(move |cx| {
        let mut st = lock(shared);
        if st.end.is_some() {
            return Poll::Ready(());
        }
        st.reader_waker = Some(cx.waker().clone());
        Poll::Pending
    })
}

/// Holds the reader while the write queue is full (the peer is not
/// reading our answers) or `stream` holds too much unread data.
async fn wait_room(shared: &Mutex<State>, stream: Option<u32>) {
    poll_fn(|cx| {
        let mut st = lock(shared);
        let stream_full = stream
            .and_then(|id| st.streams.get(&id))
            .is_some_and(|s| s.reset.is_none() && s.buf.len() > STREAM_BUFFER_LIMIT);
        if st.end.is_some() || (st.out_bytes < OUT_QUEUE_LIMIT && !stream_full) {
            return Poll::Ready(());
        }
        st.reader_waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await;
}

/// Writes queued frames in order until the session ends and the queue is
/// empty (so a final GOAWAY goes out), then shuts the connection's write
/// half.
async fn write_loop<W: AsyncWrite + Unpin>(shared: &Mutex<State>, mut wr: W, mut codec: Codec) {
    let mut bytes = Vec::new();
    while let Some(frames) = next_batch(shared).await {
        bytes.clear();
        let mut sent = 0;
        for f in &frames {
            sent += cost(f);
            if let Err(e) = codec.encode(f, &mut bytes) {
                lock(shared).finish(Err(e.into()));
                return;
            }
        }
        let written = async {
            wr.write_all(&bytes).await?;
            wr.flush().await
        }
        .await;
        let mut st = lock(shared);
        st.out_bytes = st.out_bytes.saturating_sub(sent);
        for s in st.streams.values_mut() {
            wake(&mut s.write_waker);
        }
        wake(&mut st.reader_waker);
        if let Err(e) = written {
            st.finish(Err(e.into()));
            return;
        }
    }
    // Best effort: the peer may be gone already.
    let _ = wr.shutdown().await;
}

/// Everything queued, or `None` once the session ended and all is sent.
async fn next_batch(shared: &Mutex<State>) -> Option<Vec<Frame>> {
    poll_fn(|cx| {
        let mut st = lock(shared);
        if !st.out.is_empty() {
            return Poll::Ready(Some(st.out.drain(..).collect()));
        }
        if st.end.is_some() {
            return Poll::Ready(None);
        }
        st.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use tokio::io::{duplex, DuplexStream};
    use tokio::time::timeout;

    use super::*;
    use crate::frame::{Setting, Settings};

    /// A peer that writes and reads raw frames with its own [`Codec`], so
    /// the wire format is checked without our session code on that end.
    struct Raw {
        io: DuplexStream,
        codec: Codec,
        buf: Vec<u8>,
    }

    impl Raw {
        async fn send(&mut self, frame: Frame) {
            let mut bytes = Vec::new();
            self.codec.encode(&frame, &mut bytes).unwrap();
            self.io.write_all(&bytes).await.unwrap();
        }

        /// The next frame, or `None` at end of file.
        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some((f, n)) = self.codec.decode(&self.buf).unwrap() {
                    self.buf.drain(..n);
                    return Some(f);
                }
                let mut chunk = [0; 4096];
                let n = self.io.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        /// The next frame other than a session WINDOW_UPDATE (the server
        /// opens with one), or `None` if none comes within 500 ms (long
        /// enough on a loaded machine).
        async fn next(&mut self) -> Option<Frame> {
            timeout(Duration::from_millis(500), async {
                loop {
                    match self.recv().await {
                        Some(Frame::WindowUpdate(WindowUpdate { stream_id: 0, .. })) => {}
                        other => return other,
                    }
                }
            })
            .await
            .ok()
            .flatten()
        }

        /// Reads DATA on `id` until none comes for 500 ms: (bytes, FIN seen).
        async fn drain_data(&mut self, id: u32) -> (usize, bool) {
            let mut total = 0;
            while let Some(f) = self.next().await {
                match f {
                    Frame::Data(d) if d.stream_id == id => {
                        total += d.data.len();
                        if d.fin {
                            return (total, true);
                        }
                    }
                    Frame::WindowUpdate(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            (total, false)
        }
    }

    fn server_with_raw(config: Config) -> (Session, Raw) {
        let (a, b) = duplex(1 << 20);
        let server = Session::new(a, Role::Server, config).unwrap();
        let raw = Raw {
            io: b,
            codec: Codec::new().unwrap(),
            buf: Vec::new(),
        };
        (server, raw)
    }

    fn syn(stream_id: u32, streamtype: &str) -> Frame {
        let mut headers = Headers::new();
        headers.append("streamtype", streamtype);
        Frame::SynStream(SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers,
        })
    }

    fn data(stream_id: u32, fin: bool, data: Vec<u8>) -> Frame {
        Frame::Data(Data {
            stream_id,
            fin,
            data,
        })
    }

    fn window_update(stream_id: u32, delta: u32) -> Frame {
        Frame::WindowUpdate(WindowUpdate { stream_id, delta })
    }

    fn initial_window(value: u32) -> Frame {
        Frame::Settings(Settings {
            clear: false,
            entries: vec![Setting {
                flags: 0,
                id: setting_id::INITIAL_WINDOW_SIZE,
                value,
            }],
        })
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn raw_frames_open_a_stream_and_carry_data_both_ways() {
        let (mut server, mut raw) = server_with_raw(Config::default());
        // The server announces its larger session window first.
        assert_eq!(
            raw.recv().await,
            Some(window_update(0, 15 * DEFAULT_WINDOW))
        );
        raw.send(syn(1, "stdout")).await;
        let mut stream = server.accept().await.unwrap();
        assert_eq!(stream.id(), 1);
        assert_eq!(stream.headers().get("streamtype"), Some("stdout"));
        assert_eq!(
            raw.next().await,
            Some(Frame::SynReply(SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            }))
        );
        stream.write_all(b"hello").await.unwrap();
        assert_eq!(raw.next().await, Some(data(1, false, b"hello".to_vec())));
        raw.send(data(1, false, b"in".to_vec())).await;
        raw.send(data(1, true, b"put".to_vec())).await;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"input");
        stream.finish().await.unwrap();
        assert_eq!(raw.next().await, Some(data(1, true, Vec::new())));
        assert!(stream.write_all(b"late").await.is_err());
    }

    #[tokio::test]
    async fn client_and_server_exchange_bytes_and_fin() {
        let (a, b) = duplex(4096);
        let mut server = Session::server(a).unwrap();
        let client = Session::client(b).unwrap();
        let mut headers = Headers::new();
        headers.append("streamtype", "stdin");
        headers.append("requestid", "7");
        let (opened, accepted) = tokio::join!(client.open(headers), server.accept());
        let (mut c, mut s) = (opened.unwrap(), accepted.unwrap());
        assert_eq!(s.headers().get("streamtype"), Some("stdin"));
        assert_eq!(s.headers().get("requestid"), Some("7"));
        assert_eq!((c.id(), s.id()), (1, 1));
        c.write_all(b"ping").await.unwrap();
        c.finish().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        s.write_all(b"pong").await.unwrap();
        s.finish().await.unwrap();
        got.clear();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong");
        // A second stream gets the next odd ID.
        let (c2, s2) = tokio::join!(client.open(Headers::new()), server.accept());
        assert_eq!((c2.unwrap().id(), s2.unwrap().id()), (3, 3));
    }

    #[tokio::test]
    async fn a_megabyte_each_way_completes_with_window_updates() {
        let config = Config {
            session_window: DEFAULT_WINDOW,
            ..Config::default()
        };
        let (a, b) = duplex(8192);
        let mut server = Session::new(a, Role::Server, config).unwrap();
        let client = Session::new(b, Role::Client, config).unwrap();
        let payload = pattern(1 << 20);
        let (opened, accepted) = tokio::join!(client.open(Headers::new()), server.accept());
        let run = |stream: Stream, payload: Vec<u8>| async move {
            let (mut r, mut w) = tokio::io::split(stream);
            let send = async {
                w.write_all(&payload).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let recv = r.read_to_end(&mut got);
            let ((), n) = tokio::join!(send, recv);
            n.unwrap();
            got
        };
        let both = async {
            tokio::join!(
                run(opened.unwrap(), payload.clone()),
                run(accepted.unwrap(), payload.clone())
            )
        };
        let (at_client, at_server) = timeout(Duration::from_secs(30), both).await.unwrap();
        assert!(at_client == payload && at_server == payload);
    }

    #[tokio::test]
    async fn a_writer_waits_for_the_stream_and_session_windows() {
        let (mut server, mut raw) = server_with_raw(Config::default());
        raw.send(syn(1, "stdout")).await;
        let mut stream = server.accept().await.unwrap();
        assert!(matches!(raw.next().await, Some(Frame::SynReply(_))));
        let writer = tokio::spawn(async move {
            stream.write_all(&pattern(100_000)).await.unwrap();
            stream.finish().await.unwrap();
            stream
        });
        // Both of the peer's windows start at 64 KiB.
        assert_eq!(raw.drain_data(1).await, (65_536, false));
        // More stream window alone is not enough: the session's is empty.
        raw.send(window_update(1, 65_536)).await;
        assert_eq!(raw.drain_data(1).await, (0, false));
        raw.send(window_update(0, 65_536)).await;
        assert_eq!(raw.drain_data(1).await, (100_000 - 65_536, true));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn the_peers_initial_window_setting_moves_stream_windows() {
        let (mut server, mut raw) = server_with_raw(Config::default());
        raw.send(initial_window(1000)).await;
        raw.send(syn(1, "stdout")).await;
        let mut stream = server.accept().await.unwrap();
        assert!(matches!(raw.next().await, Some(Frame::SynReply(_))));
        let writer = tokio::spawn(async move {
            stream.write_all(&pattern(5000)).await.unwrap();
            stream
        });
        assert_eq!(raw.drain_data(1).await, (1000, false));
        // Raising the setting raises the open stream's window by the same.
        raw.send(initial_window(3000)).await;
        assert_eq!(raw.drain_data(1).await, (2000, false));
        raw.send(window_update(1, 2000)).await;
        assert_eq!(raw.drain_data(1).await, (2000, false));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn overrunning_a_stream_window_resets_that_stream() {
        let (mut server, mut raw) = server_with_raw(Config::default());
        raw.send(syn(1, "stdin")).await;
        let mut stream = server.accept().await.unwrap();
        assert!(matches!(raw.next().await, Some(Frame::SynReply(_))));
        raw.send(data(1, false, pattern(65_536))).await;
        raw.send(data(1, false, vec![1])).await;
        assert_eq!(
            raw.next().await,
            Some(Frame::RstStream(RstStream {
                stream_id: 1,
                status: RstStatus::FLOW_CONTROL_ERROR,
            }))
        );
        // What fit the window is still read, then the reset is an error.
        let mut got = vec![0; 65_536];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, pattern(65_536));
        let err = stream.read(&mut [0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        // The session goes on.
        raw.send(Frame::Ping(1)).await;
        assert_eq!(raw.next().await, Some(Frame::Ping(1)));
    }

    #[tokio::test]
    async fn overrunning_the_session_window_ends_the_session() {
        let config = Config {
            session_window: DEFAULT_WINDOW,
            ..Config::default()
        };
        let (server, mut raw) = server_with_raw(config);
        raw.send(syn(1, "stdin")).await;
        raw.send(syn(3, "stdin")).await;
        raw.send(data(1, false, pattern(40_000))).await;
        raw.send(data(3, false, pattern(40_000))).await;
        let err = server.closed().await.unwrap_err();
        assert_eq!(
            err,
            SessionError::SessionWindowExceeded {
                len: 40_000,
                window: 25_536
            }
        );
        let mut frames = Vec::new();
        while let Some(f) = raw.next().await {
            frames.push(f);
        }
        assert!(frames.contains(&Frame::GoAway(GoAway {
            last_good_stream_id: 3,
            status: GoAwayStatus::PROTOCOL_ERROR,
        })));
    }

    #[tokio::test]
    async fn the_peers_pings_are_echoed_and_ours_are_not() {
        let (_server, mut raw) = server_with_raw(Config::default());
        raw.send(Frame::Ping(1)).await;
        assert_eq!(raw.next().await, Some(Frame::Ping(1)));
        // An even ID would be an answer to a ping of the server's.
        raw.send(Frame::Ping(2)).await;
        raw.send(Frame::Ping(3)).await;
        assert_eq!(raw.next().await, Some(Frame::Ping(3)));
    }

    #[tokio::test]
    async fn garbage_ends_the_session_with_an_error() {
        let inputs: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0xff; 32],
            // SYN_STREAM whose header block is not zlib.
            &[
                0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
            ],
        ];
        for input in inputs {
            let (mut server, mut raw) = server_with_raw(Config::default());
            raw.io.write_all(input).await.unwrap();
            assert!(
                matches!(server.closed().await, Err(SessionError::Frame(_))),
                "{input:02x?}"
            );
            assert!(server.accept().await.is_none());
            assert!(matches!(
                raw.next().await,
                Some(Frame::GoAway(GoAway {
                    status: GoAwayStatus::PROTOCOL_ERROR,
                    ..
                }))
            ));
            assert_eq!(raw.recv().await, None, "the connection is closed");
        }
        // A frame cut short by the end of the connection.
        let (server, mut raw) = server_with_raw(Config::default());
        raw.io
            .write_all(&[0x80, 3, 0, 6, 0, 0, 0, 4, 0])
            .await
            .unwrap();
        raw.io.shutdown().await.unwrap();
        assert_eq!(server.closed().await, Err(SessionError::Truncated));
    }

    #[tokio::test]
    async fn streams_over_the_limit_are_refused() {
        let (mut server, mut raw) = server_with_raw(Config::default());
        for id in (1..=129).step_by(2) {
            raw.send(syn(id, "data")).await;
        }
        for id in (1..=127).step_by(2) {
            match raw.next().await {
                Some(Frame::SynReply(r)) => assert_eq!(r.stream_id, id),
                other => panic!("stream {id}: {other:?}"),
            }
        }
        assert_eq!(
            raw.next().await,
            Some(Frame::RstStream(RstStream {
                stream_id: 129,
                status: RstStatus::REFUSED_STREAM,
            }))
        );
        // Once one ends, there is room again.
        let mut first = server.accept().await.unwrap();
        first.reset(RstStatus::CANCEL);
        raw.send(syn(131, "data")).await;
        assert!(matches!(raw.next().await, Some(Frame::RstStream(r)) if r.stream_id == 1));
        assert!(matches!(raw.next().await, Some(Frame::SynReply(r)) if r.stream_id == 131));
        // A stream ID that does not increase is a protocol error.
        raw.send(syn(5, "data")).await;
        assert_eq!(
            raw.next().await,
            Some(Frame::RstStream(RstStream {
                stream_id: 5,
                status: RstStatus::PROTOCOL_ERROR,
            }))
        );
    }

    #[tokio::test]
    async fn a_peer_reset_fails_reads_and_writes() {
        let (mut server, mut raw) = server_with_raw(Config::default());
        raw.send(syn(1, "stdout")).await;
        let mut stream = server.accept().await.unwrap();
        raw.send(Frame::RstStream(RstStream {
            stream_id: 1,
            status: RstStatus::CANCEL,
        }))
        .await;
        let err = stream.read(&mut [0; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(stream.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn goaway_stops_accepting_and_dropping_everything_closes() {
        let (mut server, mut raw) = server_with_raw(Config::default());
        raw.send(syn(1, "stdout")).await;
        raw.send(Frame::GoAway(GoAway {
            last_good_stream_id: 0,
            status: GoAwayStatus::OK,
        }))
        .await;
        // The stream opened before GOAWAY is still handed out.
        let stream = server.accept().await.unwrap();
        assert!(server.accept().await.is_none());
        assert!(matches!(raw.next().await, Some(Frame::SynReply(_))));
        drop(server);
        drop(stream);
        assert_eq!(
            raw.next().await,
            Some(Frame::RstStream(RstStream {
                stream_id: 1,
                status: RstStatus::CANCEL,
            }))
        );
        assert_eq!(
            raw.next().await,
            Some(Frame::GoAway(GoAway {
                last_good_stream_id: 1,
                status: GoAwayStatus::OK,
            }))
        );
        assert_eq!(raw.recv().await, None);
    }

    #[tokio::test]
    async fn lenient_flow_control_ignores_windows_like_spdystream() {
        let config = Config {
            flow_control: FlowControl::Lenient,
            ..Config::default()
        };
        let (mut server, mut raw) = server_with_raw(config);
        raw.send(syn(1, "stdin")).await;
        let mut stream = server.accept().await.unwrap();
        // 300 KiB from the peer with no WINDOW_UPDATE awaited.
        let sent = pattern(300 * 1024);
        for chunk in sent.chunks(32 * 1024) {
            raw.send(data(1, false, chunk.to_vec())).await;
        }
        raw.send(data(1, true, Vec::new())).await;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert!(got == sent);
        // And 300 KiB to it, though it never sends a WINDOW_UPDATE.
        stream.write_all(&sent).await.unwrap();
        stream.finish().await.unwrap();
        assert!(matches!(raw.next().await, Some(Frame::SynReply(_))));
        assert_eq!(raw.drain_data(1).await, (sent.len(), true));
    }

    #[tokio::test]
    async fn a_refused_open_is_an_error() {
        let (a, b) = duplex(1 << 16);
        let client = Session::client(a).unwrap();
        let mut raw = Raw {
            io: b,
            codec: Codec::new().unwrap(),
            buf: Vec::new(),
        };
        let peer = async {
            let Some(Frame::SynStream(s)) = raw.next().await else {
                panic!("no SYN_STREAM");
            };
            assert_eq!(s.headers.get("streamtype"), Some("error"));
            raw.send(Frame::RstStream(RstStream {
                stream_id: s.stream_id,
                status: RstStatus::REFUSED_STREAM,
            }))
            .await;
        };
        let mut headers = Headers::new();
        headers.append("streamtype", "error");
        let (opened, ()) = tokio::join!(client.open(headers), peer);
        assert_eq!(
            opened.unwrap_err(),
            SessionError::Refused {
                stream_id: 1,
                status: RstStatus::REFUSED_STREAM,
            }
        );
    }
}
