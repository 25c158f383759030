//! Firecracker's `RateLimiter` and `TokenBucket` API objects, as `PUT` and
//! `PATCH` of drives, network interfaces and the entropy device carry them:
//!
//! ```json
//! {"bandwidth": {"size": 4194304, "one_time_burst": 0, "refill_time": 1000},
//!  "ops": {"size": 100, "refill_time": 1000}}
//! ```
//!
//! `size` tokens (bytes, or operations) refill from empty to full in
//! `refill_time` milliseconds; `one_time_burst` tokens more are there once,
//! at the start. A bucket with `size` 0 or `refill_time` 0 is off, as in
//! Firecracker; a missing bucket is off too. What this adds to Firecracker:
//! unknown fields are refused in a bucket as well as in the limiter (a
//! misspelt `one_time_burst` is not silently dropped), and a `refill_time`
//! beyond a year is an error rather than, past what fits in nanoseconds, a
//! bucket Firecracker silently turns off. The live side is
//! [`crate::rate_limiter`].

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::rate_limiter::bucket::{BucketError, TokenBucket};

/// Firecracker's `TokenBucket`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Tokens available once, on top of `size`, that do not refill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds the bucket takes to refill from empty to full.
    pub refill_time: u64,
}

impl TokenBucketConfig {
    /// Whether this bucket limits anything (a non-zero size and refill time).
    pub fn is_enabled(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }

    /// The live bucket, full as of `now`; None for a bucket that is off.
    pub fn bucket(&self, now: Instant) -> Result<Option<TokenBucket>, BucketError> {
        TokenBucket::new(
            self.size,
            self.one_time_burst.unwrap_or(0),
            self.refill_time,
            now,
        )
    }
}

/// Firecracker's `RateLimiter`: a bandwidth bucket (bytes) and an ops
/// bucket (requests), each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// A bucket that cannot be built, and which one it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{bucket}: {error}")]
pub struct ConfigError {
    /// "bandwidth" or "ops".
    pub bucket: &'static str,
    pub error: BucketError,
}

