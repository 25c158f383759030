//! Property tests: random sequences of pool and workload operations on a
//! small host, so that many of them are refused. Workloads are VMs and pods
//! mixed (pods with and without requests and limits, some invalid), under
//! quotas on both kinds. After every operation the invariants are
//! recomputed from scratch (not read from the caches):
//! - every pool's children hold at most what it can give: its reservation,
//!   or up to its limit through an expandable reservation, the excess being
//!   charged to its parent, where the same holds; the root holds at most
//!   the host minus the system reserve;
//! - the cached per-pool amounts and counts equal the recomputed ones;
//! - no quota is exceeded, and the counts it checks equal what the
//!   workloads' kinds say (VMs, vCPUs, pods, memory ceilings);
//! - a refused operation leaves the tree exactly as it was;
//! - `unreserved` is exact: a new fixed child of that size fits, one more
//!   does not.

use proptest::prelude::*;

use super::*;

const HOST: Resources = Resources {
    cpu_millicores: 4000,
    memory_bytes: 4096 * MIB,
};
const RESERVE: Resources = Resources {
    cpu_millicores: 500,
    memory_bytes: 512 * MIB,
};
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Debug, Clone)]
enum Op {
    CreatePool { parent: usize, spec: PoolSpec },
    UpdatePool { pool: usize, spec: PoolSpec },
    DeletePool { pool: usize },
    AddVm { pool: usize, sizing: VmSizing },
    AddPod { pool: usize, sizing: PodSizing },
    RemoveWorkload { workload: usize },
    Admit { workload: usize },
    Release { workload: usize },
    SetContainers { workload: usize, containers: u32 },
    Probe { pool: usize, resource: Resource },
}

fn allocation(unit: u64) -> impl Strategy<Value = Allocation> {
    (
        prop::sample::select(vec![0u64, 1, 2, 4, 7, 8]),
        prop::option::of(prop::sample::select(vec![1u64, 2, 4, 8, 16])),
        any::<bool>(),
        prop::sample::select(vec![
            Shares::Low,
            Shares::Normal,
            Shares::High,
            Shares::Custom(5),
        ]),
    )
        .prop_map(move |(res, limit, expandable, shares)| Allocation {
            shares,
            reservation: res * unit,
            limit: limit.map(|l| l * unit),
            expandable,
        })
}

fn quota() -> impl Strategy<Value = Quota> {
    (
        prop::option::of(0u32..4),
        prop::option::of(1u32..8),
        prop::option::of(prop::sample::select(vec![256 * MIB, 1024 * MIB])),
        prop::option::of(0u32..4),
    )
        .prop_map(|(max_vms, max_vcpus, max_memory_bytes, max_pods)| Quota {
            max_vms,
            max_vcpus,
            max_memory_bytes,
            max_pods,
        })
}

fn spec() -> impl Strategy<Value = PoolSpec> {
    (
        prop::sample::select(NAMES.to_vec()),
        allocation(250),
        allocation(256 * MIB),
        quota(),
    )
        .prop_map(|(name, cpu, memory, quota)| PoolSpec {
            name: name.to_string(),
            cpu,
            memory,
            quota,
        })
}

fn sizing() -> impl Strategy<Value = VmSizing> {
    (
        1u32..4,
        prop::sample::select(vec![64u64, 240, 496]),
        0u64..=4,
    )
        .prop_map(|(vcpus, memory_mib, quarter_cores)| VmSizing {
            role: Role::Worker,
            vcpus,
            memory_mib,
            cpu_reservation_millicores: Some((quarter_cores * 250).min(u64::from(vcpus) * 1000)),
            memory_reservation_mib: None,
        })
}

