//! The memory reclaim: every few seconds, the balloons of the running
//! overcommitted VMs are read, and where a pool with a memory limit runs
//! short or has room again, their targets are set as
//! [`stratum_pool::reclaim`] decides.
//!
//! It owns nothing durable: a balloon's target lives in its vmm (and a
//! re-adopted vmm keeps it), the readings it shows in a VM's status are
//! the last round's. What a round needs of the managers (the pool tree,
//! which VMs run where, their API sockets) it copies under their read
//! locks, in the agent's lock order, and lets go before it reads a cgroup
//! or asks a vmm anything: a slow or wedged vmm holds up only the round,
//! each of its calls bounded by [`BALLOON_CALL_TIMEOUT`].
//!
//! It refuses to guess: a VM whose vmm does not answer, or whose guest
//! has not reported its memory yet, gives nothing that round; a pool
//! whose cgroup cannot be read is left alone, its VMs' balloons too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Agent;
use stratum_api::proto;
use stratum_pool::reclaim::{plan, BalloonedVm, LimitedPool, ReclaimPolicy};
use stratum_pool::MIB;
use stratum_vm::ApiClient;

/// How long one balloon read or update may take: a vmm answers these from
/// memory at once; one that does not is skipped until the next round.
const BALLOON_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// How the reclaim runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReclaim {
    /// Between rounds; `None`: no reclaim (balloons stay as they are).
    pub interval: Option<Duration>,
    pub policy: ReclaimPolicy,
}

impl Default for MemoryReclaim {
    fn default() -> Self {
        MemoryReclaim {
            interval: Some(DEFAULT_RECLAIM_INTERVAL),
            policy: ReclaimPolicy::default(),
        }
    }
}

/// Two rounds a second apart would read the same guest statistics (the
/// balloon's interval is a second); every two seconds a pool that fills
/// at the nested test host's pace has a round before it reaches its limit.
pub const DEFAULT_RECLAIM_INTERVAL: Duration = Duration::from_secs(2);

/// A running VM with a balloon, as a round sees it.
struct Candidate {
    id: String,
    pid: u32,
    api: ApiClient,
    ceiling_mib: u64,
}

/// A pool with a memory limit, its cgroup, and its subtree's candidates
/// (indexes into the round's candidates).
struct Limited {
    name: String,
    limit_bytes: u64,
    cgroup: PathBuf,
    vms: Vec<usize>,
}

