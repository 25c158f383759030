//! Pausing and resuming the vCPUs.
//!
//! A vCPU thread checks the shared run state before every `KVM_RUN` and
//! parks while the VM is paused. To get a vCPU out of a running guest, the
//! pauser sends its thread a signal, which makes `KVM_RUN` return `EINTR`.
//! A signal that lands just before the thread enters `KVM_RUN` is lost, so
//! the pauser repeats the kick until every vCPU has parked.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// How long a pause may take before it is reported as failed.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
const KICK_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(String),
    #[error("only {parked} of {total} vCPUs stopped within {PAUSE_TIMEOUT:?}")]
    PauseTimeout { parked: usize, total: usize },
}

#[derive(Default)]
struct RunState {
    paused: bool,
    parked: usize,
}

#[derive(Default)]
pub struct VcpuControl {
    state: Mutex<RunState>,
    changed: Condvar,
    /// Mirrors `state.paused` so the vCPU threads' check before each
    /// `KVM_RUN` is one atomic load, not a lock.
    pause_requested: AtomicBool,
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that kicks a vCPU out of `KVM_RUN`; its handler does nothing,
/// the interruption is the point.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick signal's handler, once per process.
pub fn install_kick_handler() -> Result<(), Error> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), on_kick)
            .map_err(|e| Error::Signal(e.to_string()));
    });
    result
}

impl VcpuControl {
    /// Control for vCPUs that start running, or (`paused`) that park before
    /// their first `KVM_RUN` until resumed: a restored VM not yet resumed.
    pub fn new(paused: bool) -> Self {
        let control = Self::default();
        control.lock().paused = paused;
        control.pause_requested.store(paused, Ordering::Release);
        control
    }

    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the VM is to be paused: a vCPU thread that sees it settles
    /// and parks (see `Vcpu::run_loop`).
    pub fn pause_requested(&self) -> bool {
        self.pause_requested.load(Ordering::Acquire)
    }

    /// Called by a vCPU thread before entering the guest: blocks while the
    /// VM is paused.
    pub fn park_while_paused(&self) {
        if !self.pause_requested.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if !state.paused {
            return;
        }
        state.parked += 1;
        self.changed.notify_all();
        while state.paused {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.parked -= 1;
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Stops every vCPU in `threads` and returns once all have parked.
    pub fn pause(&self, threads: &[JoinHandle<()>]) -> Result<(), Error> {
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut state = self.lock();
        state.paused = true;
        self.pause_requested.store(true, Ordering::Release);
        loop {
            let running: Vec<&JoinHandle<()>> =
                threads.iter().filter(|t| !t.is_finished()).collect();
            if state.parked >= running.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let parked = state.parked;
                drop(state);
                self.resume();
                return Err(Error::PauseTimeout {
                    parked,
                    total: running.len(),
                });
            }
            for thread in &running {
                // SAFETY: the thread is alive (not finished) and owned by us;
                // its handler for this signal does nothing.
                unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
            }
            state = self
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    pub fn resume(&self) {
        let mut state = self.lock();
        state.paused = false;
        self.pause_requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    #[test]
    fn pause_parks_busy_threads_and_resume_releases_them() {
        install_kick_handler().unwrap();
        let control = Arc::new(VcpuControl::default());
        let progress = Arc::new(AtomicU64::new(0));
        let threads: Vec<JoinHandle<()>> = (0..2)
            .map(|_| {
                let (control, progress) = (control.clone(), progress.clone());
                std::thread::spawn(move || loop {
                    control.park_while_paused();
                    progress.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(100));
                })
            })
            .collect();
        control.pause(&threads).unwrap();
        assert!(control.is_paused());
        let frozen = progress.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            progress.load(Ordering::SeqCst),
            frozen,
            "no progress while paused"
        );
        control.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            progress.load(Ordering::SeqCst) > frozen,
            "progress after resume"
        );
    }
}
