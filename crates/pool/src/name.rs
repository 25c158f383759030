//! Names of pools (and, for the API layer, of VMs): DNS labels, 1 to 63 of
//! `[a-z0-9-]`, starting and ending with a letter or digit. That is what
//! Kubernetes requires of namespace and node names, so a pool or VM name
//! can become one unchanged, and it keeps names safe as cgroup directory
//! names and file names.
//!
//! Pool names are unique among siblings, not globally (as in vSphere): the
//! path from the root ("prod/web") names a pool, and two teams may each
//! have a "web" pool. The root pool is named [`ROOT_NAME`].

use super::error::PoolError;

/// Longest name.
pub const MAX_NAME_LEN: usize = 63;
/// The root pool's name.
pub const ROOT_NAME: &str = "root";

/// How much of a caller's string an error message quotes.
pub const MAX_QUOTED: usize = 64;

/// `s` quoted for an error message, at most [`MAX_QUOTED`] bytes of it: a
/// caller who sends 10 kB of name gets a readable error back, not their
/// input twice (which would not even fit a gRPC status header).
pub fn quoted(s: &str) -> String {
    if s.len() <= MAX_QUOTED {
        return format!("{s:?}");
    }
    let mut end = MAX_QUOTED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}

/// Check that `name` is a DNS label.
pub fn validate_name(name: &str) -> Result<(), PoolError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 63 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("only a-z, 0-9 and '-' are allowed")
    } else if name.starts_with('-') || name.ends_with('-') {
        Some("must start and end with a letter or digit")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(PoolError::InvalidName {
            name: quoted(name),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels_are_accepted() {
        for name in ["a", "web", "prod-1", "0", &"x".repeat(63)] {
            assert!(validate_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn long_input_is_quoted_bounded() {
        assert_eq!(quoted("web"), "\"web\"");
        let long = "é".repeat(5000);
        let q = quoted(&long);
        assert!(q.len() < MAX_QUOTED + 32, "{q}");
        assert!(q.ends_with("… (10000 bytes)"), "{q}");
        let err = validate_name(&long).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn everything_else_is_refused() {
        let long = "x".repeat(64);
        for name in ["", "Web", "a_b", "a.b", "-a", "a-", "a b", "é", &long] {
            assert!(
                matches!(validate_name(name), Err(PoolError::InvalidName { .. })),
                "{name}"
            );
        }
    }
}
