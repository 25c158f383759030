//! Restart policy: whether, and after how long, the agent starts an exited
//! container again. A pure function of the policy, how the container
//! ended and its restart history, so it is tested without processes.
//!
//! Semantics as Kubernetes': `Never`; `OnFailure` restarts on a non-zero
//! exit, a signal, an OOM kill or an unknown status (a container whose end
//! the agent could not observe is not known to have succeeded); `Always`
//! restarts any exit. A stop the operator asked for is never undone.
//! Back-off doubles from 10 s up to 5 min (kubelet's CrashLoopBackOff) and
//! starts over once a container ran for 10 min.

use std::time::Duration;

/// First restart delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// Longest restart delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A run this long resets the back-off.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// When to restart an exited container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Never.
    #[default]
    Never,
    /// When it failed (see module docs).
    OnFailure,
    /// Whenever it exits.
    Always,
}

/// How the container ended, as far as the restart decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitFacts {
    /// Exit code (128 + signal for a signal); `None` if unknown.
    pub exit_code: Option<i32>,
    /// The OOM killer struck.
    pub oom_killed: bool,
    /// The agent stopped it on request (stop/remove).
    pub stop_requested: bool,
    /// How long it ran.
    pub ran_for: Duration,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Leave it exited.
    Stay,
    /// Start it again after `delay`; `restart_count` is the count to store
    /// for the next decision.
    Restart { delay: Duration, restart_count: u32 },
}

/// Decides for a container that exited with `facts`, restarted
/// `restart_count` times in a row before.
pub fn decide(policy: RestartPolicy, facts: &ExitFacts, restart_count: u32) -> RestartDecision {
    if facts.stop_requested {
        return RestartDecision::Stay;
    }
    let failed = facts.oom_killed || facts.exit_code != Some(0);
    let restart = match policy {
        RestartPolicy::Never => false,
        RestartPolicy::OnFailure => failed,
        RestartPolicy::Always => true,
    };
    if !restart {
        return RestartDecision::Stay;
    }
    let previous = if facts.ran_for >= BACKOFF_RESET_AFTER {
        0
    } else {
        restart_count
    };
    RestartDecision::Restart {
        delay: backoff(previous),
        restart_count: previous.saturating_add(1),
    }
}

/// Delay before restart number `previous + 1`: 10 s × 2^previous, ≤ 5 min.
pub fn backoff(previous: u32) -> Duration {
    let factor = 1u32.checked_shl(previous.min(16)).unwrap_or(u32::MAX);
    BACKOFF_INITIAL.saturating_mul(factor).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(code: Option<i32>) -> ExitFacts {
        ExitFacts {
            exit_code: code,
            oom_killed: false,
            stop_requested: false,
            ran_for: Duration::from_secs(1),
        }
    }

    fn restarts(policy: RestartPolicy, f: &ExitFacts) -> bool {
        matches!(decide(policy, f, 0), RestartDecision::Restart { .. })
    }

    #[test]
    fn runtime_restart_policy_table() {
        let ok = facts(Some(0));
        let failed = facts(Some(1));
        let unknown = facts(None);
        let oom = ExitFacts {
            oom_killed: true,
            ..facts(Some(137))
        };
        assert!(!restarts(RestartPolicy::Never, &failed));
        assert!(!restarts(RestartPolicy::Never, &oom));
        assert!(!restarts(RestartPolicy::OnFailure, &ok));
        assert!(restarts(RestartPolicy::OnFailure, &failed));
        assert!(restarts(RestartPolicy::OnFailure, &oom));
        assert!(restarts(RestartPolicy::OnFailure, &unknown));
        assert!(restarts(RestartPolicy::Always, &ok));
        assert!(restarts(RestartPolicy::Always, &failed));
    }

    #[test]
    fn runtime_restart_never_after_requested_stop() {
        let stopped = ExitFacts {
            stop_requested: true,
            ..facts(Some(143))
        };
        for policy in [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ] {
            assert_eq!(decide(policy, &stopped, 0), RestartDecision::Stay);
        }
    }

    #[test]
    fn runtime_restart_backoff_doubles_caps_and_resets() {
        let f = facts(Some(1));
        assert_eq!(
            decide(RestartPolicy::Always, &f, 0),
            RestartDecision::Restart {
                delay: Duration::from_secs(10),
                restart_count: 1
            }
        );
        assert_eq!(
            decide(RestartPolicy::Always, &f, 3),
            RestartDecision::Restart {
                delay: Duration::from_secs(80),
                restart_count: 4
            }
        );
        assert_eq!(backoff(5), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        let long_run = ExitFacts {
            ran_for: BACKOFF_RESET_AFTER,
            ..f
        };
        assert_eq!(
            decide(RestartPolicy::Always, &long_run, 7),
            RestartDecision::Restart {
                delay: BACKOFF_INITIAL,
                restart_count: 1
            }
        );
    }
}