impl RateLimiterConfig {
    /// Checks both buckets as they will be built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let now = Instant::now();
        for (bucket, config) in self.buckets() {
            if let Some(config) = config {
                config
                    .bucket(now)
                    .map_err(|error| ConfigError { bucket, error })?;
            }
        }
        Ok(())
    }

    /// Whether any bucket limits anything.
    pub fn is_enabled(&self) -> bool {
        self.buckets()
            .iter()
            .any(|(_, b)| b.is_some_and(|b| b.is_enabled()))
    }

    /// This limiter with buckets that are off left out, or None if both
    /// are: what `GET /vm/config` shows, as Firecracker does.
    pub fn into_option(self) -> Option<RateLimiterConfig> {
        let keep = |b: Option<TokenBucketConfig>| b.filter(TokenBucketConfig::is_enabled);
        let config = RateLimiterConfig {
            bandwidth: keep(self.bandwidth),
            ops: keep(self.ops),
        };
        config.is_enabled().then_some(config)
    }

    /// The configuration after a `PATCH` with `update`: each bucket the
    /// update names is replaced (a bucket that is off removes it), the
    /// others stay as they were.
    pub fn patched(current: Option<RateLimiterConfig>, update: &RateLimiterConfig) -> Option<Self> {
        let current = current.unwrap_or_default();
        RateLimiterConfig {
            bandwidth: update.bandwidth.or(current.bandwidth),
            ops: update.ops.or(current.ops),
        }
        .into_option()
    }

    fn buckets(&self) -> [(&'static str, Option<TokenBucketConfig>); 2] {
        [("bandwidth", self.bandwidth), ("ops", self.ops)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limiter::bucket::MAX_REFILL_TIME_MS;

    fn parse(json: &str) -> Result<RateLimiterConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    fn bucket(size: u64, refill_time: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        }
    }

    #[test]
    fn firecracker_bodies_are_accepted() {
        let full = parse(
            r#"{"bandwidth": {"size": 4194304, "one_time_burst": 1048576, "refill_time": 1000},
                "ops": {"size": 100, "refill_time": 500}}"#,
        )
        .unwrap();
        assert_eq!(
            full.bandwidth,
            Some(TokenBucketConfig {
                size: 4 << 20,
                one_time_burst: Some(1 << 20),
                refill_time: 1000
            })
        );
        assert_eq!(full.ops, Some(bucket(100, 500)));
        assert_eq!(full.validate(), Ok(()));
        assert!(full.is_enabled());
        // Either bucket alone, none, nulls, and a bucket that is off.
        for json in [
            r#"{"ops": {"size": 1, "refill_time": 1}}"#,
            r#"{"bandwidth": {"size": 1, "refill_time": 1, "one_time_burst": null}}"#,
            r#"{}"#,
            r#"{"bandwidth": null, "ops": null}"#,
            r#"{"bandwidth": {"size": 0, "refill_time": 100}}"#,
            r#"{"bandwidth": {"size": 18446744073709551615, "refill_time": 1,
                "one_time_burst": 18446744073709551615}}"#,
        ] {
            let config = parse(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(config.validate(), Ok(()), "{json}");
        }
        assert!(!parse(r#"{"bandwidth": {"size": 0, "refill_time": 100}}"#)
            .unwrap()
            .is_enabled());
        // What GET /vm/config writes back parses to the same.
        let text = serde_json::to_string(&full).unwrap();
        assert_eq!(parse(&text), Ok(full));
        assert_eq!(
            serde_json::to_string(&parse(r#"{"ops": {"size": 1, "refill_time": 2}}"#).unwrap())
                .unwrap(),
            r#"{"ops":{"size":1,"refill_time":2}}"#
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for (json, needle) in [
            (
                r#"{"bandwidth": {"size": 1}}"#,
                "missing field `refill_time`",
            ),
            (
                r#"{"bandwidth": {"refill_time": 1}}"#,
                "missing field `size`",
            ),
            (
                r#"{"bandwith": {"size": 1, "refill_time": 1}}"#,
                "unknown field `bandwith`",
            ),
            (
                r#"{"ops": {"size": 1, "refill_time": 1, "one_time_brust": 5}}"#,
                "unknown field `one_time_brust`",
            ),
            (
                r#"{"ops": {"size": -1, "refill_time": 1}}"#,
                "invalid value",
            ),
            (
                r#"{"ops": {"size": 1.5, "refill_time": 1}}"#,
                "invalid type",
            ),
            (
                r#"{"ops": {"size": "1", "refill_time": 1}}"#,
                "invalid type",
            ),
            (
                r#"{"ops": {"size": 18446744073709551616, "refill_time": 1}}"#,
                "",
            ),
            (r#"{"ops": 5}"#, "invalid type"),
            (r#""ops""#, "invalid type"),
        ] {
            let error = parse(json).expect_err(json);
            assert!(error.contains(needle), "{json}: {error}");
        }
    }

    #[test]
    fn absurd_refill_times_are_refused_naming_the_bucket() {
        let config = RateLimiterConfig {
            bandwidth: Some(bucket(1, 1)),
            ops: Some(bucket(1, u64::MAX)),
        };
        let error = config.validate().unwrap_err();
        assert_eq!(error.bucket, "ops");
        assert_eq!(error.error, BucketError::RefillTimeTooLong(u64::MAX));
        let text = error.to_string();
        assert!(
            text.starts_with("ops: refill_time 18446744073709551615 ms"),
            "{text}"
        );
        let config = RateLimiterConfig {
            bandwidth: Some(bucket(1, MAX_REFILL_TIME_MS + 1)),
            ops: None,
        };
        assert_eq!(config.validate().unwrap_err().bucket, "bandwidth");
    }

    #[test]
    fn patches_replace_the_buckets_they_name() {
        let both = RateLimiterConfig {
            bandwidth: Some(bucket(100, 1000)),
            ops: Some(bucket(10, 1000)),
        };
        let new_ops = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(20, 500)),
        };
        assert_eq!(
            RateLimiterConfig::patched(Some(both), &new_ops),
            Some(RateLimiterConfig {
                bandwidth: Some(bucket(100, 1000)),
                ops: Some(bucket(20, 500)),
            })
        );
        let ops_off = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(0, 0)),
        };
        assert_eq!(
            RateLimiterConfig::patched(Some(both), &ops_off),
            Some(RateLimiterConfig {
                bandwidth: Some(bucket(100, 1000)),
                ops: None,
            })
        );
        let all_off = RateLimiterConfig {
            bandwidth: Some(bucket(0, 1)),
            ops: Some(bucket(1, 0)),
        };
        assert_eq!(RateLimiterConfig::patched(Some(both), &all_off), None);
        assert_eq!(RateLimiterConfig::patched(None, &new_ops), Some(new_ops));
        assert_eq!(
            RateLimiterConfig::patched(Some(both), &RateLimiterConfig::default()),
            Some(both)
        );
    }
}
