//! Memory reclaim: which VMs' balloons to inflate, and by how much, when
//! a pool with a memory limit runs short, and when to let them down again.
//! Pure: the agent reads the pools' working sets and the balloons'
//! statistics, asks [`plan`], and sets the targets it answers.
//!
//! Why balloons: a VM whose memory reservation is below its configured
//! memory runs overcommitted (see [`workload`](super::workload)). What its
//! guest once touched stays charged to its pool's cgroup though the guest
//! freed it long ago; under the pool's limit, the kernel can then only
//! OOM-kill a vmm. A balloon inflated in the guest takes memory the guest
//! does not use and vmm gives those pages back to the host, as vSphere's
//! balloon driver does when a host's memory runs low.
//!
//! The rules, per pool with a memory limit, on its working set (what is
//! charged less inactive page cache):
//! - at or above [`ReclaimPolicy::high_percent`] of the limit, balloons
//!   inflate until the working set would be at
//!   [`ReclaimPolicy::low_percent`]: what the pool needs is asked of its
//!   running VMs in proportion to what each can give;
//! - a VM gives only what its guest says it has available beyond
//!   [`ReclaimPolicy::guest_headroom_mib`], and never memory it reserved:
//!   its balloon holds at most its memory less its reservation (vSphere
//!   never balloons reserved memory);
//! - a balloon the guest has not yet reached (its driver still inflating,
//!   or deflated on OOM) is not asked for more: its guest's figures are
//!   from before the last target;
//! - below [`ReclaimPolicy::release_percent`] of every limit it is under
//!   (or under none, its pool's limit lifted), a VM's balloon lets out at
//!   most [`ReclaimPolicy::release_step_mib`] a round, and a pool's VMs
//!   together no more than would bring the pool back to the low mark. Between the marks nothing moves, so a pool
//!   does not swing between the two.
//!
//! Refused here: inflating a VM without guest statistics (nothing says
//! what its guest can spare), and any target above what it may give.

/// When to reclaim and how far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimPolicy {
    /// Reclaim starts when a pool's working set reaches this percentage
    /// of its limit.
    pub high_percent: u64,
    /// ... and takes what would bring it down to this percentage.
    pub low_percent: u64,
    /// Below this percentage of every limit over it, a VM's balloon lets
    /// memory back.
    pub release_percent: u64,
    /// What a guest keeps available beyond its balloon, MiB.
    pub guest_headroom_mib: u64,
    /// The most a balloon lets out in one round, MiB.
    pub release_step_mib: u64,
}

impl Default for ReclaimPolicy {
    fn default() -> Self {
        ReclaimPolicy {
            high_percent: 90,
            low_percent: 80,
            release_percent: 70,
            guest_headroom_mib: 32,
            release_step_mib: 64,
        }
    }
}

/// A pool with a memory limit, and the VMs that run in its subtree (as
/// indexes into the VMs given to [`plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitedPool {
    pub limit_bytes: u64,
    pub working_set_bytes: u64,
    pub vms: Vec<usize>,
}

/// A running VM with a balloon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonedVm {
    /// The most its balloon may hold: its memory less its reservation.
    pub ceiling_mib: u64,
    /// What its balloon was asked to hold.
    pub target_mib: u64,
    /// What its guest's driver says the balloon holds.
    pub actual_mib: u64,
    /// Its guest's available memory by its last statistics; `None` before
    /// the guest reported any.
    pub available_mib: Option<u64>,
}

impl BalloonedVm {
    /// The balloon is where it was asked to be (to the MiB: the driver
    /// counts pages, the target is whole MiB).
    fn settled(&self) -> bool {
        self.actual_mib.abs_diff(self.target_mib) <= 1
    }

    /// What it can give beyond its current target, its guest keeping
    /// `headroom_mib` available.
    fn spare_mib(&self, headroom_mib: u64) -> u64 {
        if !self.settled() {
            return 0;
        }
        let available = self
            .available_mib
            .map_or(0, |a| a.saturating_sub(headroom_mib));
        available.min(self.ceiling_mib.saturating_sub(self.target_mib))
    }
}

