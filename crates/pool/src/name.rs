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
            name: name.to_string(),
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
