//! What every manager shares: the configuration, the store's journal, the
//! cgroup hierarchy and the id sequence. Nothing here is a resource's
//! state; each manager keeps its own, behind its own lock.

use std::sync::{Mutex, OnceLock};

use super::config::AgentConfig;
use super::errors::Result;
use crate::state::{Change, Journal, Ticket};
use stratum_cgroup::Hierarchy;

/// Ids reserved in the store at a time: one commit per block instead of
/// one per create.
const ID_BLOCK: u64 = 64;

pub struct Shared {
    pub config: AgentConfig,
    /// Where every record goes, in order, through group commits.
    pub journal: Journal,
    pub cgroups: Hierarchy,
    /// The next id to hand out and the end of the reserved block.
    ids: Mutex<(u64, u64)>,
    /// Every mounted cgroup hierarchy as an OCI runtime sees it, and the
    /// agent root's path there: read from the mounts once (see `cgroups`).
    pub(super) cgroup_map: OnceLock<(stratum_runtime::CgroupMapping, String)>,
}

impl Shared {
    /// `next_id` is the first id the store has not handed out.
    pub fn new(config: AgentConfig, journal: Journal, cgroups: Hierarchy, next_id: u64) -> Self {
        Shared {
            config,
            journal,
            cgroups,
            ids: Mutex::new((next_id, next_id)),
            cgroup_map: OnceLock::new(),
        }
    }

    /// A fresh id (for `pool-N`, `vm-N`, `pod-N`), never handed out
    /// before, even across crashes.
    pub fn next_id(&self) -> Result<u64> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.0 == ids.1 {
            let end = ids.1.saturating_add(ID_BLOCK);
            self.journal.commit([Change::ReserveIdsBelow(end)])?;
            ids.1 = end;
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Queues `changes` for the next group commit. Called under the lock
    /// of the memory they describe, so the store sees changes in the order
    /// memory made them; settle the ticket once the lock is released.
    pub fn stage(&self, changes: impl IntoIterator<Item = Change>) -> Result<Ticket> {
        Ok(self.journal.stage(changes)?)
    }

    /// Waits until `ticket` is durable. Never called under a manager's
    /// lock.
    pub fn settle(&self, ticket: Ticket) -> Result<()> {
        Ok(self.journal.settle(ticket)?)
    }

    /// [`Shared::settle`] for async callers.
    pub async fn settled(&self, ticket: Ticket) -> Result<()> {
        Ok(self.journal.settled(ticket).await?)
    }

    /// Waits until a commit fails; see [`Journal::failed`].
    pub async fn store_failed(&self) -> String {
        self.journal.failed().await
    }

    /// Waits until everything staged so far is durable.
    pub async fn durable_view(&self) -> Result<()> {
        self.settled(self.journal.last_staged()).await
    }
}
