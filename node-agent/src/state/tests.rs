//! Store behaviour on real files: round trips, reopening, durability across
//! an aborted process, atomic commits, and unreadable records.

use std::process::Command;

use redb::TableDefinition;
use tempfile::TempDir;

use super::*;
use crate::records::{PoolRecord, VmRecord, VmRuntime};
use stratum_api::proto::{DiskSpec, ResourcePoolSpec, VmRole, VmSpec, VmState};

/// Set in the child process of [`a_put_survives_abort`]: the database path.
const ABORT_CHILD_ENV: &str = "STRATUM_STATE_TEST_ABORT_DB";

fn scratch() -> (TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    (dir, path)
}

fn pool(id: &str, name: &str) -> PoolRecord {
    PoolRecord {
        id: id.into(),
        parent_id: "root".into(),
        spec: Some(ResourcePoolSpec {
            name: name.into(),
            ..Default::default()
        }),
        created_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        }),
    }
}

fn vm(id: &str) -> VmRecord {
    VmRecord {
        id: id.into(),
        spec: Some(VmSpec {
            name: format!("{id}-name"),
            pool_id: "pool-1".into(),
            role: VmRole::Etcd.into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: "/k/vmlinux".into(),
            disks: vec![DiskSpec {
                base_image: "/img/base.raw".into(),
                read_only: false,
                serial: "etcd-data".into(),
                ..Default::default()
            }],
            labels: [("tier".to_string(), "db".to_string())].into(),
            ..Default::default()
        }),
        runtime: Some(VmRuntime {
            state: VmState::Running.into(),
            pid: 4242,
            process_start_time: 987_654,
            control_socket: "/run/stratum/vm-1.sock".into(),
            cgroup_path: "stratum/pool-1/vm-1".into(),
            disk_paths: vec!["/var/lib/stratum/vm-1/disk0.raw".into()],
            ..Default::default()
        }),
        created_at: None,
    }
}

#[test]
fn records_round_trip() {
    let (_dir, path) = scratch();
    let store = Store::open(&path).unwrap();
    store.put_pool(&pool("pool-1", "prod")).unwrap();
    store.put_vm(&vm("vm-1")).unwrap();
    assert_eq!(
        store.get_pool("pool-1").unwrap(),
        Some(pool("pool-1", "prod"))
    );
    assert_eq!(store.get_vm("vm-1").unwrap(), Some(vm("vm-1")));
    assert_eq!(store.get_vm("vm-2").unwrap(), None);
}

#[test]
fn put_replaces_and_delete_removes() {
    let (_dir, path) = scratch();
    let store = Store::open(&path).unwrap();
    store.put_pool(&pool("pool-1", "prod")).unwrap();
    store.put_pool(&pool("pool-1", "staging")).unwrap();
    assert_eq!(store.list_pools().unwrap(), [pool("pool-1", "staging")]);
    assert!(store.delete_pool("pool-1").unwrap());
    assert!(!store.delete_pool("pool-1").unwrap());
    assert!(store.list_pools().unwrap().is_empty());
}

#[test]
fn lists_are_in_id_order() {
    let (_dir, path) = scratch();
    let store = Store::open(&path).unwrap();
    for id in ["vm-3", "vm-1", "vm-2"] {
        store.put_vm(&vm(id)).unwrap();
    }
    let ids: Vec<_> = store
        .list_vms()
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, ["vm-1", "vm-2", "vm-3"]);
}

#[test]
fn data_and_ids_survive_reopening() {
    let (_dir, path) = scratch();
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load().unwrap().next_id, 1);
        store.commit(&[Change::ReserveIdsBelow(3)]).unwrap();
        store.put_pool(&pool("pool-1", "prod")).unwrap();
        store.put_vm(&vm("vm-1")).unwrap();
    }
    let store = Store::open(&path).unwrap();
    let snapshot = store.load().unwrap();
    assert_eq!(snapshot.pools, [pool("pool-1", "prod")]);
    assert_eq!(snapshot.vms, [vm("vm-1")]);
    assert_eq!(snapshot.next_id, 3);
    // The sequence only grows: a lower reservation changes nothing.
    store.commit(&[Change::ReserveIdsBelow(2)]).unwrap();
    assert_eq!(store.load().unwrap().next_id, 3);
}

#[test]
fn a_fresh_store_loads_empty() {
    let (_dir, path) = scratch();
    let snapshot = Store::open(&path).unwrap().load().unwrap();
    assert_eq!(
        snapshot,
        Snapshot {
            next_id: 1,
            ..Snapshot::default()
        }
    );
}