impl Agent {
    /// Starts the reclaim rounds on the current runtime (unless turned
    /// off), each on a blocking thread.
    pub fn spawn_memory_reclaim(self: &Arc<Self>) {
        let Some(interval) = self.shared.config.memory_reclaim.interval else {
            return;
        };
        let agent = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let agent = Arc::clone(&agent);
                if let Err(e) = tokio::task::spawn_blocking(move || agent.reclaim_round()).await {
                    tracing::error!("a memory reclaim round failed: {e}");
                }
            }
        });
    }

    /// One round: read, decide, set.
    fn reclaim_round(&self) {
        let (candidates, mut limited) = self.reclaim_view();
        if candidates.is_empty() {
            self.vms.set_balloons(BTreeMap::new());
            return;
        }
        let readings: Vec<Option<proto::BalloonStatus>> =
            candidates.iter().map(read_balloon).collect();
        self.vms.set_balloons(
            candidates
                .iter()
                .zip(&readings)
                .filter_map(|(vm, r)| r.map(|r| (vm.id.clone(), (vm.pid, r))))
                .collect(),
        );
        // A VM that could not be read takes no part: out of every pool.
        for pool in &mut limited {
            pool.vms.retain(|&i| readings[i].is_some());
        }
        let (pools, unread) = self.pressures(limited);
        let vms: Vec<BalloonedVm> = candidates
            .iter()
            .zip(&readings)
            .map(|(vm, reading)| ballooned(vm, reading.unwrap_or_default()))
            .collect();
        let models: Vec<LimitedPool> = pools.iter().map(|(_, p)| p.clone()).collect();
        let targets = plan(&self.shared.config.memory_reclaim.policy, &models, &vms);
        for (i, target) in targets.into_iter().enumerate() {
            // Under a pool whose memory could not be read, a VM is not
            // under no limit: its balloon stays as it is.
            match target {
                Some(target) if !unread.contains(&i) => {
                    set_target(&candidates[i], &vms[i], target, &pools, i);
                }
                _ => {}
            }
        }
    }

    /// The limited pools that have VMs, with their working sets; and the
    /// VMs of those whose cgroup could not be read.
    fn pressures(&self, limited: Vec<Limited>) -> (Vec<(String, LimitedPool)>, BTreeSet<usize>) {
        let mut pools = Vec::new();
        let mut unread = BTreeSet::new();
        for pool in limited.into_iter().filter(|pool| !pool.vms.is_empty()) {
            match self.working_set(&pool) {
                Some(working_set) => pools.push((
                    pool.name,
                    LimitedPool {
                        limit_bytes: pool.limit_bytes,
                        working_set_bytes: working_set,
                        vms: pool.vms,
                    },
                )),
                None => unread.extend(pool.vms),
            }
        }
        (pools, unread)
    }

    /// The running VMs with balloons and the pools with memory limits,
    /// children before parents, copied under the VMs' and the pools' read
    /// locks.
    fn reclaim_view(&self) -> (Vec<Candidate>, Vec<Limited>) {
        self.vms.with_each(|vms| {
            let state = self.pools.read();
            let mut candidates = Vec::new();
            let mut index = BTreeMap::new();
            for (id, vm) in vms {
                let spec = vm.spec();
                let Some(process) = vm.process.as_ref() else {
                    continue;
                };
                // A VM being snapshotted is paused and its memory being
                // written: its balloon waits for the next round.
                let running = vm.runtime().state == proto::VmState::Running as i32;
                if !running || vm.snapshot_busy || !super::vms::has_balloon(spec) {
                    continue;
                }
                index.insert(id.clone(), candidates.len());
                candidates.push(Candidate {
                    id: id.clone(),
                    pid: process.pid(),
                    api: process.api().clone().with_timeout(BALLOON_CALL_TIMEOUT),
                    ceiling_mib: super::vms::reclaimable_mib(spec),
                });
            }
            let mut limited = Vec::new();
            for pool in state.tree.pools() {
                let Some(limit) = pool.spec().memory.limit else {
                    continue;
                };
                let Ok(cgroup) = super::pools::pool_cgroup_path(&state.tree, pool.id()) else {
                    continue;
                };
                let Ok(subtree) = state.tree.subtree(pool.id()) else {
                    continue;
                };
                let members = subtree
                    .iter()
                    .flat_map(|p| p.workload_ids())
                    .filter_map(|w| index.get(w.as_str()).copied())
                    .collect();
                limited.push(Limited {
                    name: pool.spec().name.clone(),
                    limit_bytes: limit,
                    cgroup,
                    vms: members,
                });
            }
            limited.sort_by_key(|pool| std::cmp::Reverse(pool.cgroup.components().count()));
            (candidates, limited)
        })
    }

    fn working_set(&self, pool: &Limited) -> Option<u64> {
        let read = self
            .shared
            .cgroups
            .open(&pool.cgroup)
            .and_then(|cgroup| cgroup.memory_working_set_bytes());
        match read {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(pool = %pool.name, "memory reclaim: cannot read the pool's memory: {e}");
                None
            }
        }
    }
}

/// The VM's balloon and its guest's memory, or `None` when its vmm did
/// not answer (it may be exiting; the next round sees).
fn read_balloon(vm: &Candidate) -> Option<proto::BalloonStatus> {
    match vm.api.balloon_statistics() {
        Ok(stats) => Some(proto::BalloonStatus {
            target_mib: u64::from(stats.target_mib),
            actual_mib: u64::from(stats.actual_mib),
            guest_available_mib: stats.available_memory.unwrap_or(0) / MIB,
            guest_total_mib: stats.total_memory.unwrap_or(0) / MIB,
        }),
        Err(e) => {
            tracing::debug!(vm = %vm.id, "memory reclaim: no balloon reading: {e}");
            None
        }
    }
}

fn ballooned(vm: &Candidate, reading: proto::BalloonStatus) -> BalloonedVm {
    BalloonedVm {
        ceiling_mib: vm.ceiling_mib,
        target_mib: reading.target_mib,
        actual_mib: reading.actual_mib,
        // 0 is what a guest that has not reported yet shows.
        available_mib: (reading.guest_total_mib > 0).then_some(reading.guest_available_mib),
    }
}

/// Sets the VM's new target and says why, naming the pools it is in.
fn set_target(
    vm: &Candidate,
    before: &BalloonedVm,
    target: u64,
    pools: &[(String, LimitedPool)],
    index: usize,
) {
    let pressure: Vec<String> = pools
        .iter()
        .filter(|(_, pool)| pool.vms.contains(&index))
        .map(|(name, pool)| {
            format!(
                "{name} at {} of {} MiB",
                pool.working_set_bytes / MIB,
                pool.limit_bytes / MIB
            )
        })
        .collect();
    let pressure = if pressure.is_empty() {
        "no limit over it".to_string()
    } else {
        pressure.join(", ")
    };
    let Ok(amount) = u32::try_from(target) else {
        return;
    };
    match vm.api.set_balloon_target(amount) {
        Ok(()) => tracing::info!(
            vm = %vm.id,
            "memory reclaim: balloon {} -> {target} MiB ({pressure})",
            before.target_mib,
        ),
        Err(e) => {
            tracing::warn!(vm = %vm.id, "memory reclaim: cannot set the balloon to {target} MiB: {e}")
        }
    }
}