/// Pods with requests from nothing (BestEffort) to a core and 512 MiB, and
/// limits that are absent, above, equal to or (invalid) below them.
fn pod_sizing() -> impl Strategy<Value = PodSizing> {
    let limit = |unit: u64| {
        prop::option::of(prop::sample::select(vec![1u64, 2, 4]).prop_map(move |n| n * unit))
    };
    (
        0u64..=4,
        prop::sample::select(vec![0u64, 64, 256, 512]),
        limit(250),
        limit(128 * MIB),
        0u32..4,
    )
        .prop_map(
            |(quarter_cores, memory_mib, cpu, memory, containers)| PodSizing {
                requests: Resources::new(quarter_cores * 250, memory_mib * MIB),
                limits: PodLimits {
                    cpu_millicores: cpu,
                    memory_bytes: memory,
                },
                containers,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let i = || 0usize..16;
    prop_oneof![
        3 => (i(), spec()).prop_map(|(parent, spec)| Op::CreatePool { parent, spec }),
        2 => (i(), spec()).prop_map(|(pool, spec)| Op::UpdatePool { pool, spec }),
        1 => i().prop_map(|pool| Op::DeletePool { pool }),
        2 => (i(), sizing()).prop_map(|(pool, sizing)| Op::AddVm { pool, sizing }),
        2 => (i(), pod_sizing()).prop_map(|(pool, sizing)| Op::AddPod { pool, sizing }),
        1 => i().prop_map(|workload| Op::RemoveWorkload { workload }),
        3 => i().prop_map(|workload| Op::Admit { workload }),
        1 => i().prop_map(|workload| Op::Release { workload }),
        1 => (i(), 0u32..8).prop_map(|(workload, containers)| Op::SetContainers { workload, containers }),
        1 => (i(), prop::sample::select(Resource::ALL.to_vec()))
            .prop_map(|(pool, resource)| Op::Probe { pool, resource }),
    ]
}

/// Runs operations with fresh ids.
struct Runner {
    tree: PoolTree,
    next_id: u32,
}

impl Runner {
    fn pool_at(&self, i: usize) -> PoolId {
        let pools = self.tree.pools();
        pools[i % pools.len()].id().clone()
    }

    fn workload_at(&self, i: usize) -> Option<WorkloadId> {
        let ids: Vec<_> = self.tree.workloads().map(|w| w.id().clone()).collect();
        (!ids.is_empty()).then(|| ids[i % ids.len()].clone())
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{}", self.next_id)
    }

    fn run(&mut self, op: &Op) -> Result<(), PoolError> {
        match op {
            Op::CreatePool { parent, spec } => {
                let (id, parent) = (self.fresh("p"), self.pool_at(*parent));
                self.tree
                    .create_pool(id.into(), &parent, spec.clone())
                    .map(drop)
            }
            Op::UpdatePool { pool, spec } => {
                let id = self.pool_at(*pool);
                self.tree.update_pool(&id, spec.clone()).map(drop)
            }
            Op::DeletePool { pool } => self.tree.delete_pool(&self.pool_at(*pool)).map(drop),
            Op::AddVm { pool, sizing } => {
                let (id, pool) = (self.fresh("vm"), self.pool_at(*pool));
                self.tree
                    .add_workload(Workload::vm(id.into(), pool, sizing)?)
            }
            Op::AddPod { pool, sizing } => {
                let (id, pool) = (self.fresh("pod"), self.pool_at(*pool));
                self.tree
                    .add_workload(Workload::pod(id.into(), pool, sizing)?)
            }
            Op::RemoveWorkload { workload } => {
                self.with_workload(*workload, |t, id| t.remove_workload(id).map(drop))
            }
            Op::Admit { workload } => self.with_workload(*workload, PoolTree::admit),
            Op::Release { workload } => self.with_workload(*workload, PoolTree::release),
            Op::SetContainers {
                workload,
                containers,
            } => self.with_workload(*workload, |t, id| {
                let before = t.clone();
                let result = t.set_pod_containers(id, *containers);
                // Only the count changes: every pool's accounting stays.
                for (a, b) in t.pools().iter().zip(before.pools()) {
                    assert_eq!(t.status(a.id()).unwrap(), before.status(b.id()).unwrap());
                }
                result
            }),
            Op::Probe { pool, resource } => {
                probe_unreserved(&self.tree, &self.pool_at(*pool), *resource);
                Ok(())
            }
        }
    }

    fn with_workload(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut PoolTree, &WorkloadId) -> Result<(), PoolError>,
    ) -> Result<(), PoolError> {
        match self.workload_at(i) {
            Some(id) => f(&mut self.tree, &id),
            None => Ok(()),
        }
    }
}

/// A fixed child pool of exactly `unreserved` fits; one unit more does not.
fn probe_unreserved(tree: &PoolTree, pool: &PoolId, r: Resource) {
    let free = tree.unreserved(pool, r).unwrap();
    let child = |amount| {
        let mut spec = PoolSpec::named("probe-child");
        match r {
            Resource::Cpu => spec.cpu = Allocation::fixed(amount),
            Resource::Memory => spec.memory = Allocation::fixed(amount),
        }
        tree.clone()
            .create_pool("probe".into(), pool, spec)
            .map(drop)
    };
    assert_eq!(child(free), Ok(()), "{free} {r} should fit in {pool}");
    let err = child(free + 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted, "{err}");
}

/// What `pool`'s children hold and what it charges, recomputed from the
/// specs and the admitted workloads only.
fn recompute(tree: &PoolTree, pool: &Pool, r: Resource) -> (u64, u64) {
    let from_pools: u64 = pool
        .child_ids()
        .map(|c| recompute(tree, tree.get(c).unwrap(), r).1)
        .sum();
    let from_vms: u64 = pool
        .workload_ids()
        .map(|w| tree.workload(w).unwrap().charge().get(r))
        .sum();
    let held = from_pools + from_vms;
    (held, pool.spec().allocation(r).charge_for(held))
}

fn recompute_usage(tree: &PoolTree, pool: &Pool) -> Usage {
    let own = pool
        .workload_ids()
        .map(|w| tree.workload(w).unwrap().usage())
        .fold(Usage::default(), |a, b| a.plus(&b));
    pool.child_ids()
        .map(|c| recompute_usage(tree, tree.get(c).unwrap()))
        .fold(own, |a, b| a.plus(&b))
}

/// The counts the quotas check, from the workloads' kinds alone (not from
/// `Workload::usage`): VMs and their vCPUs and guest memory, pods and
/// their memory limits.
fn count_by_kind<'a>(workloads: impl Iterator<Item = &'a Workload>) -> Usage {
    let mut u = Usage::default();
    for w in workloads {
        u.workloads += 1;
        u.running += u32::from(w.is_admitted());
        match *w.kind() {
            WorkloadKind::Vm {
                vcpus,
                memory_bytes,
                ..
            } => {
                u.vms += 1;
                u.vcpus += vcpus;
                u.memory_bytes += memory_bytes;
            }
            WorkloadKind::Pod { limits, .. } => {
                u.pods += 1;
                match limits.memory_bytes {
                    Some(m) => u.memory_bytes += m,
                    None => u.pods_without_memory_limit += 1,
                }
            }
        }
    }
    u
}

