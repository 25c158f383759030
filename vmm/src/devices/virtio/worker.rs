//! A device's worker thread: waits on the device's eventfds (queue
//! notifications, and the rate limiter's timerfd of a metered queue) and
//! hands each one that fired to the device's handler, until the device
//! stops it. A worker can also be paused between two handler runs and
//! resumed with everything it holds (a snapshot pauses every device so
//! that nothing writes guest memory while it is saved).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::rate_limiter::SharedRateLimiter;
use crate::seccomp::{self, ThreadKind};

pub struct Worker {
    /// Written to make the body return: to stop, or to pause.
    kill: EventFd,
    gate: Arc<Gate>,
    handle: Option<JoinHandle<()>>,
}

/// What the worker thread does when its body returns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// Nothing asked: the body ended by itself (its poll failed).
    #[default]
    Run,
    Pause,
    Stop,
}

#[derive(Default)]
struct GateState {
    order: Order,
    /// The thread is parked between two runs of its body.
    parked: bool,
}

/// Orders from the device to its worker thread, and the thread's answer.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

/// How long a pause may wait for a handler run to end: a handler does a
/// bounded amount of work (one queue's pending requests).
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("the device worker did not pause within {PAUSE_TIMEOUT:?}")]
pub struct PauseTimeout;

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the thread when its body returned: true to run the body
    /// again, false to end the thread. `ordered`: the kill eventfd had
    /// been written, i.e. the body returned because it was told to (a
    /// pause, or one given up on), not by itself.
    fn after_body(&self, ordered: bool) -> bool {
        let mut state = self.lock();
        match state.order {
            Order::Stop => return false,
            Order::Run => return ordered,
            Order::Pause => {}
        }
        state.parked = true;
        self.changed.notify_all();
        while state.order == Order::Pause {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked = false;
        state.order == Order::Run
    }
}

impl Worker {
    /// Starts a thread that calls `handler(i)` whenever `events[i]` fires.
    pub fn spawn<F>(
        name: &str,
        kind: ThreadKind,
        events: Vec<EventFd>,
        mut handler: F,
    ) -> std::io::Result<Self>
    where
        F: FnMut(usize) + Send + 'static,
    {
        Self::spawn_loop(name, kind, move |kill| {
            let mut fds: Vec<RawFd> = vec![kill];
            fds.extend(events.iter().map(|e| e.as_raw_fd()));
            while let Some(ready) = wait(&fds) {
                if ready[0] {
                    return;
                }
                for (index, event) in events.iter().enumerate() {
                    if ready[index + 1] {
                        // Draining resets the counter; the handler then
                        // processes everything pending, so coalesced
                        // notifications lose nothing.
                        let _ = event.read();
                        handler(index);
                    }
                }
            }
        })
    }

    /// Starts a thread for a device with one queue whose requests
    /// `limiter` meters: `handler()` runs when the queue is notified and
    /// when the limiter's timer ends a block, so a queue the limiter
    /// stopped is processed again (see [`crate::rate_limiter`]).
    pub fn spawn_metered<F>(
        name: &str,
        kind: ThreadKind,
        notify: EventFd,
        limiter: SharedRateLimiter,
        mut handler: F,
    ) -> std::io::Result<Self>
    where
        F: FnMut() + Send + 'static,
    {
        Self::spawn_loop(name, kind, move |kill| {
            let fds = [kill, notify.as_raw_fd(), limiter.timer_fd()];
            while let Some(ready) = wait(&fds) {
                if ready[0] {
                    return;
                }
                let mut run = false;
                if ready[1] {
                    // As in `spawn`: the handler processes everything
                    // pending (or stops at once while the limiter blocks).
                    let _ = notify.read();
                    run = true;
                }
                if ready[2] {
                    run |= limiter.on_timer();
                }
                if run {
                    handler();
                }
            }
        })
    }

