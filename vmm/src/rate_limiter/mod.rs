//! Rate limiters of the virtio devices, as Firecracker has them: each one
//! a bandwidth bucket (bytes) and an ops bucket (requests), either of them
//! off, and a timerfd that wakes the device when a blocked queue may go on.
//!
//! **What it owns.** The live token buckets ([`bucket::TokenBucket`]) of
//! one queue's limiter — a drive's requests, a network interface's
//! received frames or its sent ones, the entropy device's requests — and
//! the timer that ends a block. The API objects (`RateLimiter`,
//! `TokenBucket` in Firecracker's swagger) are
//! [`crate::vmm_config::rate_limiter`]; the devices decide what a request
//! costs and stop their queue when it cannot be paid.
//!
//! **How a device uses it.** Before carrying out a request the device's
//! worker calls [`RateLimiter::consume`] with its cost: one op and its
//! bytes. Both buckets are charged together or not at all. When either
//! lacks the tokens, the limiter arms its timer for the time the refill
//! needs, reports "blocked", and the device puts the request back (the
//! descriptor chain is returned to the available ring; a received frame
//! stays pending) and stops processing that queue. While blocked, every
//! `consume` fails at once. The worker polls [`RateLimiter::timer_fd`] with
//! its other fds; when the timer fires it calls [`RateLimiter::on_timer`]
//! and processes the queue again.
//!
//! **Why a shared limiter.** `PATCH /drives/{id}` and `PATCH
//! /network-interfaces/{id}` change the buckets of a running VM from the
//! API thread, so the worker and the controller share the limiter
//! ([`SharedRateLimiter`]); an update also fires the timer at once if the
//! queue was blocked, so a limiter that was lifted or relaxed takes effect
//! immediately rather than after the old wait. Every drive and interface
//! has a limiter, unlimited when not configured, so it can be limited
//! later, as in Firecracker; an unlimited limiter costs an uncontended lock
//! per request.
//!
//! **What it refuses.** A `refill_time` beyond a year (see
//! [`bucket::MAX_REFILL_TIME_MS`]); nothing else: sizes and bursts up to
//! `u64::MAX` are fine. A request larger than a bucket waits for a full
//! bucket and then goes through, leaving a debt (see [`bucket`]): a device
//! never stalls on a request its limiter can never allow. Nor on a timer
//! that cannot be armed (it never happens with the durations used): the
//! request is let through instead, and the error logged.

pub mod bucket;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use crate::vmm_config::rate_limiter::{ConfigError, RateLimiterConfig, TokenBucketConfig};
use crate::vmm_log;
use bucket::{BucketError, TokenBucket};

/// The shortest timer: a wait of a few microseconds (one small frame at a
/// high rate) is rounded up, so a blocked queue wakes its worker at most a
/// thousand times a second.
pub const MIN_WAIT: Duration = Duration::from_millis(1);
/// The longest timer. Waits are exact, so a timer firing early only means
/// one more check that finds the queue still blocked and re-arms; the cap
/// keeps absurd waits (a one-byte bucket, a huge request) out of the
/// timerfd's arithmetic.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid rate limiter: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot create the rate limiter's timer: {0}")]
    Timer(#[source] std::io::Error),
}

/// A change to one bucket of a running limiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketUpdate {
    /// Leave it as it is.
    Keep,
    /// Turn it off.
    Disable,
    /// Replace it with this (full) bucket.
    Set(TokenBucket),
}

impl BucketUpdate {
    fn from_config(config: Option<&TokenBucketConfig>, now: Instant) -> Result<Self, BucketError> {
        let Some(config) = config else {
            return Ok(BucketUpdate::Keep);
        };
        Ok(match config.bucket(now)? {
            Some(bucket) => BucketUpdate::Set(bucket),
            None => BucketUpdate::Disable,
        })
    }

    fn apply(self, bucket: &mut Option<TokenBucket>) {
        match self {
            BucketUpdate::Keep => {}
            BucketUpdate::Disable => *bucket = None,
            BucketUpdate::Set(new) => *bucket = Some(new),
        }
    }
}

/// A change to a running limiter: what `PATCH` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimiterUpdate {
    pub bandwidth: BucketUpdate,
    pub ops: BucketUpdate,
}

impl RateLimiterUpdate {
    /// The update a `PATCH` body's limiter asks for: each bucket it names
    /// is replaced by a full one (or turned off if its size or refill time
    /// is 0), the others are kept, as in Firecracker.
    pub fn from_config(config: &RateLimiterConfig) -> Result<Self, ConfigError> {
        let now = Instant::now();
        let named = |bucket: &'static str, config: Option<&TokenBucketConfig>| {
            BucketUpdate::from_config(config, now).map_err(|error| ConfigError { bucket, error })
        };
        Ok(Self {
            bandwidth: named("bandwidth", config.bandwidth.as_ref())?,
            ops: named("ops", config.ops.as_ref())?,
        })
    }
}