/// Every workload in `pool`'s subtree.
fn subtree_workloads<'a>(tree: &'a PoolTree, pool: &Pool) -> Vec<&'a Workload> {
    let ids: Vec<PoolId> = tree
        .subtree(pool.id())
        .unwrap()
        .iter()
        .map(|p| p.id().clone())
        .collect();
    tree.workloads()
        .filter(|w| ids.contains(w.pool()))
        .collect()
}

/// Each cap of `pool`'s quota against the counts by kind, spelled out
/// rather than through `Quota`'s own check.
fn check_quota(pool: &Pool, u: &Usage) {
    let q = &pool.spec().quota;
    let id = pool.id();
    assert!(q.max_vms.is_none_or(|m| u.vms <= m), "{id}: VMs");
    assert!(q.max_vcpus.is_none_or(|m| u.vcpus <= m), "{id}: vCPUs");
    assert!(q.max_pods.is_none_or(|m| u.pods <= m), "{id}: pods");
    if let Some(max) = q.max_memory_bytes {
        assert!(u.memory_bytes <= max, "{id}: memory");
        assert_eq!(
            u.pods_without_memory_limit, 0,
            "{id}: a pod without a memory limit under a memory quota"
        );
    }
}

fn check_invariants(tree: &PoolTree) {
    let usable = HOST.checked_sub(&RESERVE).unwrap();
    for pool in tree.pools() {
        for r in Resource::ALL {
            let (held, charge) = recompute(tree, pool, r);
            let alloc = pool.spec().allocation(r);
            assert_eq!(pool.held().get(r), held, "cached held of {} {r}", pool.id());
            assert!(
                held <= alloc.ceiling(),
                "{} {r}: {held} > {}",
                pool.id(),
                alloc.ceiling()
            );
            if !alloc.expandable {
                assert!(held <= alloc.reservation);
            }
            if let Some(limit) = alloc.limit {
                assert!(
                    charge <= limit,
                    "{} {r} charges {charge} over limit {limit}",
                    pool.id()
                );
            }
        }
        let usage = recompute_usage(tree, pool);
        assert_eq!(pool.usage(), usage, "cached usage of {}", pool.id());
        let by_kind = count_by_kind(subtree_workloads(tree, pool).into_iter());
        assert_eq!(usage, by_kind, "usage of {} by kind", pool.id());
        assert_eq!(
            pool.spec().quota.first_exceeded(&usage),
            None,
            "{}",
            pool.id()
        );
        check_quota(pool, &by_kind);
    }
    for w in tree.workloads() {
        // A pod reserves exactly its requests, within its limits.
        if let WorkloadKind::Pod { limits, .. } = w.kind() {
            for r in Resource::ALL {
                assert!(limits.get(r).is_none_or(|l| w.reservation().get(r) <= l));
            }
        }
    }
    let admitted: Vec<_> = tree.workloads().filter(|w| w.is_admitted()).collect();
    for r in Resource::ALL {
        let total: u64 = admitted.iter().map(|w| w.reservation().get(r)).sum();
        assert!(total <= tree.root().held().get(r));
        assert!(tree.root().held().get(r) <= usable.get(r), "root {r}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invariants_hold_after_any_sequence(ops in prop::collection::vec(op(), 1..60)) {
        let mut runner = Runner { tree: PoolTree::new(HOST, RESERVE).unwrap(), next_id: 0 };
        for op in &ops {
            let before = runner.tree.clone();
            if runner.run(op).is_err() {
                prop_assert_eq!(&runner.tree, &before, "refused {:?} changed the tree", op);
            }
            check_invariants(&runner.tree);
        }
    }

    #[test]
    fn releasing_and_removing_everything_returns_all_capacity(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        let mut runner = Runner { tree: PoolTree::new(HOST, RESERVE).unwrap(), next_id: 0 };
        for op in &ops {
            let _ = runner.run(op);
        }
        let ids: Vec<_> = runner.tree.workloads().map(|w| w.id().clone()).collect();
        for id in &ids {
            let _ = runner.tree.release(id);
            runner.tree.remove_workload(id).unwrap();
        }
        let pools: Vec<_> = runner.tree.pools().iter().map(|p| p.id().clone()).collect();
        for id in pools.iter().skip(1).rev() {
            runner.tree.delete_pool(id).unwrap();
        }
        prop_assert_eq!(runner.tree, PoolTree::new(HOST, RESERVE).unwrap());
    }
}
