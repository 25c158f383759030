//! MMDS session tokens: what `PUT /latest/api/token` hands the guest and
//! V2 requires on every GET.
//!
//! A token is 24 bytes from the kernel's random source, in hex, kept here
//! with its expiry (the monotonic clock): unlike Firecracker's, which
//! encrypt their expiry and are kept nowhere, ours are looked up. At most
//! [`MAX_TOKENS`] live at once; issuing one more first forgets the expired
//! ones, then the one closest to expiring.

use std::collections::HashMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// The shortest and longest lifetime a guest may ask for, in seconds.
pub const MIN_TTL_SECONDS: u32 = 1;
pub const MAX_TTL_SECONDS: u32 = 21_600;
/// The path of the token request.
pub const TOKEN_PATH: &str = "/latest/api/token";
/// The most tokens alive at once.
pub const MAX_TOKENS: usize = 1024;
/// Random bytes per token.
const TOKEN_BYTES: usize = 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    // Firecracker's words.
    #[error(
        "Invalid time to live value provided for token: {0}. Please provide a value between \
         {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}."
    )]
    InvalidTtl(u32),
    #[error("Failed to generate a token: {0}")]
    Random(String),
}

#[derive(Debug, Default)]
pub struct TokenAuthority {
    /// Token to expiry.
    tokens: HashMap<String, Instant>,
}

impl TokenAuthority {
    /// A new token valid for `ttl_seconds`.
    pub fn issue(&mut self, ttl_seconds: u32) -> Result<String, Error> {
        self.issue_at(ttl_seconds, Instant::now())
    }

    fn issue_at(&mut self, ttl_seconds: u32, now: Instant) -> Result<String, Error> {
        if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(Error::InvalidTtl(ttl_seconds));
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::getrandom(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
        let token = bytes.iter().fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        });
        if self.tokens.len() >= MAX_TOKENS {
            self.tokens.retain(|_, expiry| *expiry > now);
        }
        if self.tokens.len() >= MAX_TOKENS {
            let soonest = self
                .tokens
                .iter()
                .min_by_key(|(_, expiry)| **expiry)
                .map(|(token, _)| token.clone());
            if let Some(soonest) = soonest {
                self.tokens.remove(&soonest);
            }
        }
        let expiry = now + Duration::from_secs(u64::from(ttl_seconds));
        self.tokens.insert(token.clone(), expiry);
        Ok(token)
    }

    /// Whether `token` was issued here and has not expired.
    pub fn is_valid(&self, token: &str) -> bool {
        self.is_valid_at(token, Instant::now())
    }

    fn is_valid_at(&self, token: &str, now: Instant) -> bool {
        self.tokens.get(token).is_some_and(|expiry| *expiry > now)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_expire() {
        let mut authority = TokenAuthority::default();
        let now = Instant::now();
        let a = authority.issue_at(1, now).unwrap();
        let b = authority.issue_at(60, now).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(authority.is_valid_at(&a, now));
        assert!(authority.is_valid_at(&a, now + Duration::from_millis(999)));
        assert!(!authority.is_valid_at(&a, now + Duration::from_secs(1)));
        assert!(authority.is_valid_at(&b, now + Duration::from_secs(59)));
        assert!(!authority.is_valid_at("nope", now));
        assert!(!authority.is_valid_at("", now));
    }

    #[test]
    fn ttl_bounds() {
        let mut authority = TokenAuthority::default();
        assert_eq!(authority.issue(0), Err(Error::InvalidTtl(0)));
        assert_eq!(authority.issue(21_601), Err(Error::InvalidTtl(21_601)));
        assert_eq!(
            Error::InvalidTtl(0).to_string(),
            "Invalid time to live value provided for token: 0. Please provide a value between 1 \
             and 21600."
        );
        authority.issue(1).unwrap();
        authority.issue(21_600).unwrap();
    }

    #[test]
    fn the_number_of_tokens_is_bounded() {
        let mut authority = TokenAuthority::default();
        let now = Instant::now();
        let first = authority.issue_at(10, now).unwrap();
        let long = authority.issue_at(1000, now).unwrap();
        for _ in 0..MAX_TOKENS + 10 {
            authority.issue_at(100, now).unwrap();
        }
        assert_eq!(authority.len(), MAX_TOKENS);
        assert!(
            !authority.is_valid_at(&first, now),
            "the soonest to expire went"
        );
        assert!(authority.is_valid_at(&long, now));
        // Expired ones go first.
        let later = now + Duration::from_secs(200);
        authority.issue_at(5, later).unwrap();
        assert_eq!(authority.len(), 2, "the long one and the new one");
        assert!(authority.is_valid_at(&long, later));
    }
}
