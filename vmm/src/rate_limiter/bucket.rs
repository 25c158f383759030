//! One token bucket: `size` tokens that refill from empty to full in
//! `refill_time` milliseconds, plus a one-time burst that never refills.
//!
//! The bucket is pure arithmetic over a time the caller passes in, so its
//! behaviour over seconds is tested in microseconds. All of it is integer
//! arithmetic in 128 bits: a size, burst or request of up to `u64::MAX`
//! tokens neither overflows nor loses a token to rounding.
//!
//! **Requests larger than the bucket.** A request for more tokens than the
//! bucket holds could never be served by a bucket that only lends what it
//! has, and the device would stall on it forever. Such a request waits until
//! the bucket is full (burst included), then goes through and leaves the
//! bucket in debt by the difference; the next request waits until the
//! refill has paid the debt back and brought what it needs. Over time the
//! rate is exactly `size / refill_time`; the only excess is the part of one
//! request above `size`, paid back before anything else passes. Firecracker
//! does the same in effect (it lets the request through and blocks the
//! limiter for as long as the surplus takes to refill).

use std::time::{Duration, Instant};

const NANOS_PER_MILLI: u128 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The longest `refill_time` accepted, in milliseconds: one year. A longer
/// one is certainly a mistake (or a unit confusion), and is refused rather
/// than turned into a bucket that never refills in the VM's lifetime.
pub const MAX_REFILL_TIME_MS: u64 = 365 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    #[error("refill_time {0} ms is longer than the {MAX_REFILL_TIME_MS} ms (one year) allowed")]
    RefillTimeTooLong(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_time_ms: u64,
    initial_burst: u64,
    /// What is left of the one-time burst: spent before the budget, never
    /// refilled.
    burst: u64,
    /// Tokens in the bucket, at most `size`. Negative after a request
    /// larger than the bucket: a debt the refill pays back first.
    budget: i128,
    /// The instant up to which the refill has been credited.
    refilled_at: Instant,
    /// The refill since then that is not a whole token yet, in
    /// token-nanoseconds (elapsed time times `size`; a token is
    /// `refill_ns` of them): carried over, so frequent refills lose
    /// nothing to rounding.
    carry: u128,
}

impl TokenBucket {
    /// A full bucket, or None if `size` or `refill_time_ms` is 0, which
    /// turns this bucket off (as in Firecracker).
    pub fn new(
        size: u64,
        one_time_burst: u64,
        refill_time_ms: u64,
        now: Instant,
    ) -> Result<Option<Self>, BucketError> {
        if refill_time_ms > MAX_REFILL_TIME_MS {
            return Err(BucketError::RefillTimeTooLong(refill_time_ms));
        }
        if size == 0 || refill_time_ms == 0 {
            return Ok(None);
        }
        Ok(Some(Self {
            size,
            refill_time_ms,
            initial_burst: one_time_burst,
            burst: one_time_burst,
            budget: i128::from(size),
            refilled_at: now,
            carry: 0,
        }))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn refill_time_ms(&self) -> u64 {
        self.refill_time_ms
    }

    pub fn initial_one_time_burst(&self) -> u64 {
        self.initial_burst
    }

    /// The one-time burst left.
    pub fn one_time_burst(&self) -> u64 {
        self.burst
    }

    /// Tokens in the bucket as of the last refill, burst excluded (negative
    /// while in debt).
    pub fn budget(&self) -> i128 {
        self.budget
    }

    fn refill_ns(&self) -> u128 {
        u128::from(self.refill_time_ms) * NANOS_PER_MILLI
    }

    /// Nanoseconds from the last refill until the refill has produced
    /// `tokens` (at least 1) more, rounded up.
    fn time_for(&self, tokens: u128) -> u128 {
        // tokens <= 2^66 (a full bucket plus the debt of one u64 request),
        // refill_ns < 2^55: the product fits; saturating all the same. The
        // carry is below refill_ns, so below the product.
        tokens
            .saturating_mul(self.refill_ns())
            .saturating_sub(self.carry)
            .div_ceil(u128::from(self.size))
    }

    /// Credits the tokens the time since the last refill produced.
    fn refill(&mut self, now: Instant) {
        if now <= self.refilled_at {
            return;
        }
        let elapsed = now.duration_since(self.refilled_at).as_nanos();
        self.refilled_at = now;
        let missing = u128::try_from(i128::from(self.size) - self.budget).unwrap_or(0);
        if missing == 0 || elapsed >= self.time_for(missing) {
            self.budget = i128::from(self.size);
            self.carry = 0;
            return;
        }
        // elapsed < time_for(missing), so elapsed * size + carry is below
        // missing * refill_ns + size (< 2^122), and the tokens below
        // `missing`.
        let produced = elapsed
            .saturating_mul(u128::from(self.size))
            .saturating_add(self.carry);
        let tokens = produced / self.refill_ns();
        self.carry = produced % self.refill_ns();
        self.budget += i128::try_from(tokens).unwrap_or(i128::MAX);
    }

    /// How long until the bucket can give `tokens` (after a refill to
    /// `now`); None if it can now. Requests larger than the bucket wait for
    /// a full bucket (see the module doc).
    pub fn wait_for(&mut self, tokens: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        let needed = i128::from(tokens.min(self.size));
        let available = i128::from(self.burst) + self.budget;
        if available >= needed {
            return None;
        }
        // Only the budget refills: the burst is spent before it is ever
        // short.
        let deficit = u128::try_from(needed - available).unwrap_or(u128::MAX);
        Some(duration_from_nanos(self.time_for(deficit)))
    }

    /// Takes `tokens`, from the burst first; the budget may go into debt.
    /// Call after [`Self::wait_for`] said they are there.
    pub fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        self.budget -= i128::from(tokens - from_burst);
    }

