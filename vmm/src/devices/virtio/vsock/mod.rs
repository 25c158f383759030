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
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
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
}

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
        })
    }
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
    /// Kept so the event queue's notifications have somewhere to go.
    _event_notify: EventFd,
    muxer: Muxer,
}

impl VsockWorker {
    fn run(mut self, kill: RawFd) {
        let mut set = Vec::new();
        loop {
            set.clear();
            self.muxer.poll_set(&mut set);
            let fixed = [kill, self.rx_notify.as_raw_fd(), self.tx_notify.as_raw_fd()];
            let Some(revents) = poll(&fixed, &set) else {
                return;
            };
            if revents[0] != 0 {
                return;
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
        let worker = VsockWorker {
            mem,
            interrupt,
            rx_queue: rx.queue,
            tx_queue: tx.queue,
            rx_notify: rx.notify,
            tx_notify: tx.notify,
            _event_notify: event.notify,
            muxer: Muxer::new(self.guest_cid, self.uds_path.clone(), listener),
        };
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
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data: small, known values
mod tests;
