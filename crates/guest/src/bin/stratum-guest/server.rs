//! The vsock side: one thread per connection from the node agent, and the
//! status updates every connection that said Hello receives.

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use stratum_guest::proto::{
    guest_message, host_message, Error as ErrorReply, GuestMessage, GuestStatus, HelloReply,
    HostMessage, Pong, ReidentifyReply, ShutdownReply,
};
use stratum_guest::{encode, FrameDecoder, PROTOCOL_VERSION};
use vsock::{VsockListener, VsockStream, VMADDR_CID_ANY};

/// A host that stops reading is dropped after this, instead of holding up
/// the updates of the others.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often binding is retried while the vsock transport is not there yet
/// (its module loads once udev sees the device, possibly after us).
const BIND_RETRY: Duration = Duration::from_secs(1);

type Writer = Arc<Mutex<VsockStream>>;

/// The current status and the connections that receive its updates.
pub struct Shared {
    status: Mutex<GuestStatus>,
    subscribers: Mutex<Vec<Writer>>,
}

impl Shared {
    pub fn new(status: GuestStatus) -> Self {
        Self {
            status: Mutex::new(status),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// Records `status`; when it differs from the last one, sends it to
    /// every subscriber, forgetting those whose write fails.
    pub fn update(&self, status: GuestStatus) {
        {
            let mut current = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            if *current == status {
                return;
            }
            *current = status.clone();
        }
        let message = status_message(status);
        let mut subscribers = self
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|writer| send(writer, &message).is_ok());
    }

    fn current(&self) -> GuestStatus {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How boot configuration ended, as the current status says.
    fn ready_detail(&self) -> Option<String> {
        let status = self.current();
        status.ready.then_some(status.ready_detail)
    }

    fn subscribe(&self, writer: &Writer) {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(writer));
    }

    fn unsubscribe(&self, writer: &Writer) {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|w| !Arc::ptr_eq(w, writer));
    }
}

/// Accepts connections forever.
pub fn serve(port: u32, shared: &Arc<Shared>) -> io::Result<()> {
    let listener = bind(port);
    eprintln!("stratum-guest: listening on vsock port {port}");
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("stratum-guest: accept: {e}");
                continue;
            }
        };
        let shared = Arc::clone(shared);
        thread::spawn(move || {
            if let Err(e) = converse(stream, &shared) {
                eprintln!("stratum-guest: connection ended: {e}");
            }
        });
    }
    Ok(())
}

fn bind(port: u32) -> VsockListener {
    let mut reported = false;
    loop {
        match VsockListener::bind_with_cid_port(VMADDR_CID_ANY, port) {
            Ok(listener) => return listener,
            Err(e) => {
                if !reported {
                    eprintln!(
                        "stratum-guest: cannot listen on vsock port {port} yet ({e}); retrying"
                    );
                    reported = true;
                }
                thread::sleep(BIND_RETRY);
            }
        }
    }
}

/// Serves one connection until it ends or the host breaks the protocol.
fn converse(stream: VsockStream, shared: &Shared) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut reader = stream.try_clone()?;
    let writer: Writer = Arc::new(Mutex::new(stream));
    let result = serve_requests(&mut reader, &writer, shared);
    shared.unsubscribe(&writer);
    result
}

fn serve_requests(reader: &mut VsockStream, writer: &Writer, shared: &Shared) -> io::Result<()> {
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; stratum_guest::HEADER_LEN + stratum_guest::MAX_FRAME];
    loop {
        let wanted = decoder.wanted();
        if wanted > 0 {
            let n = reader.read(&mut chunk[..wanted])?;
            if n == 0 {
                return Ok(());
            }
            decoder.push(&chunk[..n]).map_err(io::Error::other)?;
        }
        let request = match decoder.next_message::<HostMessage>() {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                let _ = send(writer, &error(0, &e.to_string()));
                return Err(io::Error::other(e));
            }
        };
        if !answer(request, writer, shared)? {
            return Ok(());
        }
    }
}

/// Answers one request; false when the connection is to end.
fn answer(request: HostMessage, writer: &Writer, shared: &Shared) -> io::Result<bool> {
    let id = request.id;
    match request.body {
        Some(host_message::Body::Hello(hello)) => {
            if hello.protocol_version != PROTOCOL_VERSION {
                let message = format!(
                    "protocol version {} is not spoken here (this agent speaks {PROTOCOL_VERSION})",
                    hello.protocol_version
                );
                send(writer, &error(id, &message))?;
                return Ok(false);
            }
            let reply = guest_message::Body::Hello(HelloReply {
                protocol_version: PROTOCOL_VERSION,
                agent_version: concat!("stratum-guest ", env!("CARGO_PKG_VERSION")).into(),
            });
            send(
                writer,
                &GuestMessage {
                    id,
                    body: Some(reply),
                },
            )?;
            send(writer, &status_message(shared.current()))?;
            shared.subscribe(writer);
        }
        Some(host_message::Body::Ping(_)) => {
            let pong = guest_message::Body::Pong(Pong {});
            send(
                writer,
                &GuestMessage {
                    id,
                    body: Some(pong),
                },
            )?;
        }
        Some(host_message::Body::Shutdown(shutdown)) => {
            let action = if shutdown.reboot {
                "reboot"
            } else {
                "poweroff"
            };
            let reply = guest_message::Body::Shutdown(ShutdownReply {});
            send(
                writer,
                &GuestMessage {
                    id,
                    body: Some(reply),
                },
            )?;
            // systemd stops the services (this one too) and the kernel
            // powers off: the connection ends with the guest.
            let started = Command::new("systemctl")
                .arg(action)
                .stdin(Stdio::null())
                .spawn();
            if let Err(e) = started {
                send(writer, &error(id, &format!("systemctl {action}: {e}")))?;
            }
        }
        Some(host_message::Body::Reidentify(identity)) => {
            let current = crate::status::collect(None);
            let applied = crate::identity::plan(&current.hostname, &current.interfaces, &identity)
                .and_then(|steps| crate::identity::apply(&steps, &identity.entropy));
            let reply = match applied {
                Ok(()) => GuestMessage {
                    id,
                    body: Some(guest_message::Body::Reidentify(ReidentifyReply {})),
                },
                Err(e) => error(id, &format!("reidentify: {e}")),
            };
            send(writer, &reply)?;
            // Everyone hears of the new identity now, not at the next refresh.
            shared.update(crate::status::collect(shared.ready_detail()));
        }
        None => send(writer, &error(id, "a message without a body"))?,
    }
    Ok(true)
}

fn status_message(status: GuestStatus) -> GuestMessage {
    GuestMessage {
        id: 0,
        body: Some(guest_message::Body::Status(status)),
    }
}

fn error(id: u64, message: &str) -> GuestMessage {
    GuestMessage {
        id,
        body: Some(guest_message::Body::Error(ErrorReply {
            message: message.into(),
        })),
    }
}

fn send(writer: &Writer, message: &GuestMessage) -> io::Result<()> {
    let frame = encode(message).map_err(io::Error::other)?;
    let mut stream = writer.lock().unwrap_or_else(PoisonError::into_inner);
    stream.write_all(&frame)
}