/// Where a pool stands against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    /// Short: reclaim this many MiB.
    Reclaim(u64),
    Steady,
    /// Room: this many MiB may go back to its VMs.
    Release(u64),
}

fn zone(policy: &ReclaimPolicy, pool: &LimitedPool) -> Zone {
    let mark = |percent: u64| {
        u64::try_from(u128::from(pool.limit_bytes) * u128::from(percent) / 100).unwrap_or(u64::MAX)
    };
    let (high, low, release) = (
        mark(policy.high_percent),
        mark(policy.low_percent),
        mark(policy.release_percent),
    );
    let mib = super::MIB;
    if pool.working_set_bytes >= high {
        Zone::Reclaim((pool.working_set_bytes - low).div_ceil(mib))
    } else if pool.working_set_bytes < release {
        Zone::Release(low.saturating_sub(pool.working_set_bytes) / mib)
    } else {
        Zone::Steady
    }
}

/// The new balloon target of each VM (`None`: leave it). `pools` go
/// children before parents: what a child's VMs gave counts toward what
/// their ancestors need.
pub fn plan(
    policy: &ReclaimPolicy,
    pools: &[LimitedPool],
    vms: &[BalloonedVm],
) -> Vec<Option<u64>> {
    let mut targets: Vec<u64> = vms.iter().map(|vm| vm.target_mib).collect();
    // What each VM can still give this round, shrinking as pools take
    // from it.
    let mut spare: Vec<u64> = vms
        .iter()
        .map(|vm| vm.spare_mib(policy.guest_headroom_mib))
        .collect();
    let zones: Vec<Zone> = pools.iter().map(|p| zone(policy, p)).collect();
    for (pool, zone) in pools.iter().zip(&zones) {
        let Zone::Reclaim(need) = *zone else {
            continue;
        };
        let members = members(pool, vms.len());
        let taken: u64 = members
            .iter()
            .map(|&i| targets[i].saturating_sub(vms[i].target_mib))
            .sum();
        let need = need.saturating_sub(taken);
        let weights: Vec<u64> = members.iter().map(|&i| spare[i]).collect();
        for (&i, share) in members.iter().zip(shares(need, &weights)) {
            targets[i] += share;
            spare[i] -= share;
        }
    }
    release(policy, pools, &zones, vms, &mut targets);
    targets
        .into_iter()
        .zip(vms)
        .map(|(target, vm)| (target != vm.target_mib).then_some(target))
        .collect()
}

/// Lets balloons down where every pool over the VM has room, a step at a
/// time, each pool's VMs together no further than its low mark.
fn release(
    policy: &ReclaimPolicy,
    pools: &[LimitedPool],
    zones: &[Zone],
    vms: &[BalloonedVm],
    targets: &mut [u64],
) {
    let mut room: Vec<Option<u64>> = zones
        .iter()
        .map(|zone| match zone {
            Zone::Release(room) => Some(*room),
            _ => None,
        })
        .collect();
    for (i, vm) in vms.iter().enumerate() {
        if targets[i] != vm.target_mib || vm.target_mib == 0 {
            continue;
        }
        // Under no limit (its pool's was lifted, or it moved out from
        // under one), nothing holds its balloon up.
        let over: Vec<usize> = (0..pools.len())
            .filter(|&p| members(&pools[p], vms.len()).contains(&i))
            .collect();
        let mut step = vm.target_mib.min(policy.release_step_mib);
        for &p in &over {
            step = step.min(room[p].unwrap_or(0));
        }
        if step == 0 {
            continue;
        }
        for &p in &over {
            if let Some(left) = room[p].as_mut() {
                *left -= step;
            }
        }
        targets[i] -= step;
    }
}

/// A pool's VM indexes that name a VM, each once.
fn members(pool: &LimitedPool, count: usize) -> Vec<usize> {
    let mut members: Vec<usize> = pool.vms.iter().copied().filter(|&i| i < count).collect();
    members.sort_unstable();
    members.dedup();
    members
}