/// In the child: write, then abort with no destructor, flush or exit
/// handler run. In the parent: the child must have died of SIGABRT and
/// everything it was told was committed must be there.
#[test]
fn a_put_survives_abort() {
    if let Some(path) = std::env::var_os(ABORT_CHILD_ENV) {
        let store = Store::open(&path).unwrap();
        store.put_vm(&vm("vm-1")).unwrap();
        store.commit(&[Change::ReserveIdsBelow(2)]).unwrap();
        std::process::abort();
    }
    let (_dir, path) = scratch();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "state::tests::a_put_survives_abort",
            "--nocapture",
        ])
        .env(ABORT_CHILD_ENV, &path)
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    const SIGABRT: i32 = 6;
    assert_eq!(status.signal(), Some(SIGABRT), "child: {status:?}");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.get_vm("vm-1").unwrap(), Some(vm("vm-1")));
    assert_eq!(store.load().unwrap().next_id, 2);
}

#[test]
fn a_commit_is_all_or_nothing() {
    let (_dir, path) = scratch();
    let store = Store::open(&path).unwrap();
    store.put_pool(&pool("pool-1", "prod")).unwrap();
    let bad = VmRecord {
        runtime: None,
        ..vm("vm-2")
    };
    let changes = [
        Change::PutVm(Box::new(vm("vm-1"))),
        Change::DeletePool("pool-1".into()),
        Change::PutVm(Box::new(bad)),
    ];
    let err = store.commit(&changes).unwrap_err();
    assert!(
        matches!(err, StoreError::InvalidRecord { table: "vms", .. }),
        "{err}"
    );
    assert_eq!(store.list_pools().unwrap().len(), 1);
    assert!(store.list_vms().unwrap().is_empty());
    store.commit(&changes[..2]).unwrap();
    assert!(store.list_pools().unwrap().is_empty());
    assert_eq!(store.list_vms().unwrap(), [vm("vm-1")]);
}

#[test]
fn unusable_records_are_refused_before_writing() {
    let (_dir, path) = scratch();
    let store = Store::open(&path).unwrap();
    let err = store.put_pool(&pool("", "prod")).unwrap_err();
    assert!(matches!(err, StoreError::InvalidRecord { .. }));
    assert!(store.list_pools().unwrap().is_empty());
}

#[test]
fn unreadable_records_are_typed_errors_and_quarantined_at_load() {
    let (_dir, path) = scratch();
    let store = Store::open(&path).unwrap();
    store.put_vm(&vm("vm-1")).unwrap();
    store
        .put_raw::<VmRecord>("vm-2", &[1, 0xff, 0xff, 0xff, 0x0f])
        .unwrap();
    store
        .put_raw::<PoolRecord>("pool-9", &[7, 0, 1, 2])
        .unwrap();
    let err = store.get_vm("vm-2").unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { table: "vms", ref key, .. } if key == "vm-2"),
        "{err}"
    );
    assert!(store.get_vm("vm-1").is_ok(), "other records stay readable");
    let err = store.get_pool("pool-9").unwrap_err();
    assert!(err.to_string().contains("format version 7"), "{err}");
    assert!(matches!(store.list_vms(), Err(StoreError::Corrupt { .. })));

    // Loading moves the unreadable records aside and keeps the rest.
    let snapshot = store
        .load()
        .expect("a load with unreadable records succeeds");
    assert_eq!(snapshot.vms.len(), 1);
    assert_eq!(snapshot.vms[0].id, "vm-1");
    let mut moved: Vec<_> = snapshot
        .quarantined
        .iter()
        .map(|q| format!("{}/{}", q.table, q.key))
        .collect();
    moved.sort();
    assert_eq!(moved, ["pools/pool-9", "vms/vm-2"]);
    assert!(store.get_vm("vm-2").unwrap().is_none());
    assert_eq!(store.list_vms().unwrap().len(), 1);
    let kept = store.quarantine().unwrap();
    assert_eq!(
        kept,
        [("pools/pool-9".to_string(), 4), ("vms/vm-2".to_string(), 5)]
    );
    drop(store);
    let again = Store::open(&path).unwrap().load().unwrap();
    assert!(again.quarantined.is_empty(), "quarantined once");
}

/// Writes `version` as the file's schema version, behind the store's back.
fn set_schema(path: &std::path::Path, version: u64) {
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    let meta: TableDefinition<&str, u64> = TableDefinition::new("meta");
    tx.open_table(meta)
        .unwrap()
        .insert("schema_version", version)
        .unwrap();
    tx.commit().unwrap();
}

#[test]
fn a_newer_schema_is_refused() {
    let (_dir, path) = scratch();
    drop(Store::open(&path).unwrap());
    set_schema(&path, SCHEMA_VERSION + 1);
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnknownSchema { found, supported: SCHEMA_VERSION } if found == SCHEMA_VERSION + 1
        ),
        "{err}"
    );
}

