//! Pids whose exit status one owner collects: the orphan reaper keeps off.
//!
//! The agent is a child subreaper (see `stratum_runtime::reaper`), so it
//! inherits processes it did not fork: container inits when the OCI
//! runtime exits, and jailed `vmm`s when their jailer exits. An orphan
//! reaper collects zombies nobody waits for; a process with an owner that
//! waits on a pidfd for its status (a container's exit watch, a
//! `VmProcess`) must not have that status taken from under it. Owners
//! register here for as long as they wait ([`Watched`]); the reaper asks
//! [`is_watched`].

use std::collections::HashMap;
use std::sync::Mutex;

/// Registered pids, each with how many owners hold it.
static WATCHED: Mutex<Option<HashMap<u32, usize>>> = Mutex::new(None);

/// A registration of one pid, removed when dropped.
#[derive(Debug)]
pub struct Watched {
    pid: u32,
}

impl Watched {
    /// Registers `pid` until the returned guard drops.
    pub fn new(pid: u32) -> Watched {
        let mut guard = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        *guard
            .get_or_insert_with(HashMap::new)
            .entry(pid)
            .or_default() += 1;
        Watched { pid }
    }

    /// The registered pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut guard = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = guard.as_mut() {
            if let Some(count) = set.get_mut(&self.pid) {
                *count -= 1;
                if *count == 0 {
                    set.remove(&self.pid);
                }
            }
        }
    }
}

/// Whether some owner waits for `pid`.
pub fn is_watched(pid: u32) -> bool {
    let guard = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().is_some_and(|set| set.contains_key(&pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_is_watched_while_any_registration_lives() {
        let pid = u32::MAX - 7;
        assert!(!is_watched(pid));
        let first = Watched::new(pid);
        let second = Watched::new(pid);
        drop(first);
        assert!(is_watched(pid));
        drop(second);
        assert!(!is_watched(pid));
    }
}