/// One queue's limiter: two optional buckets and the timer that ends a
/// block.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// A `consume` failed and the timer has not fired (or has not been
    /// handled) since.
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with `config`'s buckets (none: unlimited), full.
    pub fn new(config: &RateLimiterConfig) -> Result<Self, Error> {
        let now = Instant::now();
        let build = |bucket: &'static str, config: Option<TokenBucketConfig>| {
            config
                .map(|c| c.bucket(now))
                .transpose()
                .map(Option::flatten)
                .map_err(|error| ConfigError { bucket, error })
        };
        let bandwidth = build("bandwidth", config.bandwidth)?;
        let ops = build("ops", config.ops)?;
        let timer = TimerFd::new().map_err(|e| Error::Timer(e.into()))?;
        set_nonblocking(&timer).map_err(Error::Timer)?;
        Ok(Self {
            bandwidth,
            ops,
            timer,
            blocked: false,
        })
    }

    /// A limiter that limits nothing (until updated).
    pub fn unlimited() -> Result<Self, Error> {
        Self::new(&RateLimiterConfig::default())
    }

    /// Charges one request of `ops` operations and `bytes` bytes: true if
    /// it may go on. False if the limiter is blocked, or becomes blocked
    /// because a bucket lacks the tokens; nothing is charged then, and the
    /// timer is armed for when they will be there.
    pub fn consume(&mut self, ops: u64, bytes: u64) -> bool {
        self.consume_at(ops, bytes, Instant::now())
    }

    fn consume_at(&mut self, ops: u64, bytes: u64, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        let wait = [(&mut self.bandwidth, bytes), (&mut self.ops, ops)]
            .into_iter()
            .filter_map(|(bucket, tokens)| bucket.as_mut()?.wait_for(tokens, now))
            .max();
        match wait {
            None => {
                if let Some(bucket) = &mut self.bandwidth {
                    bucket.take(bytes);
                }
                if let Some(bucket) = &mut self.ops {
                    bucket.take(ops);
                }
                true
            }
            Some(wait) => {
                let wait = wait.clamp(MIN_WAIT, MAX_WAIT);
                match self.timer.reset(wait, None) {
                    Ok(()) => {
                        self.blocked = true;
                        false
                    }
                    Err(error) => {
                        // Blocking without a timer would stall the queue
                        // for good: let the request through instead.
                        vmm_log!(Error, "cannot arm a rate limiter timer: {error}");
                        true
                    }
                }
            }
        }
    }

    /// Whether a `consume` failed and the timer has not been handled since.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// To call when [`Self::timer_fd`] is readable: true if the limiter is
    /// no longer blocked (the caller then processes its queue again).
    pub fn on_timer(&mut self) -> bool {
        // Non-blocking: a timer re-armed since the poll reads EAGAIN.
        if matches!(self.timer.wait(), Ok(n) if n > 0) {
            self.blocked = false;
        }
        !self.blocked
    }

    /// The fd to poll for POLLIN: readable when a block ends.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Applies `update`. A blocked limiter has its timer fire at once, so
    /// the queue is retried under the new buckets.
    pub fn update(&mut self, update: RateLimiterUpdate) {
        update.bandwidth.apply(&mut self.bandwidth);
        update.ops.apply(&mut self.ops);
        if self.blocked {
            // A zero duration would disarm the timer.
            if let Err(error) = self.timer.reset(Duration::from_nanos(1), None) {
                vmm_log!(Error, "cannot fire a rate limiter timer: {error}");
            }
        }
    }

    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }
}

/// Makes the timer's reads fail with EAGAIN instead of waiting.
pub(crate) fn set_nonblocking(timer: &TimerFd) -> std::io::Result<()> {
    let fd = timer.as_raw_fd();
    // SAFETY: fcntl(F_GETFL/F_SETFL) on a descriptor `timer` owns and keeps
    // open for the call; it reads and writes no memory of ours.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A limiter shared by a device's worker and the controller (which updates
/// it on `PATCH`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedRateLimiter {
    inner: Arc<Mutex<RateLimiter>>,
    /// The timer's fd, which stays open as long as the limiter.
    timer_fd: RawFd,
}

impl SharedRateLimiter {
    pub fn new(limiter: RateLimiter) -> Self {
        let timer_fd = limiter.timer_fd();
        Self {
            inner: Arc::new(Mutex::new(limiter)),
            timer_fd,
        }
    }

    /// A shared limiter built from `config`.
    pub fn from_config(config: Option<&RateLimiterConfig>) -> Result<Self, Error> {
        Ok(Self::new(RateLimiter::new(
            &config.copied().unwrap_or_default(),
        )?))
    }

    /// The limiter. A worker that panicked holding it cannot have left it
    /// inconsistent (every change is one assignment), so a poisoned lock
    /// is used as it is.
    pub fn lock(&self) -> MutexGuard<'_, RateLimiter> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`RateLimiter::consume`].
    pub fn consume(&self, ops: u64, bytes: u64) -> bool {
        self.lock().consume(ops, bytes)
    }

    pub fn is_blocked(&self) -> bool {
        self.lock().is_blocked()
    }

    /// See [`RateLimiter::on_timer`].
    pub fn on_timer(&self) -> bool {
        self.lock().on_timer()
    }

    pub fn timer_fd(&self) -> RawFd {
        self.timer_fd
    }

