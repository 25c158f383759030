//! Readable cases of each pool rule, one scenario per test. CPU figures are
//! millicores; memory figures are GiB unless said otherwise.

use super::*;

const GIB: u64 = 1 << 30;

/// A host with `cpus` CPUs and `gib` GiB, with 1 CPU and 1 GiB reserved
/// for the system.
fn host(cpus: u64, gib: u64) -> PoolTree {
    PoolTree::new(
        Resources::new(cpus * 1000, gib * GIB),
        Resources::new(1000, GIB),
    )
    .unwrap()
}

fn root() -> PoolId {
    PoolId::root()
}

fn id(s: &str) -> PoolId {
    PoolId::from(s)
}

/// A pool spec with the given CPU allocation and default memory.
fn cpu_pool(name: &str, cpu: Allocation) -> PoolSpec {
    PoolSpec {
        cpu,
        ..PoolSpec::named(name)
    }
}

fn create(t: &mut PoolTree, pool: &str, parent: &PoolId, spec: PoolSpec) -> Result<(), PoolError> {
    t.create_pool(id(pool), parent, spec).map(|_| ())
}

fn vm(t: &mut PoolTree, name: &str, pool: &str, vcpus: u32, mib: u64, cpu: u64) -> WorkloadId {
    let sizing = VmSizing {
        role: Role::Worker,
        vcpus,
        memory_mib: mib,
        cpu_reservation_millicores: Some(cpu),
        memory_reservation_mib: None,
    };
    let w = Workload::vm(name.into(), id(pool), &sizing).unwrap();
    t.add_workload(w).unwrap();
    WorkloadId::from(name)
}

/// A pod with requests (`cpu` millicores, `mem_mib` MiB) and an optional
/// memory limit in MiB, added to `pool`.
fn pod(
    t: &mut PoolTree,
    name: &str,
    pool: &str,
    cpu: u64,
    mem_mib: u64,
    mem_limit_mib: Option<u64>,
) -> Result<WorkloadId, PoolError> {
    let sizing = PodSizing {
        requests: Resources::new(cpu, mem_mib * MIB),
        limits: PodLimits {
            cpu_millicores: None,
            memory_bytes: mem_limit_mib.map(|m| m * MIB),
        },
        containers: 1,
    };
    t.add_workload(Workload::pod(name.into(), id(pool), &sizing)?)?;
    Ok(WorkloadId::from(name))
}

fn unreserved_cpu(t: &PoolTree, pool: &str) -> u64 {
    t.unreserved(&id(pool), Resource::Cpu).unwrap()
}

#[test]
fn root_is_the_host_minus_the_system_reserve() {
    let t = host(8, 16);
    let cap = t.capacity();
    assert_eq!(cap.total, Resources::new(8000, 16 * GIB));
    assert_eq!(cap.unreserved, Resources::new(7000, 15 * GIB));
    assert_eq!(cap.reserved, Resources::ZERO);
    assert_eq!(t.root().spec().name, "root");
}

