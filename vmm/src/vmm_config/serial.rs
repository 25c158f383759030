//! Firecracker's `PUT /serial`: where the guest's serial console goes, and
//! how fast it may write there.
//!
//! ```json
//! {"serial_out_path": "/run/vm/console.fifo",
//!  "rate_limiter": {"size": 1024, "refill_time": 1000}}
//! ```
//!
//! Before boot only (after boot it is refused, as in Firecracker). The
//! path is opened at InstanceStart the way Firecracker opens it — created
//! if missing, read-write and non-blocking, so a named pipe nobody reads
//! yet neither holds the start nor fails it — and the guest's console
//! input is no longer the VMM's stdin. What the guest writes past the
//! token bucket, or into a pipe that is full, is dropped: the guest never
//! waits on its console. Where we differ: a regular file is emptied and
//! then bounded as `--console`'s is (it becomes `<path>.1` past
//! `--console-max-bytes`), where Firecracker writes over it from its start
//! without bound.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::rate_limiter::TokenBucketConfig;
use crate::rate_limiter::bucket::BucketError;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("serial_out_path is empty")]
    EmptyPath,
    #[error("the serial rate_limiter is invalid: {0}")]
    RateLimiter(#[from] BucketError),
}

/// The body of `PUT /serial`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SerialBody {
    /// A file, named pipe or device on the host for the guest's console
    /// output; none keeps the console where the command line put it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
    /// A token bucket of bytes the guest may write to its console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucketConfig>,
}

impl SerialBody {
    pub fn validate(&self) -> Result<(), Error> {
        if self
            .serial_out_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(Error::EmptyPath);
        }
        if let Some(bucket) = &self.rate_limiter {
            bucket.bucket(Instant::now())?;
        }
        Ok(())
    }

    /// The bucket that limits the console, if one is on (a bucket of size
    /// or refill time 0 is off, as everywhere else).
    pub fn enabled_rate_limiter(&self) -> Option<TokenBucketConfig> {
        self.rate_limiter.filter(TokenBucketConfig::is_enabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<SerialBody, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn firecracker_bodies_parse() {
        let body = parse(r#"{"serial_out_path": "serial"}"#).unwrap();
        assert_eq!(body.serial_out_path, Some(PathBuf::from("serial")));
        assert_eq!(body.rate_limiter, None);
        let body = parse(
            r#"{"serial_out_path": "serial",
                "rate_limiter": {"size": 1024, "one_time_burst": 65536, "refill_time": 1000}}"#,
        )
        .unwrap();
        assert_eq!(
            body.enabled_rate_limiter(),
            Some(TokenBucketConfig {
                size: 1024,
                one_time_burst: Some(65536),
                refill_time: 1000
            })
        );
        assert!(body.validate().is_ok());
        assert_eq!(parse("{}").unwrap(), SerialBody::default());
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert!(parse(r#"{"serial_out_path": "s", "stdin": true}"#).is_err());
        assert!(parse(r#"{"rate_limiter": {"size": 1, "refil_time": 1}}"#).is_err());
        assert!(parse(r#"{"serial_out_path": 7}"#).is_err());
        let empty = parse(r#"{"serial_out_path": ""}"#).unwrap();
        assert_eq!(empty.validate(), Err(Error::EmptyPath));
        let forever =
            parse(r#"{"rate_limiter": {"size": 1, "refill_time": 99999999999999}}"#).unwrap();
        assert!(matches!(forever.validate(), Err(Error::RateLimiter(_))));
    }

    #[test]
    fn a_bucket_that_is_off_limits_nothing() {
        let off = parse(r#"{"rate_limiter": {"size": 0, "refill_time": 1000}}"#).unwrap();
        assert!(off.validate().is_ok());
        assert_eq!(off.enabled_rate_limiter(), None);
    }
}