    /// See [`RateLimiter::update`].
    pub fn update(&self, update: RateLimiterUpdate) {
        self.lock().update(update);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::worker::wait;

    const MS: Duration = Duration::from_millis(1);

    fn config(bandwidth: Option<(u64, u64)>, ops: Option<(u64, u64)>) -> RateLimiterConfig {
        let bucket = |(size, refill_time)| TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        };
        RateLimiterConfig {
            bandwidth: bandwidth.map(bucket),
            ops: ops.map(bucket),
        }
    }

    /// Whether the timer fd becomes readable within `within`.
    fn fires_within(limiter: &RateLimiter, within: Duration) -> bool {
        let mut pollfd = libc::pollfd {
            fd: limiter.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(within.as_millis()).unwrap();
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pollfd, 1, ms) };
        n == 1
    }

    #[test]
    fn unlimited_never_blocks() {
        let mut limiter = RateLimiter::unlimited().unwrap();
        for _ in 0..1000 {
            assert!(limiter.consume(1, u64::MAX));
        }
        assert!(!limiter.is_blocked());
        // Buckets that are off are no buckets.
        let mut off = RateLimiter::new(&config(Some((0, 1000)), Some((10, 0)))).unwrap();
        assert!(off.bandwidth().is_none() && off.ops().is_none());
        assert!(off.consume(1000, 1 << 40));
    }

    #[test]
    fn both_buckets_are_charged_together_or_not_at_all() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(&config(Some((1000, 1000)), Some((10, 1000)))).unwrap();
        assert!(limiter.consume_at(1, 600, t0));
        // Bytes short, ops there: nothing is charged.
        assert!(!limiter.consume_at(1, 600, t0));
        assert!(limiter.is_blocked());
        assert_eq!(limiter.ops().unwrap().budget(), 9);
        assert_eq!(limiter.bandwidth().unwrap().budget(), 400);
        // Blocked: even a request that fits fails until the timer fired.
        assert!(!limiter.consume_at(1, 1, t0 + Duration::from_secs(5)));
    }

    #[test]
    fn blocks_arms_the_timer_and_unblocks_when_it_fires() {
        // 100 ops per second: one per 10 ms.
        let mut limiter = RateLimiter::new(&config(None, Some((100, 1000)))).unwrap();
        let start = Instant::now();
        let mut passed = 0;
        while limiter.consume(1, 0) {
            passed += 1;
        }
        assert_eq!(passed, 100);
        assert!(limiter.is_blocked());
        // Spurious wake-ups change nothing.
        assert!(!limiter.on_timer());
        assert!(fires_within(&limiter, Duration::from_secs(5)));
        assert!(limiter.on_timer());
        assert!(start.elapsed() >= 10 * MS);
        assert!(limiter.consume(1, 0));
    }

    #[test]
    fn an_update_takes_effect_at_once_even_when_blocked() {
        // One op per 10 s: blocked for a long time.
        let mut limiter = RateLimiter::new(&config(None, Some((1, 10_000)))).unwrap();
        assert!(limiter.consume(1, 0));
        assert!(!limiter.consume(1, 0));
        assert!(!fires_within(&limiter, 20 * MS));
        let lift = RateLimiterUpdate::from_config(&config(None, Some((0, 0)))).unwrap();
        assert_eq!(lift.ops, BucketUpdate::Disable);
        assert_eq!(lift.bandwidth, BucketUpdate::Keep);
        limiter.update(lift);
        assert!(
            fires_within(&limiter, Duration::from_secs(5)),
            "fired at once"
        );
        assert!(limiter.on_timer());
        assert!(limiter.ops().is_none());
        assert!(limiter.consume(1000, 0));
        // A new bucket starts full.
        let set = RateLimiterUpdate::from_config(&config(Some((500, 1000)), None)).unwrap();
        limiter.update(set);
        assert!(limiter.consume(1, 500));
        assert!(!limiter.consume(1, 1));
        assert!(limiter.ops().is_none(), "the ops bucket was kept off");
    }

    #[test]
    fn bad_configs_name_their_bucket() {
        let bad = config(Some((1, 1)), Some((1, u64::MAX)));
        let error = RateLimiter::new(&bad).unwrap_err();
        assert!(error.to_string().contains("ops: refill_time"), "{error}");
        let error = RateLimiterUpdate::from_config(&config(Some((1, u64::MAX)), None)).unwrap_err();
        assert_eq!(error.bucket, "bandwidth");
    }

    #[test]
    fn a_shared_limiter_is_polled_like_any_fd() {
        let shared =
            SharedRateLimiter::from_config(Some(&config(Some((1 << 20, 100)), None))).unwrap();
        assert!(shared.consume(1, 1 << 20));
        assert!(!shared.consume(1, 1 << 19));
        let start = Instant::now();
        // Half the bucket refills in 50 ms.
        let ready = wait(&[shared.timer_fd()]).unwrap();
        assert!(ready[0]);
        assert!(shared.on_timer());
        assert!(start.elapsed() >= 40 * MS, "{:?}", start.elapsed());
        assert!(shared.consume(1, 1 << 19));
    }
}