#[test]
fn a_system_reserve_larger_than_the_host_is_refused() {
    let err = PoolTree::new(Resources::new(1000, GIB), Resources::new(2000, 0)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn a_fixed_reservation_that_fits_is_taken_from_the_parent() {
    let mut t = host(8, 16);
    create(
        &mut t,
        "prod",
        &root(),
        cpu_pool("prod", Allocation::fixed(4000)),
    )
    .unwrap();
    assert_eq!(t.capacity().reserved.cpu_millicores, 4000);
    assert_eq!(unreserved_cpu(&t, "root"), 3000);
    assert_eq!(unreserved_cpu(&t, "prod"), 4000);
}

#[test]
fn a_reservation_beyond_the_parents_unreserved_is_refused_with_the_numbers() {
    let mut t = host(8, 16);
    create(&mut t, "a", &root(), cpu_pool("a", Allocation::fixed(5000))).unwrap();
    let before = t.clone();
    let err = create(&mut t, "b", &root(), cpu_pool("b", Allocation::fixed(3000))).unwrap_err();
    assert_eq!(
        err,
        PoolError::DoesNotFit {
            pool: root(),
            resource: Resource::Cpu,
            requested: 3000,
            available: 2000,
            bound_by: root(),
        }
    );
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(t, before);
}

#[test]
fn an_expandable_pool_borrows_from_its_parent() {
    let mut t = host(8, 16);
    create(
        &mut t,
        "team",
        &root(),
        cpu_pool("team", Allocation::expandable(1000)),
    )
    .unwrap();
    assert_eq!(unreserved_cpu(&t, "team"), 7000);
    create(
        &mut t,
        "big",
        &id("team"),
        cpu_pool("big", Allocation::fixed(3000)),
    )
    .unwrap();
    let team = t.status(&id("team")).unwrap().cpu;
    assert_eq!(team.reserved_by_children, 3000);
    assert_eq!(
        team.charged_to_parent, 3000,
        "borrows 2000 beyond its own 1000"
    );
    assert_eq!(unreserved_cpu(&t, "root"), 4000);
}

#[test]
fn borrowing_stops_at_a_fixed_reservation() {
    let mut t = host(8, 16);
    create(
        &mut t,
        "dept",
        &root(),
        cpu_pool("dept", Allocation::fixed(2000)),
    )
    .unwrap();
    create(
        &mut t,
        "team",
        &id("dept"),
        cpu_pool("team", Allocation::expandable(500)),
    )
    .unwrap();
    assert_eq!(unreserved_cpu(&t, "team"), 2000);
    let err = create(
        &mut t,
        "x",
        &id("team"),
        cpu_pool("x", Allocation::fixed(2500)),
    )
    .unwrap_err();
    assert!(
        matches!(err, PoolError::DoesNotFit { ref bound_by, available: 2000, .. } if *bound_by == id("dept")),
        "{err}"
    );
    create(
        &mut t,
        "x",
        &id("team"),
        cpu_pool("x", Allocation::fixed(2000)),
    )
    .unwrap();
}

#[test]
fn borrowing_goes_up_through_a_chain_of_expandable_pools() {
    let mut t = host(8, 16);
    create(
        &mut t,
        "a",
        &root(),
        cpu_pool("a", Allocation::expandable(0)),
    )
    .unwrap();
    create(
        &mut t,
        "b",
        &id("a"),
        cpu_pool("b", Allocation::expandable(0)),
    )
    .unwrap();
    create(
        &mut t,
        "c",
        &id("b"),
        cpu_pool("c", Allocation::fixed(6000)),
    )
    .unwrap();
    assert_eq!(t.get(&id("a")).unwrap().charge().cpu_millicores, 6000);
    assert_eq!(unreserved_cpu(&t, "root"), 1000);
    assert_eq!(unreserved_cpu(&t, "b"), 1000);
}

#[test]
fn an_expandable_pool_borrows_no_further_than_its_limit() {
    let mut t = host(8, 16);
    let capped = Allocation::expandable(1000).with_limit(2000);
    create(&mut t, "team", &root(), cpu_pool("team", capped)).unwrap();
    assert_eq!(unreserved_cpu(&t, "team"), 2000);
    let err = create(
        &mut t,
        "x",
        &id("team"),
        cpu_pool("x", Allocation::fixed(2001)),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
}

#[test]
fn a_child_reservation_beyond_the_parents_limit_is_refused() {
    let mut t = host(8, 16);
    let parent = Allocation::expandable(0).with_limit(1000);
    create(&mut t, "p", &root(), cpu_pool("p", parent)).unwrap();
    assert!(create(
        &mut t,
        "c",
        &id("p"),
        cpu_pool("c", Allocation::fixed(1500))
    )
    .is_err());
}

#[test]
fn a_limit_below_the_reservation_is_invalid() {
    let mut t = host(8, 16);
    let bad = Allocation::fixed(2000).with_limit(1000);
    let err = create(&mut t, "p", &root(), cpu_pool("p", bad)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn names_are_unique_among_siblings_only() {
    let mut t = host(8, 16);
    create(&mut t, "a", &root(), PoolSpec::named("prod")).unwrap();
    let err = create(&mut t, "b", &root(), PoolSpec::named("prod")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    create(&mut t, "b", &id("a"), PoolSpec::named("prod")).unwrap();
    assert_eq!(t.path(&id("b")).unwrap(), "prod/prod");
}

#[test]
fn ids_are_unique_and_parents_must_exist() {
    let mut t = host(8, 16);
    create(&mut t, "a", &root(), PoolSpec::named("a")).unwrap();
    let dup = create(&mut t, "a", &root(), PoolSpec::named("other")).unwrap_err();
    assert_eq!(dup, PoolError::PoolExists(id("a")));
    let orphan = create(&mut t, "z", &id("nope"), PoolSpec::named("z")).unwrap_err();
    assert_eq!(orphan.kind(), ErrorKind::NotFound);
    let bad_name = create(&mut t, "y", &root(), PoolSpec::named("Bad_Name")).unwrap_err();
    assert_eq!(bad_name.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn update_renames_within_the_sibling_rule() {
    let mut t = host(8, 16);
    create(&mut t, "a", &root(), PoolSpec::named("a")).unwrap();
    create(&mut t, "b", &root(), PoolSpec::named("b")).unwrap();
    assert!(t.update_pool(&id("a"), PoolSpec::named("a")).is_ok());
    assert_eq!(
        t.update_pool(&id("a"), PoolSpec::named("b"))
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    t.update_pool(&id("a"), PoolSpec::named("c")).unwrap();
    let names: Vec<_> = t.pools().iter().map(|p| p.spec().name.clone()).collect();
    assert_eq!(names, ["root", "b", "c"]);
}

#[test]
fn update_cannot_shrink_below_what_the_children_hold() {
    let mut t = host(8, 16);
    create(&mut t, "p", &root(), cpu_pool("p", Allocation::fixed(3000))).unwrap();
    create(
        &mut t,
        "c",
        &id("p"),
        cpu_pool("c", Allocation::fixed(2000)),
    )
    .unwrap();
    let before = t.clone();
    let err = t
        .update_pool(&id("p"), cpu_pool("p", Allocation::fixed(1500)))
        .unwrap_err();
    assert_eq!(
        err,
        PoolError::BelowChildren {
            pool: id("p"),
            resource: Resource::Cpu,
            held: 2000,
            ceiling: 1500
        }
    );
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert_eq!(t, before);
}

#[test]
fn update_cannot_stop_expanding_while_borrowing() {
    let mut t = host(8, 16);
    create(
        &mut t,
        "p",
        &root(),
        cpu_pool("p", Allocation::expandable(1000)),
    )
    .unwrap();
    create(
        &mut t,
        "c",
        &id("p"),
        cpu_pool("c", Allocation::fixed(2000)),
    )
    .unwrap();
    let err = t
        .update_pool(&id("p"), cpu_pool("p", Allocation::fixed(1000)))
        .unwrap_err();
    assert!(matches!(err, PoolError::BelowChildren { held: 2000, .. }));
    t.update_pool(&id("p"), cpu_pool("p", Allocation::fixed(2000)))
        .unwrap();
    assert_eq!(t.capacity().reserved.cpu_millicores, 2000);
}

#[test]
fn update_that_grows_beyond_the_parent_is_refused() {
    let mut t = host(8, 16);
    create(&mut t, "p", &root(), cpu_pool("p", Allocation::fixed(1000))).unwrap();
    let err = t
        .update_pool(&id("p"), cpu_pool("p", Allocation::fixed(7001)))
        .unwrap_err();
    assert!(matches!(
        err,
        PoolError::DoesNotFit {
            requested: 6001,
            available: 6000,
            ..
        }
    ));
    t.update_pool(&id("p"), cpu_pool("p", Allocation::fixed(7000)))
        .unwrap();
}

#[test]
fn the_root_cannot_be_updated_or_deleted() {
    let mut t = host(8, 16);
    assert_eq!(
        t.update_pool(&root(), PoolSpec::named("root")).unwrap_err(),
        PoolError::RootImmutable
    );
    assert_eq!(
        t.delete_pool(&root()).unwrap_err(),
        PoolError::RootImmutable
    );
}

#[test]
fn delete_is_refused_while_the_pool_holds_anything() {
    let mut t = host(8, 16);
    create(&mut t, "p", &root(), cpu_pool("p", Allocation::fixed(2000))).unwrap();
    create(&mut t, "c", &id("p"), PoolSpec::named("c")).unwrap();
    let err = t.delete_pool(&id("p")).unwrap_err();
    assert!(matches!(
        err,
        PoolError::NotEmpty {
            pools: 1,
            workloads: 0,
            ..
        }
    ));
    t.delete_pool(&id("c")).unwrap();
    let vm = vm(&mut t, "vm-1", "p", 1, 64, 100);
    assert!(matches!(
        t.delete_pool(&id("p")),
        Err(PoolError::NotEmpty { workloads: 1, .. })
    ));
    t.remove_workload(&vm).unwrap();
    t.delete_pool(&id("p")).unwrap();
    assert_eq!(
        t.capacity().reserved,
        Resources::ZERO,
        "reservation returned"
    );
    assert_eq!(
        t.delete_pool(&id("p")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn a_vm_charges_its_pool_only_while_admitted() {
    let mut t = host(8, 16);
    create(
        &mut t,
        "p",
        &root(),
        cpu_pool("p", Allocation::expandable(0)),
    )
    .unwrap();
    let vm = vm(&mut t, "vm-1", "p", 2, 1024, 1500);
    assert_eq!(t.capacity().reserved, Resources::ZERO);
    t.admit(&vm).unwrap();
    let expected = Resources::new(1500, GIB + VMM_MEMORY_OVERHEAD_BYTES);
    assert_eq!(t.capacity().reserved, expected);
    assert_eq!(t.status(&id("p")).unwrap().usage.running, 1);
    t.release(&vm).unwrap();
    assert_eq!(t.capacity().reserved, Resources::ZERO);
}

#[test]
fn a_vm_that_does_not_fit_is_not_admitted() {
    let mut t = host(4, 16);
    create(&mut t, "p", &root(), cpu_pool("p", Allocation::fixed(1000))).unwrap();
    let a = vm(&mut t, "a", "p", 1, 64, 800);
    let b = vm(&mut t, "b", "p", 1, 64, 800);
    t.admit(&a).unwrap();
    let before = t.clone();
    let err = t.admit(&b).unwrap_err();
    assert!(matches!(
        err,
        PoolError::DoesNotFit {
            requested: 800,
            available: 200,
            ..
        }
    ));
    assert_eq!(t, before);
    assert!(!t.workload(&b).unwrap().is_admitted());
}

#[test]
fn vm_state_errors_are_failed_preconditions() {
    let mut t = host(4, 16);
    let vm = vm(&mut t, "a", "root", 1, 64, 100);
    assert_eq!(
        t.release(&vm).unwrap_err(),
        PoolError::WorkloadNotRunning(vm.clone())
    );
    t.admit(&vm).unwrap();
    assert_eq!(
        t.admit(&vm).unwrap_err(),
        PoolError::WorkloadRunning(vm.clone())
    );
    assert_eq!(
        t.remove_workload(&vm).unwrap_err().kind(),
        ErrorKind::FailedPrecondition
    );
    let unknown = WorkloadId::from("nope");
    assert_eq!(t.admit(&unknown).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn vm_ids_are_unique_and_pools_must_exist() {
    let mut t = host(4, 16);
    vm(&mut t, "a", "root", 1, 64, 100);
    let sizing = VmSizing {
        role: Role::Etcd,
        vcpus: 1,
        memory_mib: 64,
        cpu_reservation_millicores: None,
        memory_reservation_mib: None,
    };
    let again = Workload::vm("a".into(), root(), &sizing).unwrap();
    assert_eq!(
        t.add_workload(again).unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let lost = Workload::vm("b".into(), id("nope"), &sizing).unwrap();
    assert_eq!(
        t.add_workload(lost).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn quotas_count_the_whole_subtree_and_bind_at_any_ancestor() {
    let mut t = host(8, 16);
    let quota = Quota {
        max_vms: Some(2),
        max_vcpus: Some(3),
        ..Quota::default()
    };
    let spec = PoolSpec {
        quota,
        ..PoolSpec::named("ns")
    };
    create(&mut t, "ns", &root(), spec).unwrap();
    create(&mut t, "sub", &id("ns"), PoolSpec::named("sub")).unwrap();
    vm(&mut t, "a", "ns", 2, 64, 0);
    let sizing = |vcpus| VmSizing {
        role: Role::Worker,
        vcpus,
        memory_mib: 64,
        cpu_reservation_millicores: Some(0),
        memory_reservation_mib: None,
    };
    let too_many_vcpus = Workload::vm("b".into(), id("sub"), &sizing(2)).unwrap();
    let before = t.clone();
    let err = t.add_workload(too_many_vcpus).unwrap_err();
    assert_eq!(
        err,
        PoolError::QuotaExceeded {
            pool: id("ns"),
            item: QuotaItem::Vcpus,
            max: 3,
            requested: 4
        }
    );
    assert_eq!(t, before);
    t.add_workload(Workload::vm("b".into(), id("sub"), &sizing(1)).unwrap())
        .unwrap();
    let third = Workload::vm("c".into(), id("sub"), &sizing(0).clone()).unwrap_err();
    assert_eq!(third.kind(), ErrorKind::InvalidArgument, "0 vCPUs");
    let err = t
        .add_workload(Workload::vm("c".into(), id("sub"), &sizing(1)).unwrap())
        .unwrap_err();
    assert!(matches!(
        err,
        PoolError::QuotaExceeded {
            item: QuotaItem::Vms,
            ..
        }
    ));
}

#[test]
fn a_quota_cannot_be_lowered_below_current_usage() {
    let mut t = host(8, 16);
    create(&mut t, "ns", &root(), PoolSpec::named("ns")).unwrap();
    vm(&mut t, "a", "ns", 1, 2048, 0);
    let spec = PoolSpec {
        quota: Quota {
            max_memory_bytes: Some(GIB),
            ..Quota::default()
        },
        ..PoolSpec::named("ns")
    };
    let err = t.update_pool(&id("ns"), spec).unwrap_err();
    assert!(matches!(
        err,
        PoolError::QuotaBelowUsage {
            item: QuotaItem::MemoryBytes,
            ..
        }
    ));
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
}

#[test]
fn memory_is_admitted_like_cpu() {
    let mut t = host(8, 4);
    let spec = PoolSpec {
        memory: Allocation::fixed(GIB),
        ..PoolSpec::named("p")
    };
    create(&mut t, "p", &root(), spec).unwrap();
    let small = vm(&mut t, "a", "p", 1, 1024 - 16, 0);
    let big = vm(&mut t, "b", "p", 1, 1024, 0);
    assert!(matches!(
        t.admit(&big),
        Err(PoolError::DoesNotFit {
            resource: Resource::Memory,
            ..
        })
    ));
    t.admit(&small).unwrap();
    assert_eq!(t.unreserved(&id("p"), Resource::Memory).unwrap(), 0);
}

#[test]
fn listing_is_depth_first_in_name_order() {
    let mut t = host(8, 16);
    create(&mut t, "1", &root(), PoolSpec::named("zeta")).unwrap();
    create(&mut t, "2", &root(), PoolSpec::named("alpha")).unwrap();
    create(&mut t, "3", &id("1"), PoolSpec::named("beta")).unwrap();
    let order: Vec<_> = t.pools().iter().map(|p| p.id().to_string()).collect();
    assert_eq!(order, ["root", "2", "1", "3"]);
    assert_eq!(t.subtree(&id("1")).unwrap().len(), 2);
    let p = t.to_proto(&id("1")).unwrap();
    assert_eq!(
        (p.parent_id.as_str(), p.child_pool_ids.as_slice()),
        ("root", &["3".to_string()][..])
    );
}

#[test]
fn a_pod_charges_its_requests_while_admitted_beside_vms() {
    let mut t = host(4, 16);
    create(&mut t, "p", &root(), cpu_pool("p", Allocation::fixed(1000))).unwrap();
    let a = vm(&mut t, "vm-1", "p", 1, 64, 600);
    let web = pod(&mut t, "pod-2", "p", 300, 128, Some(256)).unwrap();
    t.admit(&a).unwrap();
    t.admit(&web).unwrap();
    let status = t.status(&id("p")).unwrap();
    assert_eq!(status.cpu.reserved_by_children, 900);
    assert_eq!(
        status.memory.reserved_by_children,
        64 * MIB + VMM_MEMORY_OVERHEAD_BYTES + 128 * MIB,
        "the VM with its overhead, the pod its request only"
    );
    assert_eq!((status.usage.running, status.usage.workloads), (2, 2));
    // A second pod asking 200 millicores does not fit the 100 left.
    let big = pod(&mut t, "pod-3", "p", 200, 0, None).unwrap();
    let before = t.clone();
    assert!(matches!(
        t.admit(&big),
        Err(PoolError::DoesNotFit {
            resource: Resource::Cpu,
            requested: 200,
            available: 100,
            ..
        })
    ));
    assert_eq!(t, before);
    t.release(&web).unwrap();
    t.admit(&big).unwrap();
    assert_eq!(t.unreserved(&id("p"), Resource::Cpu).unwrap(), 200);
}

#[test]
fn a_best_effort_pod_reserves_nothing_and_fits_a_full_pool() {
    let mut t = host(4, 16);
    create(&mut t, "p", &root(), cpu_pool("p", Allocation::fixed(500))).unwrap();
    let a = vm(&mut t, "vm-1", "p", 1, 64, 500);
    t.admit(&a).unwrap();
    let be = pod(&mut t, "pod-2", "p", 0, 0, None).unwrap();
    t.admit(&be).unwrap();
    assert_eq!(t.workload(&be).unwrap().charge(), Resources::ZERO);
    assert_eq!(t.status(&id("p")).unwrap().usage.running, 2);
}

#[test]
fn pod_and_vm_quotas_count_their_own_kind_and_share_memory() {
    let mut t = host(8, 16);
    let spec = PoolSpec {
        quota: Quota {
            max_vms: Some(1),
            max_pods: Some(2),
            max_memory_bytes: Some(GIB),
            ..Quota::default()
        },
        ..PoolSpec::named("ns")
    };
    create(&mut t, "ns", &root(), spec).unwrap();
    create(&mut t, "sub", &id("ns"), PoolSpec::named("sub")).unwrap();
    vm(&mut t, "vm-1", "sub", 1, 512, 0);
    // Pods do not count against max_vms, nor VMs against max_pods.
    pod(&mut t, "pod-2", "sub", 0, 0, Some(256)).unwrap();
    // Memory counts the limit (256 + 256 + 512 = 1 GiB), not the request.
    pod(&mut t, "pod-3", "sub", 0, 1, Some(256)).unwrap();
    let usage = t.status(&id("ns")).unwrap().usage;
    assert_eq!((usage.vms, usage.pods, usage.workloads), (1, 2, 3));
    assert_eq!(usage.memory_bytes, GIB);
    let before = t.clone();
    let third = pod(&mut t, "pod-4", "sub", 0, 0, Some(1)).unwrap_err();
    assert!(
        matches!(
            third,
            PoolError::QuotaExceeded {
                item: QuotaItem::Pods,
                max: 2,
                requested: 3,
                ..
            }
        ),
        "{third}"
    );
    assert_eq!(t, before);
    t.remove_workload(&WorkloadId::from("pod-3")).unwrap();
    let over_memory = pod(&mut t, "pod-4", "sub", 0, 0, Some(257)).unwrap_err();
    assert!(matches!(
        over_memory,
        PoolError::QuotaExceeded {
            pool,
            item: QuotaItem::MemoryBytes,
            ..
        } if pool == id("ns")
    ));
}

#[test]
fn a_memory_quota_refuses_pods_without_a_memory_limit() {
    let mut t = host(8, 16);
    create(&mut t, "ns", &root(), PoolSpec::named("ns")).unwrap();
    create(&mut t, "sub", &id("ns"), PoolSpec::named("sub")).unwrap();
    // No memory cap anywhere: an unlimited pod is fine.
    let open = pod(&mut t, "pod-1", "sub", 0, 0, None).unwrap();
    // Now a memory cap above it is refused while that pod exists.
    let capped = PoolSpec {
        quota: Quota {
            max_memory_bytes: Some(GIB),
            ..Quota::default()
        },
        ..PoolSpec::named("ns")
    };
    let err = t.update_pool(&id("ns"), capped.clone()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(matches!(
        err,
        PoolError::QuotaBelowUsage {
            item: QuotaItem::PodsWithoutMemoryLimit,
            usage: 1,
            max: 0,
            ..
        }
    ));
    t.remove_workload(&open).unwrap();
    t.update_pool(&id("ns"), capped).unwrap();
    // Under the cap, a pod needs a memory limit.
    let err = pod(&mut t, "pod-2", "sub", 0, 64, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert!(err.to_string().contains("without a memory limit"), "{err}");
    pod(&mut t, "pod-2", "sub", 0, 64, Some(64)).unwrap();
}

#[test]
fn a_pods_container_count_changes_nothing_the_pools_account() {
    let mut t = host(4, 16);
    let p = pod(&mut t, "pod-1", "root", 100, 1, Some(2)).unwrap();
    t.admit(&p).unwrap();
    let before = t.status(&root()).unwrap();
    t.set_pod_containers(&p, 4).unwrap();
    assert!(matches!(
        t.workload(&p).unwrap().kind(),
        WorkloadKind::Pod { containers: 4, .. }
    ));
    assert_eq!(t.status(&root()).unwrap(), before);
    let v = vm(&mut t, "vm-2", "root", 1, 64, 0);
    assert_eq!(
        t.set_pod_containers(&v, 1).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let gone = WorkloadId::from("nope");
    assert_eq!(
        t.set_pod_containers(&gone, 1).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}
