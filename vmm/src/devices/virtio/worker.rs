//! A device's worker thread: waits on the device's eventfds (queue
//! notifications, and the rate limiter's timerfd of a metered queue) and
//! hands each one that fired to the device's handler, until the device
//! stops it.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::rate_limiter::SharedRateLimiter;
use crate::seccomp::{self, ThreadKind};

pub struct Worker {
    kill: EventFd,
    handle: Option<JoinHandle<()>>,
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
    pub fn spawn_loop<F>(name: &str, kind: ThreadKind, body: F) -> std::io::Result<Self>
    where
        F: FnOnce(RawFd) + Send + 'static,
    {
        let kill = EventFd::new(libc::EFD_NONBLOCK)?;
        let kill_fd = kill.try_clone()?;
        let handle = seccomp::spawn(name, move || {
            seccomp::install_or_exit(kind);
            body(kill_fd.as_raw_fd());
        })?;
        Ok(Self {
            kill,
            handle: Some(handle),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.kill.write(1);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
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
