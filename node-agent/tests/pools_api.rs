//! Resource pools through the real agent's gRPC API: the tree, admission
//! control, the cgroups that enforce it (read back from the cgroup files),
//! errors with their codes, and durability across kill -9.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use stratum_api::proto;
use stratum_testkit::test_agent::TestAgent;
use tonic::Code;

const MIB: u64 = 1 << 20;

fn alloc(reservation: u64, limit: u64, expandable: bool) -> Option<proto::Allocation> {
    Some(proto::Allocation {
        reservation,
        limit,
        expandable_reservation: expandable,
        ..Default::default()
    })
}

fn spec(
    name: &str,
    cpu: Option<proto::Allocation>,
    mem: Option<proto::Allocation>,
) -> proto::ResourcePoolSpec {
    proto::ResourcePoolSpec {
        name: name.into(),
        cpu,
        memory: mem,
        quota: None,
    }
}

async fn create(
    agent: &TestAgent,
    parent: &str,
    spec: proto::ResourcePoolSpec,
) -> Result<proto::ResourcePool, tonic::Status> {
    agent
        .pools()
        .await
        .create(proto::CreateResourcePoolRequest {
            parent_id: parent.into(),
            spec: Some(spec),
        })
        .await
        .map(|r| r.into_inner())
}

fn read(agent: &TestAgent, path: &str, file: &str) -> Option<String> {
    agent
        .cgroup(path)
        .dirs()
        .iter()
        .map(|d| d.join(file))
        .find(|f| f.exists())
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|s| s.trim().to_string())
}

