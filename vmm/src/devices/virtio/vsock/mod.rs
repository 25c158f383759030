//! virtio-vsock with a hybrid-vsock backend: guest streams end on host
//! Unix sockets ([`muxer`]).
//!
//! Queue 0 receives (host → guest), queue 1 transmits (guest → host),
//! queue 2 carries events, which this device never sends (they announce a
//! transport reset after migration). The worker polls the queues'
//! notifications and the host sockets together.

pub mod connection;
pub mod muxer;
pub mod packet;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::vstate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use self::muxer::{Muxer, Token};
use self::packet::{Header, HDR_LEN, MAX_PAYLOAD};
use super::worker::Worker;
use super::{
    chain_is_well_formed, expect_queues, len_u32, read_config_bytes, signal_used, stop_worker,
    ActivateError, ActiveQueue, Interrupt, SharedMemory, VirtioDevice, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};
use crate::seccomp::ThreadKind;

const QUEUE_SIZES: &[u16] = &[256, 256, 256];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    worker: Option<Worker>,
    /// Set to have the worker tell the driver that every connection is
    /// gone (a restored VM's: their host ends are not in the snapshot),
    /// with a write to the event queue's eventfd to wake it.
    reset_connections: Arc<AtomicBool>,
    event_kick: Option<EventFd>,
}

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` (virtio 1.1, 5.10.6.6.1).
const EVENT_TRANSPORT_RESET: u32 = 0;

impl Vsock {
    /// Binds the host socket now, so a path in use fails the VM before it
    /// boots and the host can connect before the guest driver is up.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, Error> {
        let bind_error = |source| Error::Bind {
            path: uds_path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            worker: None,
            reset_connections: Arc::new(AtomicBool::new(false)),
            event_kick: None,
        })
    }
}

/// Puts a transport-reset event in the driver's next event buffer; false
/// if it has none (the worker tries again when the driver adds one).
fn send_transport_reset(mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
    let Some(chain) = queue.pop_descriptor_chain(mem) else {
        return false;
    };
    let head = chain.head_index();
    let written = chain_is_well_formed(&chain)
        && chain
            .writer(mem)
            .ok()
            .is_some_and(|mut w| w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).is_ok());
    let len = if written { 4 } else { 0 };
    // A driver whose buffer could not take the event loses it; there is
    // nothing else to tell it with.
    let _ = queue.add_used(mem, head, len);
    true
}

/// Passes every packet the guest queued to the muxer. A malformed request
/// (short header, payload beyond the limit or the buffers) is completed
/// and dropped; the device goes on.
pub fn process_tx(mem: &GuestMemoryMmap, queue: &mut Queue, muxer: &mut Muxer) -> bool {
    let mut used = false;
    let mut payload = Vec::with_capacity(MAX_PAYLOAD);
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        if chain_is_well_formed(&chain) {
            if let Ok(mut reader) = chain.reader(mem) {
                if let Some(header) = read_packet(&mut reader, &mut payload) {
                    muxer.on_guest_packet(&header, &payload);
                }
            }
        }
        if queue.add_used(mem, head, 0).is_err() {
            break;
        }
        used = true;
    }
    used
}

fn read_packet(reader: &mut impl ReadAvailable, payload: &mut Vec<u8>) -> Option<Header> {
    let mut raw = [0u8; HDR_LEN];
    reader.read_exact(&mut raw).ok()?;
    let header = Header::from_bytes(&raw);
    let len = usize::try_from(header.len).ok()?;
    if len > MAX_PAYLOAD || len > reader.available() {
        return None;
    }
    payload.clear();
    payload.resize(len, 0);
    reader.read_exact(payload).ok()?;
    Some(header)
}

/// A descriptor chain reader that knows how much it still holds.
trait ReadAvailable: Read {
    fn available(&self) -> usize;
}

impl<B: vm_memory::bitmap::BitmapSlice> ReadAvailable for virtio_queue::Reader<'_, B> {
    fn available(&self) -> usize {
        self.available_bytes()
    }
}

/// Fills the guest's receive buffers with what the muxer owes it. Returns
/// whether any buffer was used.
pub fn fill_rx(mem: &GuestMemoryMmap, queue: &mut Queue, muxer: &mut Muxer) -> bool {
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let writer = chain_is_well_formed(&chain)
            .then(|| chain.writer(mem).ok())
            .flatten()
            .filter(|w| w.available_bytes() >= HDR_LEN);
        let written = match writer {
            Some(mut writer) => {
                let room = writer.available_bytes() - HDR_LEN;
                let Some(packet) = muxer.next_packet(room) else {
                    // Nothing owed: the buffer waits for the next packet.
                    queue.go_to_previous_position();
                    break;
                };
                let ok = writer.write_all(&packet.header.to_bytes()).is_ok()
                    && writer.write_all(&packet.payload).is_ok();
                if ok {
                    HDR_LEN + packet.payload.len()
                } else {
                    0
                }
            }
            // Unusable buffer (outside memory, too small, read-only):
            // returned empty so the guest driver sees and drops it.
            None => 0,
        };
        // A header and at most MAX_PAYLOAD bytes.
        if queue.add_used(mem, head, len_u32(written)).is_err() {
            break;
        }
        used = true;
    }
    used
}

struct VsockWorker {
    mem: SharedMemory,
    interrupt: Arc<Interrupt>,
    rx_queue: Queue,
    tx_queue: Queue,
    rx_notify: EventFd,
    tx_notify: EventFd,
    event_queue: Queue,
    event_notify: EventFd,
    reset_connections: Arc<AtomicBool>,
    muxer: Muxer,
}

impl VsockWorker {
    fn send_pending_reset(&mut self) {
        if self.reset_connections.load(Ordering::Acquire)
            && send_transport_reset(&self.mem, &mut self.event_queue)
        {
            self.reset_connections.store(false, Ordering::Release);
            signal_used(&self.mem, &mut self.event_queue, &self.interrupt);
        }
    }

    fn run(&mut self, kill: RawFd) {
        let mut set = Vec::new();
        loop {
            set.clear();
            self.muxer.poll_set(&mut set);
            let fixed = [
                kill,
                self.rx_notify.as_raw_fd(),
                self.tx_notify.as_raw_fd(),
                self.event_notify.as_raw_fd(),
            ];
            let Some(revents) = poll(&fixed, &set) else {
                return;
            };
            if revents[0] != 0 {
                return;
            }
            if revents[3] != 0 {
                let _ = self.event_notify.read();
                self.send_pending_reset();
            }
            if revents[1] != 0 {
                let _ = self.rx_notify.read();
            }
            if revents[2] != 0 {
                let _ = self.tx_notify.read();
                if process_tx(&self.mem, &mut self.tx_queue, &mut self.muxer) {
                    signal_used(&self.mem, &mut self.tx_queue, &self.interrupt);
                }
            }
            let ready: Vec<(Token, i16)> = set
                .iter()
                .zip(&revents[fixed.len()..])
                .filter(|(_, &r)| r != 0)
                .map(|(&(_, _, token), &r)| (token, r))
                .collect();
            self.muxer.on_ready(&ready);
            if fill_rx(&self.mem, &mut self.rx_queue, &mut self.muxer) {
                signal_used(&self.mem, &mut self.rx_queue, &self.interrupt);
            }
        }
    }
}

/// Waits until an fd is ready: `fixed` for reading, `set` for the events
/// given. Returns every fd's revents, `fixed` first; None if poll fails.
fn poll(fixed: &[RawFd], set: &[(RawFd, i16, Token)]) -> Option<Vec<i16>> {
    let mut pollfds: Vec<libc::pollfd> = fixed
        .iter()
        .map(|&fd| (fd, libc::POLLIN))
        .chain(set.iter().map(|&(fd, events, _)| (fd, events)))
        .map(|(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pollfds` is a valid array of `pollfds.len()` entries.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, -1) };
        if n > 0 {
            return Some(pollfds.iter().map(|p| p.revents).collect());
        }
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: SharedMemory,
        interrupt: Arc<Interrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let [rx, tx, event] = expect_queues::<3>(queues)?;
        let listener = self.listener.try_clone().map_err(ActivateError::Worker)?;
        let mut worker = VsockWorker {
            mem,
            interrupt,
            rx_queue: rx.queue,
            tx_queue: tx.queue,
            rx_notify: rx.notify,
            tx_notify: tx.notify,
            event_queue: event.queue,
            event_notify: event.notify.try_clone().map_err(ActivateError::Worker)?,
            reset_connections: self.reset_connections.clone(),
            muxer: Muxer::new(self.guest_cid, self.uds_path.clone(), listener),
        };
        self.event_kick = Some(event.notify);
        let worker = Worker::spawn_loop("virtio-vsock", ThreadKind::Vsock, move |kill| {
            worker.run(kill)
        })
        .map_err(ActivateError::Worker)?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) -> bool {
        stop_worker(&mut self.worker)
    }

    fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// Firecracker's rule: a restored VM's vsock connections are reset,
    /// their host ends being gone; the guest's sockets see the connection
    /// reset and its programs connect again.
    fn after_restore(&mut self) {
        self.reset_connections.store(true, Ordering::Release);
        if let Some(kick) = &self.event_kick {
            let _ = kick.write(1);
        }
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data: small, known values
mod tests;