/// `need` split in proportion to `weights`, no share above its weight;
/// what rounding leaves goes to the heaviest first.
fn shares(need: u64, weights: &[u64]) -> Vec<u64> {
    let total: u64 = weights.iter().sum();
    let take = need.min(total);
    if take == 0 {
        return vec![0; weights.len()];
    }
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|&w| u64::try_from(u128::from(w) * u128::from(take) / u128::from(total)).unwrap_or(w))
        .collect();
    let mut left = take - shares.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(weights[i]));
    for i in order {
        if left == 0 {
            break;
        }
        let more = (weights[i] - shares[i]).min(left);
        shares[i] += more;
        left -= more;
    }
    shares
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::MIB;

    const POLICY: ReclaimPolicy = ReclaimPolicy {
        high_percent: 90,
        low_percent: 80,
        release_percent: 70,
        guest_headroom_mib: 32,
        release_step_mib: 64,
    };

    fn pool(limit_mib: u64, working_set_mib: u64, vms: &[usize]) -> LimitedPool {
        LimitedPool {
            limit_bytes: limit_mib * MIB,
            working_set_bytes: working_set_mib * MIB,
            vms: vms.to_vec(),
        }
    }

    fn vm(ceiling_mib: u64, target_mib: u64, available_mib: Option<u64>) -> BalloonedVm {
        BalloonedVm {
            ceiling_mib,
            target_mib,
            actual_mib: target_mib,
            available_mib,
        }
    }

    #[test]
    fn a_short_pool_takes_from_the_idle_vm_in_proportion_to_what_each_can_give() {
        // 460 of 480 MiB: 96% >= 90%; down to 384 (80%) needs 76 MiB.
        // The idle VM can give 200 - 32 = 168, the busy one 40 - 32 = 8.
        let vms = [vm(192, 0, Some(200)), vm(192, 0, Some(40))];
        let targets = plan(&POLICY, &[pool(480, 460, &[0, 1])], &vms);
        assert_eq!(targets, vec![Some(73), Some(3)]);
    }

    #[test]
    fn a_pool_between_its_marks_moves_nothing() {
        let vms = [vm(192, 50, Some(200))];
        for working_set in [337, 400, 431] {
            assert_eq!(
                plan(&POLICY, &[pool(480, working_set, &[0])], &vms),
                vec![None],
                "{working_set}"
            );
        }
    }

    #[test]
    fn reserved_memory_and_the_guests_headroom_are_never_taken() {
        // Needs 76 MiB; the VM may hold 40 more (ceiling), its guest
        // spares 168.
        let targets = plan(&POLICY, &[pool(480, 460, &[0])], &[vm(100, 60, Some(200))]);
        assert_eq!(targets, vec![Some(100)]);
        // Its guest spares 10 beyond the headroom.
        let targets = plan(&POLICY, &[pool(480, 460, &[0])], &[vm(400, 0, Some(42))]);
        assert_eq!(targets, vec![Some(10)]);
    }

    #[test]
    fn a_guest_without_statistics_or_still_inflating_is_not_asked() {
        let moving = BalloonedVm {
            actual_mib: 20,
            ..vm(192, 64, Some(200))
        };
        let vms = [vm(192, 0, None), moving];
        assert_eq!(
            plan(&POLICY, &[pool(480, 460, &[0, 1])], &vms),
            vec![None, None]
        );
    }

    #[test]
    fn room_lets_balloons_down_a_step_at_a_time_to_the_low_mark() {
        // 200 of 480: up to 384 is 184 MiB of room; steps of 64.
        let vms = [
            vm(192, 150, Some(10)),
            vm(192, 100, Some(10)),
            vm(192, 80, Some(10)),
        ];
        let targets = plan(&POLICY, &[pool(480, 200, &[0, 1, 2])], &vms);
        assert_eq!(targets, vec![Some(86), Some(36), Some(24)]);
    }

    #[test]
    fn a_balloon_under_no_limit_is_let_down() {
        let vms = [vm(192, 100, Some(10)), vm(192, 100, Some(10))];
        let targets = plan(&POLICY, &[pool(480, 460, &[1])], &vms);
        assert_eq!(targets, vec![Some(36), None]);
    }

    #[test]
    fn a_tight_child_pool_keeps_its_vms_balloons_though_its_parent_has_room() {
        let vms = [vm(192, 100, Some(10))];
        let child = pool(200, 170, &[0]);
        let parent = pool(2000, 170, &[0]);
        assert_eq!(plan(&POLICY, &[child, parent], &vms), vec![None]);
    }

    #[test]
    fn what_a_child_pool_took_counts_for_its_parent() {
        // The child needs 41 (190 - 160 + rounding); the parent, at
        // 460 of 500 (92%), needs 60, 41 of them given already.
        let vms = [vm(192, 0, Some(200)), vm(192, 0, Some(200))];
        let child = pool(200, 200, &[0]);
        let parent = pool(500, 460, &[0, 1]);
        let targets = plan(&POLICY, &[child, parent], &vms);
        assert_eq!(targets[0].unwrap_or(0) + targets[1].unwrap_or(0), 60);
        assert!(targets[0] >= Some(40), "{targets:?}");
    }

    fn arb_vm() -> impl Strategy<Value = BalloonedVm> {
        (
            0u64..512,
            0u64..512,
            0u64..3,
            proptest::option::of(0u64..512),
        )
            .prop_map(|(ceiling, target, lag, available)| BalloonedVm {
                ceiling_mib: ceiling,
                target_mib: target.min(ceiling),
                actual_mib: target.min(ceiling).saturating_sub(lag),
                available_mib: available,
            })
    }

    fn arb_pool(vms: usize) -> impl Strategy<Value = LimitedPool> {
        (
            1u64..2048,
            0u64..2048,
            proptest::collection::vec(0..vms.max(1), 0..4),
        )
            .prop_map(|(limit, working_set, vms)| pool(limit, working_set, &vms))
    }

    proptest! {
        /// Whatever the pools and guests: no balloon inflated outside a
        /// limited pool or above its ceiling, none asked for more than its
        /// guest spares, none let down under a limit that is not roomy or
        /// by more than a step, and a pool short
        /// on its own gets what it needs or everything its VMs spare.
        #[test]
        fn plans_keep_their_bounds(
            vms in proptest::collection::vec(arb_vm(), 1..5),
            pools in proptest::collection::vec(arb_pool(5), 1..4),
        ) {
            let targets = plan(&POLICY, &pools, &vms);
            prop_assert_eq!(targets.len(), vms.len());
            for (i, (vm, target)) in vms.iter().zip(&targets).enumerate() {
                let Some(target) = *target else { continue };
                let in_pools: Vec<&LimitedPool> =
                    pools.iter().filter(|p| p.vms.contains(&i)).collect();
                if target > vm.target_mib {
                    prop_assert!(!in_pools.is_empty());
                    prop_assert!(target <= vm.ceiling_mib);
                    prop_assert!(vm.actual_mib.abs_diff(vm.target_mib) <= 1);
                    let spare = vm.available_mib.unwrap_or(0).saturating_sub(POLICY.guest_headroom_mib);
                    prop_assert!(target - vm.target_mib <= spare);
                } else {
                    prop_assert!(vm.target_mib - target <= POLICY.release_step_mib);
                    for p in in_pools {
                        prop_assert!(matches!(zone(&POLICY, p), Zone::Release(_)));
                    }
                }
            }
        }

        #[test]
        fn a_lone_short_pool_gets_what_it_needs_or_all_there_is(
            vms in proptest::collection::vec(arb_vm(), 1..5),
            limit in 1u64..2048,
            working_set in 0u64..2048,
        ) {
            let all: Vec<usize> = (0..vms.len()).collect();
            let pool = pool(limit, working_set, &all);
            let targets = plan(&POLICY, std::slice::from_ref(&pool), &vms);
            let given: u64 = vms.iter().zip(&targets)
                .map(|(vm, t)| t.map_or(0, |t| t.saturating_sub(vm.target_mib)))
                .sum();
            if let Zone::Reclaim(need) = zone(&POLICY, &pool) {
                let spare: u64 = vms.iter().map(|vm| vm.spare_mib(POLICY.guest_headroom_mib)).sum();
                prop_assert_eq!(given, need.min(spare));
            } else {
                prop_assert_eq!(given, 0);
            }
        }
    }
}