    /// Starts a thread running `body`, which must return once the fd it is
    /// given becomes readable: that is how [`Worker::stop`] ends it. For
    /// devices whose set of fds to wait on changes (a TAP is only worth
    /// reading while the guest has buffers for it).
    ///
    /// The thread installs `kind`'s seccomp filter before anything else
    /// (see [`crate::seccomp`]); it is created through the seccomp module,
    /// which decides which thread is its parent.
    ///
    /// The body is run again after a pause ([`Worker::pause`] makes it
    /// return the same way), so what it holds between runs lives in its
    /// captures.
    pub fn spawn_loop<F>(name: &str, kind: ThreadKind, mut body: F) -> std::io::Result<Self>
    where
        F: FnMut(RawFd) + Send + 'static,
    {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let kill_fd = kill.try_clone()?;
        let gate = Arc::new(Gate::default());
        let thread_gate = gate.clone();
        let handle = seccomp::spawn(name, move || {
            seccomp::install_or_exit(kind);
            loop {
                body(kill_fd.as_raw_fd());
                // The write that ended the body, if one did.
                let ordered = kill_fd.read().is_ok();
                if !thread_gate.after_body(ordered) {
                    return;
                }
            }
        })?;
        Ok(Self {
            kill,
            gate,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        self.gate.lock().order = Order::Stop;
        self.gate.changed.notify_all();
        let _ = self.kill.write(1);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }

    /// Parks the thread between two handler runs, holding whatever it
    /// holds, until [`Worker::resume`]. A thread that already ended counts
    /// as paused.
    pub fn pause(&self) -> Result<(), PauseTimeout> {
        let Some(handle) = &self.handle else {
            return Ok(());
        };
        let mut state = self.gate.lock();
        state.order = Order::Pause;
        let _ = self.kill.write(1);
        let deadline = std::time::Instant::now() + PAUSE_TIMEOUT;
        while !state.parked && !handle.is_finished() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                // The body returns when its handler is done, and runs
                // again: the pause is given up, not the device.
                state.order = Order::Run;
                self.gate.changed.notify_all();
                return Err(PauseTimeout);
            }
            // Woken by the thread parking; a thread that ended instead
            // is seen at the next wake-up.
            let wait = left.min(Duration::from_millis(10));
            state = self
                .gate
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets a paused thread go on where it stopped.
    pub fn resume(&self) {
        let mut state = self.gate.lock();
        if state.order == Order::Pause {
            state.order = Order::Run;
            self.gate.changed.notify_all();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Blocks until at least one fd is readable; None if polling itself fails.
pub fn wait(fds: &[RawFd]) -> Option<Vec<bool>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pollfds` is a valid array of `pollfds.len()` entries.
        let n = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, -1) };
        if n > 0 {
            return Some(
                pollfds
                    .iter()
                    .map(|p| p.revents & libc::POLLIN != 0)
                    .collect(),
            );
        }
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn handler_runs_for_the_event_that_fired_and_stop_joins() {
        let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let b = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = channel();
        let mut worker = Worker::spawn(
            "test-worker",
            ThreadKind::Rng,
            vec![a.try_clone().unwrap(), b.try_clone().unwrap()],
            move |i| tx.send(i).unwrap(),
        )
        .unwrap();
        b.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        a.write(3).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 0);
        worker.stop();
        a.write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_paused_worker_handles_nothing_until_resumed_and_keeps_its_state() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = channel();
        let mut handled = 0u32;
        let mut worker = Worker::spawn(
            "test-pause",
            ThreadKind::Rng,
            vec![event.try_clone().unwrap()],
            move |_| {
                handled += 1;
                tx.send(handled).unwrap();
            },
        )
        .unwrap();
        event.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        worker.pause().unwrap();
        event.write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        // A second pause of a paused worker is immediate.
        worker.pause().unwrap();
        worker.resume();
        // The notification that came while paused is handled, and the
        // handler's count goes on from where it was.
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 2);
        worker.pause().unwrap();
        // Stopping a paused worker ends it.
        worker.stop();
        event.write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    }

    #[test]
    fn a_worker_whose_body_ended_by_itself_ends() {
        let (tx, rx) = channel();
        let mut runs = 0;
        let worker = Worker::spawn_loop("test-ends", ThreadKind::Rng, move |_kill| {
            runs += 1;
            tx.send(runs).unwrap();
        })
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        // Pausing a finished worker does not wait.
        worker.pause().unwrap();
    }

    #[test]
    fn a_metered_worker_runs_again_when_its_limiter_unblocks() {
        use crate::vmm_config::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // One op per 50 ms.
        let limiter = SharedRateLimiter::from_config(Some(&RateLimiterConfig {
            bandwidth: None,
            ops: Some(TokenBucketConfig {
                size: 1,
                one_time_burst: None,
                refill_time: 50,
            }),
        }))
        .unwrap();
        let (tx, rx) = channel();
        let metered = limiter.clone();
        // Each run serves one request, if the limiter lets it.
        let mut worker = Worker::spawn_metered(
            "test-metered",
            ThreadKind::Rng,
            notify.try_clone().unwrap(),
            limiter.clone(),
            move || {
                if metered.consume(1, 0) {
                    tx.send(()).unwrap();
                }
            },
        )
        .unwrap();
        let start = std::time::Instant::now();
        notify.write(1).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // The second request blocks; the timer, not a notification, runs
        // the handler again once the bucket has refilled.
        notify.write(1).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(45));
        worker.stop();
    }
}