#[tokio::test]
async fn pools_are_created_enforced_listed_and_deleted() {
    let agent = TestAgent::start("pools");
    let prod = create(
        &agent,
        "",
        spec(
            "prod",
            alloc(500, 1000, false),
            alloc(256 * MIB, 512 * MIB, true),
        ),
    )
    .await
    .unwrap();
    let web = create(&agent, &prod.id, spec("web", alloc(250, 500, false), None))
        .await
        .unwrap();
    assert_eq!(web.parent_id, prod.id);

    // The cgroups mirror the tree and carry the limits.
    let web_path = format!("{}/{}", prod.id, web.id);
    let quota = read(&agent, &web_path, "cpu.max")
        .or_else(|| read(&agent, &web_path, "cpu.cfs_quota_us"))
        .unwrap();
    assert!(
        quota.starts_with("50000"),
        "web's CPU limit is half a core: {quota}"
    );
    let mem = read(&agent, &prod.id, "memory.max")
        .or_else(|| read(&agent, &prod.id, "memory.limit_in_bytes"))
        .unwrap();
    assert_eq!(mem, (512 * MIB).to_string());

    let list = agent
        .pools()
        .await
        .list(proto::ListResourcePoolsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = list
        .pools
        .iter()
        .filter_map(|p| p.spec.as_ref().map(|s| s.name.as_str()))
        .collect();
    assert_eq!(names, ["root", "prod", "web"], "parents before children");
    let prod_now = list.pools.iter().find(|p| p.id == prod.id).unwrap();
    let cpu = prod_now.status.as_ref().unwrap().cpu.as_ref().unwrap();
    assert_eq!(cpu.reserved_by_children, 250);

    // Not empty: refused, nothing changes.
    let e = agent
        .pools()
        .await
        .delete(proto::DeleteResourcePoolRequest {
            id: prod.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    for id in [&web.id, &prod.id] {
        agent
            .pools()
            .await
            .delete(proto::DeleteResourcePoolRequest { id: id.clone() })
            .await
            .unwrap();
    }
    assert!(!agent
        .hierarchy()
        .root()
        .unwrap()
        .children()
        .unwrap()
        .contains(&prod.id));
}

#[tokio::test]
async fn bad_pool_requests_get_their_codes_and_change_nothing() {
    let agent = TestAgent::start("badpools");
    let small = create(&agent, "", spec("small", alloc(100, 100, false), None))
        .await
        .unwrap();
    let cases = [
        ("", spec("Bad_Name", None, None), Code::InvalidArgument),
        ("no-such-pool", spec("x", None, None), Code::NotFound),
        ("", spec("small", None, None), Code::AlreadyExists),
        // Reservation above the limit.
        (
            "",
            spec("y", alloc(500, 100, false), None),
            Code::InvalidArgument,
        ),
        // More than the host has.
        (
            "",
            spec("z", alloc(1_000_000_000, 0, false), None),
            Code::ResourceExhausted,
        ),
        // More than the parent can give (fixed reservation, no expanding).
        (
            &small.id,
            spec("w", alloc(200, 0, false), None),
            Code::ResourceExhausted,
        ),
    ];
    for (parent, spec, code) in cases {
        let name = spec.name.clone();
        let e = create(&agent, parent, spec).await.unwrap_err();
        assert_eq!(e.code(), code, "{name}: {e:?}");
        assert!(!e.message().is_empty());
    }
    let list = agent
        .pools()
        .await
        .list(proto::ListResourcePoolsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.pools.len(), 2, "only root and small exist");
    assert_eq!(
        agent.hierarchy().root().unwrap().children().unwrap(),
        [small.id.as_str()],
        "no cgroup was left behind"
    );
    // The refused child of `small` had its cgroup made before admission
    // refused it: it went again.
    let small_cgroup = agent
        .hierarchy()
        .open(std::path::Path::new(&small.id))
        .unwrap();
    assert!(small_cgroup.children().unwrap().is_empty());
}

#[tokio::test]
async fn acknowledged_pools_survive_kill_9() {
    let mut agent = TestAgent::start("durable");
    let a = create(&agent, "", spec("a", alloc(300, 0, false), None))
        .await
        .unwrap();
    let b = create(&agent, &a.id, spec("b", alloc(100, 0, false), None))
        .await
        .unwrap();
    let updated = agent
        .pools()
        .await
        .update(proto::UpdateResourcePoolRequest {
            id: b.id.clone(),
            spec: Some(spec("b", alloc(200, 0, false), None)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.spec.unwrap().cpu.unwrap().reservation, 200);
    agent.kill9();
    agent.spawn();
    let b_again = agent
        .pools()
        .await
        .get(proto::GetResourcePoolRequest { id: b.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b_again.parent_id, a.id);
    assert_eq!(b_again.spec.unwrap().cpu.unwrap().reservation, 200);
    // Ids keep counting after the restart.
    let c = create(&agent, "", spec("c", None, None)).await.unwrap();
    assert!(c.id != a.id && c.id != b.id);
}

/// Many clients at once share group commits: every create that was
/// answered is there after a kill -9, with its cgroup.
#[tokio::test]
async fn concurrent_creates_are_all_durable() {
    let mut agent = TestAgent::start("groupcommit");
    let mut calls = Vec::new();
    for c in 0..8 {
        let mut client = agent.pools().await;
        calls.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let request = proto::CreateResourcePoolRequest {
                    parent_id: String::new(),
                    spec: Some(spec(&format!("c{c}-{i}"), None, None)),
                };
                ids.push(client.create(request).await.unwrap().into_inner().id);
            }
            ids
        }));
    }
    let mut created = std::collections::BTreeSet::new();
    for call in calls {
        created.extend(call.await.unwrap());
    }
    assert_eq!(created.len(), 200, "200 distinct ids");
    agent.kill9();
    agent.spawn();
    let listed: std::collections::BTreeSet<String> = whole_tree(&agent)
        .await
        .into_iter()
        .map(|p| p.id)
        .filter(|id| id != "root")
        .collect();
    assert_eq!(listed, created);
    let cgroups: std::collections::BTreeSet<String> = agent
        .hierarchy()
        .root()
        .unwrap()
        .children()
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(cgroups, created);
}

async fn whole_tree(agent: &TestAgent) -> Vec<proto::ResourcePool> {
    agent
        .pools()
        .await
        .list(proto::ListResourcePoolsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pools
}

/// The whole-tree list is served from encoded bytes kept between changes:
/// every create, update and delete shows in the next list, and a subtree
/// list agrees with it.
#[tokio::test]
async fn the_whole_tree_list_follows_every_change() {
    let agent = TestAgent::start("treelist");
    let ids = |pools: &[proto::ResourcePool]| -> Vec<String> {
        pools.iter().map(|p| p.id.clone()).collect()
    };
    assert_eq!(ids(&whole_tree(&agent).await), ["root"]);
    let a = create(&agent, "", spec("a", alloc(300, 0, false), None))
        .await
        .unwrap();
    // Twice: the second comes from the cache.
    for _ in 0..2 {
        assert_eq!(ids(&whole_tree(&agent).await), ["root", a.id.as_str()]);
    }
    let b = create(&agent, &a.id, spec("b", alloc(100, 0, false), None))
        .await
        .unwrap();
    let tree = whole_tree(&agent).await;
    assert_eq!(ids(&tree), ["root", a.id.as_str(), b.id.as_str()]);
    assert_eq!(tree[1].child_pool_ids, [b.id.as_str()]);
    agent
        .pools()
        .await
        .update(proto::UpdateResourcePoolRequest {
            id: b.id.clone(),
            spec: Some(spec("b", alloc(200, 0, false), None)),
        })
        .await
        .unwrap();
    let tree = whole_tree(&agent).await;
    let b_listed = tree.iter().find(|p| p.id == b.id).unwrap();
    assert_eq!(
        b_listed.spec.as_ref().unwrap().cpu.unwrap().reservation,
        200
    );
    let subtree = agent
        .pools()
        .await
        .list(proto::ListResourcePoolsRequest {
            root_id: a.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .pools;
    assert_eq!(subtree, tree[1..]);
    agent
        .pools()
        .await
        .delete(proto::DeleteResourcePoolRequest { id: b.id.clone() })
        .await
        .unwrap();
    assert_eq!(ids(&whole_tree(&agent).await), ["root", a.id.as_str()]);
}

#[tokio::test]
async fn host_info_and_capacity() {
    let agent = TestAgent::start("host");
    let info = agent
        .host()
        .await
        .get_info(proto::GetHostInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.cpus >= 1);
    assert!(info.memory_bytes > 0);
    assert_ne!(info.cgroup_version, 0);
    assert!(info.versions.unwrap().vmm.contains("vmm"));
    let cap = agent
        .host()
        .await
        .get_capacity(proto::GetHostCapacityRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cap.total.unwrap().cpu_millicores,
        u64::from(info.cpus) * 1000
    );
}

/// Every directory below the agent's cgroup root, relative to it, in every
/// mounted hierarchy (the ones an OCI runtime makes directories in too).
fn cgroup_dirs(agent: &TestAgent) -> std::collections::BTreeSet<String> {
    let root = agent.hierarchy().root().unwrap();
    let mapping = stratum_runtime::CgroupMapping::detect(&root).unwrap();
    let root_path = mapping.runtime_path(&root).unwrap();
    let mut found = std::collections::BTreeSet::new();
    fn walk(base: &std::path::Path, rel: &str, found: &mut std::collections::BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(base.join(rel)) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                walk(base, &child, found);
                found.insert(child);
            }
        }
    }
    for base in mapping.host_dirs(&root_path) {
        walk(&base, "", &mut found);
    }
    found
}

/// The cgroup paths the agent's pools have (`pool-1`, `pool-1/pool-2`).
async fn pool_paths(agent: &TestAgent) -> std::collections::BTreeSet<String> {
    let pools = agent
        .pools()
        .await
        .list(proto::ListResourcePoolsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pools;
    let parent: std::collections::BTreeMap<String, String> = pools
        .iter()
        .map(|p| (p.id.clone(), p.parent_id.clone()))
        .collect();
    pools
        .iter()
        .filter(|p| !p.parent_id.is_empty())
        .map(|p| {
            let mut chain = vec![p.id.clone()];
            let mut at = p.parent_id.clone();
            while let Some(up) = parent.get(&at).filter(|up| !up.is_empty()) {
                chain.push(at.clone());
                at = up.clone();
            }
            chain.reverse();
            chain.join("/")
        })
        .collect()
}

#[tokio::test]
async fn no_cgroup_outlives_its_record_across_kill_9() {
    let mut agent = TestAgent::start("cgleak");
    let keep = create(&agent, "", spec("keep", None, None)).await.unwrap();
    // Creates in flight when the agent dies: some acknowledged, some made
    // on the host but never committed.
    let url = agent.url();
    let storm = tokio::spawn(async move {
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = proto::resource_pools_client::ResourcePoolsClient::new(channel);
        for i in 0..10_000 {
            let request = proto::CreateResourcePoolRequest {
                parent_id: String::new(),
                spec: Some(spec(&format!("p{i}"), None, None)),
            };
            if client.create(request).await.is_err() {
                return i;
            }
        }
        10_000
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    agent.kill9();
    let sent = storm.await.unwrap();
    assert!(sent > 0, "the storm created nothing before the kill");
    // What a crash can leave and no record names: directories in the
    // managed hierarchies and a nested one; and one a process still runs
    // in, which must be left alone.
    let root = agent.hierarchy().root().unwrap();
    for dir in root.dirs() {
        std::fs::create_dir_all(dir.join("pool-9999")).unwrap();
        std::fs::create_dir_all(dir.join(&keep.id).join("pool-9998")).unwrap();
    }
    let busy = agent.hierarchy().create_pool(&root, "pool-9997").unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    busy.attach_pid(sleeper.id()).unwrap();
    agent.spawn();
    let mut expected = pool_paths(&agent).await;
    assert!(expected.contains(&keep.id));
    expected.insert("pool-9997".into());
    assert_eq!(
        cgroup_dirs(&agent),
        expected,
        "cgroups after the restart are the pools' (and the busy stray)"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// An unreadable record does not keep the agent from starting: it is moved
/// to quarantine, reported in the log, and everything else is served.
#[tokio::test]
async fn an_unreadable_record_is_quarantined_not_fatal() {
    let mut agent = TestAgent::start("quarantine");
    let kept = create(&agent, "", spec("kept", None, None)).await.unwrap();
    agent.kill9();
    {
        let db = redb::Database::create(agent.dir.join("data/state.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        let vms: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("vms");
        tx.open_table(vms)
            .unwrap()
            .insert("vm-77", [9u8, 1, 2, 3].as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    agent.spawn();
    let got = agent
        .pools()
        .await
        .get(proto::GetResourcePoolRequest {
            id: kept.id.clone(),
        })
        .await
        .expect("the agent serves what it could read")
        .into_inner();
    assert_eq!(got.id, kept.id);
    let log = agent.log();
    assert!(
        log.contains("quarantine") && log.contains("vm-77"),
        "the quarantined record is reported:\n{log}"
    );
    let vms = agent
        .vms()
        .await
        .list(proto::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .vms;
    assert!(vms.is_empty(), "{vms:?}");
}