/// A version 1 data dir: the agent's file, and the pod network's own file
/// beside it with an attached pod and a policy.
fn v1_data_dir() -> (TempDir, std::path::PathBuf, stratum_net::cidr::Ipv4Cidr) {
    let (dir, path) = scratch();
    let store = Store::open(&path).unwrap();
    store.put_pool(&pool("pool-1", "web")).unwrap();
    drop(store);
    set_schema(&path, 1);
    let cidr: stratum_net::cidr::Ipv4Cidr = "10.77.0.0/24".parse().unwrap();
    let podnet = stratum_net::store::Store::open(&dir.path().join(PODNET_FILE_V1), cidr).unwrap();
    let default = stratum_net::NetworkRecord {
        name: stratum_net::DEFAULT_NETWORK.into(),
        bridge: "stratum0".into(),
        cidr,
        nat: true,
        namespaces: Vec::new(),
        nameservers: Vec::new(),
        created_at: 0,
    };
    podnet
        .attach("pod-7", &default, |ip| stratum_net::store::PodRecord {
            pod_id: "pod-7".into(),
            network: stratum_net::DEFAULT_NETWORK.into(),
            namespace: "pool-1".into(),
            ip,
            host_veth: "veth-pod7".into(),
            netns: "/run/stratum/netns/pod-7".into(),
            port_mappings: Vec::new(),
        })
        .unwrap();
    podnet.allow("pool-1", "pool-2").unwrap();
    // The image index as a version 1 agent wrote it.
    let record = stratum_image::ImageRecord {
        id: digest('c'),
        manifest_digest: digest('m'),
        references: vec!["registry.local/busybox:1.36".into()],
        layers: Vec::new(),
        config: Default::default(),
        size_bytes: 4096,
        stored_at_unix: 1_700_000_000,
    };
    std::fs::create_dir_all(dir.path().join("images")).unwrap();
    std::fs::write(
        dir.path().join(IMAGE_INDEX_V1),
        serde_json::to_vec(&serde_json::json!({ "version": 1, "images": [record] })).unwrap(),
    )
    .unwrap();
    (dir, path, cidr)
}

fn digest(fill: char) -> stratum_image::Digest {
    let hex: String = std::iter::repeat_n(if fill == 'm' { 'a' } else { 'b' }, 64).collect();
    stratum_image::Digest::parse(&format!("sha256:{hex}")).unwrap()
}

#[test]
fn a_version_1_file_migrates_and_takes_the_pod_network_in() {
    let (dir, path, cidr) = v1_data_dir();
    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.list_pools().unwrap().len(),
        1,
        "the agent's records stay"
    );
    let podnet = stratum_net::store::Store::with_db(store.database(), cidr).unwrap();
    let loaded = podnet.load().unwrap();
    let pod = loaded
        .pods
        .get("pod-7")
        .expect("the pod network's record moved in");
    assert_eq!(pod.host_veth, "veth-pod7");
    assert_eq!(
        podnet.ipam().unwrap().get("pod-7").unwrap(),
        Some(pod.ip),
        "its address is still allocated to it"
    );
    assert!(loaded
        .policies
        .contains(&("pool-1".to_string(), "pool-2".to_string())));
    assert!(!dir.path().join(PODNET_FILE_V1).exists());
    assert!(dir.path().join("podnet.redb.migrated").exists());
    let images = stratum_image::ImageStore::open_shared(dir.path(), store.database()).unwrap();
    let listed = images.list();
    assert_eq!(listed.len(), 1, "the image index moved in");
    assert_eq!(listed[0].references, ["registry.local/busybox:1.36"]);
    assert_eq!(listed[0].manifest_digest, digest('m'));
    assert!(!dir.path().join(IMAGE_INDEX_V1).exists());
    assert!(dir.path().join("images/index.json.migrated").exists());
    drop(images);
    // The next address is not the migrated one.
    let next = podnet.ipam().unwrap().allocate("pod-8").unwrap();
    assert_ne!(next, pod.ip);
    drop((podnet, store));
    // Reopened: version 2 now, nothing to migrate.
    let again = Store::open(&path).unwrap();
    let podnet = stratum_net::store::Store::with_db(again.database(), cidr).unwrap();
    assert_eq!(podnet.load().unwrap().pods.len(), 1);
    let images = stratum_image::ImageStore::open_shared(dir.path(), again.database()).unwrap();
    assert_eq!(images.list().len(), 1);
}

#[test]
fn a_failed_migration_changes_nothing() {
    let (dir, path, _cidr) = v1_data_dir();
    let podnet_file = dir.path().join(PODNET_FILE_V1);
    std::fs::write(
        &podnet_file,
        b"not a redb file, and long enough to look like one",
    )
    .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::Migration { from: 1, .. }),
        "{err}"
    );
    assert!(podnet_file.exists(), "the old file stays where it was");
    // Still version 1, and the image index was not taken either: without
    // the broken file it migrates.
    std::fs::remove_file(&podnet_file).unwrap();
    let store = Store::open(&path).unwrap();
    assert_eq!(store.list_pools().unwrap().len(), 1);
    let images = stratum_image::ImageStore::open_shared(dir.path(), store.database()).unwrap();
    assert_eq!(images.list().len(), 1);
}

#[test]
fn a_file_that_is_not_a_database_is_an_open_error() {
    let (_dir, path) = scratch();
    std::fs::write(
        &path,
        b"this is not a redb file, just some text that is long enough",
    )
    .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    let missing_dir = path.join("no/such/dir/state.redb");
    assert!(matches!(
        Store::open(missing_dir),
        Err(StoreError::Open { .. })
    ));
}