    /// [`Self::wait_for`] then [`Self::take`]: whether `tokens` were taken.
    pub fn try_take(&mut self, tokens: u64, now: Instant) -> bool {
        let ready = self.wait_for(tokens, now).is_none();
        if ready {
            self.take(tokens);
        }
        ready
    }
}

/// A `u128` count of nanoseconds as a Duration, saturating far beyond
/// any wait that matters (u64::MAX seconds).
pub fn duration_from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // Below one billion: fits.
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, subsec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn bucket(size: u64, burst: u64, refill_ms: u64, t0: Instant) -> TokenBucket {
        TokenBucket::new(size, burst, refill_ms, t0)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn zero_size_or_refill_time_turns_the_bucket_off() {
        let t0 = Instant::now();
        assert_eq!(TokenBucket::new(0, 10, 1000, t0), Ok(None));
        assert_eq!(TokenBucket::new(10, 10, 0, t0), Ok(None));
        assert_eq!(TokenBucket::new(0, 0, 0, t0), Ok(None));
        assert!(TokenBucket::new(1, 0, 1, t0).unwrap().is_some());
    }

    #[test]
    fn absurd_refill_times_are_refused() {
        let t0 = Instant::now();
        assert!(TokenBucket::new(1, 0, MAX_REFILL_TIME_MS, t0)
            .unwrap()
            .is_some());
        for refill in [MAX_REFILL_TIME_MS + 1, u64::MAX / 1_000_000 + 1, u64::MAX] {
            assert_eq!(
                TokenBucket::new(1, 0, refill, t0),
                Err(BucketError::RefillTimeTooLong(refill))
            );
        }
        // Even with size 0: a typo is an error whether or not the bucket
        // would be on.
        assert!(TokenBucket::new(0, 0, u64::MAX, t0).is_err());
    }

    #[test]
    fn starts_full_and_refills_at_size_per_refill_time() {
        let t0 = Instant::now();
        // 1000 tokens per second.
        let mut b = bucket(1000, 0, 1000, t0);
        assert!(b.try_take(1000, t0));
        assert!(!b.try_take(1, t0));
        // 1 ms later: one token.
        assert_eq!(b.wait_for(2, t0 + MS), Some(MS));
        assert!(b.try_take(1, t0 + MS));
        // Half a second later: 500 more, not 501.
        let t = t0 + 501 * MS;
        assert!(!b.try_take(501, t));
        assert!(b.try_take(500, t));
        assert_eq!(b.budget(), 0);
        // A long idle time fills the bucket, never more.
        let t = t + Duration::from_secs(3600);
        assert_eq!(b.wait_for(1000, t), None);
        assert_eq!(b.budget(), 1000);
    }

    #[test]
    fn fractions_of_a_token_are_carried_over() {
        let t0 = Instant::now();
        // 3 tokens per 10 ms: one per 3.33 ms.
        let mut b = bucket(3, 0, 10, t0);
        assert!(b.try_take(3, t0));
        let mut taken = 0;
        // Polled every 1 ms for a second: exactly 300 tokens.
        for ms in 1..=1000 {
            while b.try_take(1, t0 + ms * MS) {
                taken += 1;
            }
        }
        assert_eq!(taken, 300);
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refills() {
        let t0 = Instant::now();
        let mut b = bucket(100, 250, 1000, t0);
        assert!(b.try_take(300, t0), "burst + full bucket");
        assert_eq!((b.one_time_burst(), b.budget()), (0, 50));
        assert!(b.try_take(50, t0));
        assert!(!b.try_take(1, t0));
        let t = t0 + Duration::from_secs(10);
        assert_eq!(b.wait_for(100, t), None);
        assert_eq!(b.budget(), 100);
        assert_eq!(b.one_time_burst(), 0, "the burst does not come back");
        assert_eq!(b.initial_one_time_burst(), 250);
    }

    #[test]
    fn blocked_until_the_refill_brings_enough() {
        let t0 = Instant::now();
        // 4 MiB per second.
        let mut b = bucket(4 << 20, 0, 1000, t0);
        assert!(b.try_take(4 << 20, t0));
        // 1 MiB takes 250 ms.
        assert_eq!(b.wait_for(1 << 20, t0), Some(Duration::from_millis(250)));
        assert_eq!(
            b.wait_for(1 << 20, t0 + 100 * MS),
            Some(Duration::from_millis(150))
        );
        assert!(!b.try_take(1 << 20, t0 + 249 * MS));
        assert!(b.try_take(1 << 20, t0 + 250 * MS));
    }

    #[test]
    fn oversized_requests_wait_for_a_full_bucket_then_leave_a_debt() {
        let t0 = Instant::now();
        // 1000 tokens per second; a request of 2500.
        let mut b = bucket(1000, 0, 1000, t0);
        assert!(b.try_take(10, t0));
        // Not full: wait for the 10 missing tokens (10 ms), not for 2500.
        assert_eq!(b.wait_for(2500, t0), Some(10 * MS));
        assert!(b.try_take(2500, t0 + 10 * MS));
        assert_eq!(b.budget(), -1500);
        // The next request of 100 waits for the debt and its own 100:
        // 1.6 s.
        let t = t0 + 10 * MS;
        assert_eq!(b.wait_for(100, t), Some(Duration::from_millis(1600)));
        assert!(!b.try_take(100, t + Duration::from_millis(1599)));
        assert!(b.try_take(100, t + Duration::from_millis(1600)));
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let t0 = Instant::now();
        let mut b = bucket(u64::MAX, u64::MAX, MAX_REFILL_TIME_MS, t0);
        assert!(b.try_take(u64::MAX, t0));
        assert!(b.try_take(u64::MAX, t0));
        assert!(!b.try_take(u64::MAX, t0));
        let wait = b.wait_for(u64::MAX, t0).unwrap();
        assert_eq!(wait, Duration::from_millis(MAX_REFILL_TIME_MS));
        // A one-token bucket refilling once a year, asked for u64::MAX.
        let mut b = bucket(1, 0, MAX_REFILL_TIME_MS, t0);
        assert!(b.try_take(u64::MAX, t0));
        let wait = b.wait_for(1, t0).unwrap();
        assert!(wait > Duration::from_secs(1 << 40), "{wait:?}");
        // Time far in the future: credited, no panic.
        let far = t0 + Duration::from_secs(1 << 40);
        assert!(!b.try_take(1, far));
    }

    proptest! {
        /// Whatever the requests and the times they come at, what the
        /// bucket hands out up to time t is at most size + burst + the
        /// refill over t + the part of the last request above size.
        #[test]
        fn never_more_than_the_rate_allows(
            size in 1u64..10_000,
            burst in 0u64..10_000,
            refill_ms in 1u64..5_000,
            steps in prop::collection::vec((0u64..50, 1u64..20_000), 1..200),
        ) {
            let t0 = Instant::now();
            let mut b = bucket(size, burst, refill_ms, t0);
            let mut now_ms = 0u64;
            let mut given: u128 = 0;
            for (advance_ms, tokens) in steps {
                now_ms += advance_ms;
                if b.try_take(tokens, t0 + Duration::from_millis(now_ms)) {
                    given += u128::from(tokens);
                    let refilled =
                        u128::from(now_ms) * u128::from(size) / u128::from(refill_ms);
                    let overshoot = u128::from(tokens.saturating_sub(size));
                    prop_assert!(
                        given <= u128::from(size) + u128::from(burst) + refilled + overshoot,
                        "{given} tokens by {now_ms} ms"
                    );
                }
            }
        }

        /// A request the bucket refuses goes through once its wait is over.
        #[test]
        fn the_wait_is_enough(
            size in 1u64..1_000_000,
            refill_ms in 1u64..10_000,
            first in 1u64..2_000_000,
            second in 1u64..2_000_000,
        ) {
            let t0 = Instant::now();
            let mut b = bucket(size, 0, refill_ms, t0);
            let wait = b.wait_for(first, t0).unwrap_or_default();
            prop_assert!(b.try_take(first, t0 + wait));
            let t1 = t0 + wait;
            match b.wait_for(second, t1) {
                None => prop_assert!(b.try_take(second, t1)),
                Some(wait) => {
                    prop_assert!(wait > Duration::ZERO);
                    prop_assert!(b.try_take(second, t1 + wait));
                }
            }
        }
    }
}
