//! Snapshots and Instant Clones through the real agent's gRPC API, with
//! real jailed `vmm` processes on this host's KVM running a guest that
//! halts forever (clones of a Debian node VM, with their identity, are
//! the nested test host's: tests/tests/vm_clones.rs): the snapshot's files
//! and who may read them, the clones' restore under the snapshot's group,
//! refusals, the records across `kill -9` of the agent, a clone's later
//! cold boot, and the clean-up.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use stratum_api::proto;
use stratum_api::proto::VmState;
use stratum_testkit::test_agent::{
    create_vm, get_vm as get, wait_vm_state as wait_state, TestAgent,
};
use tonic::Code;

fn spec(agent: &TestAgent, name: &str) -> proto::VmSpec {
    agent.halting_vm_spec(name, "")
}

/// The uid and gid a process runs as (the real ones of `Uid:`/`Gid:`).
fn ids_of(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u32 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    (field("Uid:"), field("Gid:"))
}

fn snapshot_dir(agent: &TestAgent, id: &str) -> PathBuf {
    agent.dir.join("data/snapshots").join(id)
}

async fn clone(
    agent: &TestAgent,
    snapshot: &str,
    name: &str,
    count: u32,
) -> Result<Vec<proto::VirtualMachine>, tonic::Status> {
    agent
        .vms()
        .await
        .clone_vm(proto::CloneVmRequest {
            snapshot_id: snapshot.into(),
            name: name.into(),
            count,
            labels: [("from".to_string(), "gold".to_string())].into(),
        })
        .await
        .map(|r| r.into_inner().vms)
}

async fn kill(agent: &TestAgent, id: &str) {
    agent
        .vms()
        .await
        .kill(proto::KillVmRequest { id: id.into() })
        .await
        .unwrap();
    wait_state(agent, id, VmState::Stopped).await;
}

#[tokio::test]
async fn a_running_vm_is_snapshotted_and_cloned_under_the_snapshots_group() {
    let mut agent = TestAgent::start("snapshots");
    let parent = create_vm(&agent, spec(&agent, "parent")).await.unwrap();
    let mut vms = agent.vms().await;

    // Only a running or paused VM, and a DNS label for a name.
    let refused = vms
        .snapshot(proto::SnapshotVmRequest {
            id: parent.id.clone(),
            name: "gold".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    vms.start(proto::StartVmRequest {
        id: parent.id.clone(),
    })
    .await
    .unwrap();
    wait_state(&agent, &parent.id, VmState::Running).await;
    let bad = vms
        .snapshot(proto::SnapshotVmRequest {
            id: parent.id.clone(),
            name: "Gold!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    let snapshot = vms
        .snapshot(proto::SnapshotVmRequest {
            id: parent.id.clone(),
            name: "gold".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snapshot.vm_id, parent.id);
    assert!(snapshot.memory_bytes > 0, "{snapshot:?}");
    assert!(snapshot.clones.is_empty());
    // The parent runs on.
    assert_eq!(
        get(&agent, &parent.id).await.status.unwrap().state(),
        VmState::Running
    );
    let again = vms
        .snapshot(proto::SnapshotVmRequest {
            id: parent.id.clone(),
            name: "gold".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

    // Its files: root's and the snapshot's group's only.
    let dir = snapshot_dir(&agent, &snapshot.id);
    let gid = std::fs::metadata(&dir).unwrap().gid();
    assert_ne!(gid, 0);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o750
    );
    for file in ["snapshot.state", "snapshot.mem"] {
        let meta = std::fs::metadata(dir.join(file)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, gid), "{file}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{file}");
    }

    // Refusals change nothing.
    let too_many = clone(&agent, &snapshot.id, "c", 65).await.unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument, "{too_many:?}");
    let unknown = clone(&agent, "snap-999", "c", 1).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let taken = clone(&agent, &snapshot.id, "parent", 1).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    let listed = vms
        .list(proto::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.vms.len(), 1, "nothing made: {listed:?}");

    // Three clones, restored: each its own uid, all the snapshot's group.
    let clones = clone(&agent, &snapshot.id, "c", 3).await.unwrap();
    let names: Vec<&str> = clones
        .iter()
        .map(|vm| vm.spec.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["c-1", "c-2", "c-3"]);
    let mut uids = std::collections::BTreeSet::new();
    for vm in &clones {
        let status = vm.status.clone().unwrap();
        assert_eq!(status.state(), VmState::Running, "{vm:?}");
        assert_eq!(
            vm.spec
                .as_ref()
                .unwrap()
                .labels
                .get("from")
                .map(String::as_str),
            Some("gold")
        );
        let (uid, process_gid) = ids_of(status.pid);
        assert_eq!(
            process_gid, gid,
            "a clone's vmm runs as the snapshot's group"
        );
        assert_eq!(uid, status.uid);
        uids.insert(uid);
    }
    assert_eq!(uids.len(), 3);
    let listed = vms
        .get_snapshot(proto::GetSnapshotRequest {
            id: snapshot.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.clones.len(), 3);

    // Held while its clones run; kept across a crash of the agent.
    let held = vms
        .delete_snapshot(proto::DeleteSnapshotRequest {
            id: snapshot.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(held.code(), Code::FailedPrecondition, "{held:?}");
    agent.kill9();
    agent.spawn();
    let mut vms = agent.vms().await;
    let after = vms
        .list_snapshots(proto::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].name, "gold");
    assert_eq!(after[0].clones.len(), 3);
    for vm in &clones {
        assert_eq!(
            get(&agent, &vm.id).await.status.unwrap().state(),
            VmState::Running
        );
    }

    // A clone stopped and started again boots its own disks (no restore:
    // its vmm runs as its own group).
    kill(&agent, &clones[0].id).await;
    vms.start(proto::StartVmRequest {
        id: clones[0].id.clone(),
    })
    .await
    .unwrap();
    let rebooted = wait_state(&agent, &clones[0].id, VmState::Running).await;
    let status = rebooted.status.unwrap();
    assert_eq!(ids_of(status.pid), (status.uid, status.uid));

    for vm in &clones {
        kill(&agent, &vm.id).await;
        vms.delete(proto::DeleteVmRequest { id: vm.id.clone() })
            .await
            .unwrap();
    }
    vms.delete_snapshot(proto::DeleteSnapshotRequest {
        id: snapshot.id.clone(),
    })
    .await
    .unwrap();
    assert!(!dir.exists(), "the snapshot's files are gone");
    let gone = vms
        .get_snapshot(proto::GetSnapshotRequest {
            id: snapshot.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    kill(&agent, &parent.id).await;
    assert!(no_files_below(&agent.dir.join("data/snapshots")));
}

#[tokio::test]
async fn snapshots_need_the_vm_jail() {
    let agent = TestAgent::start_with("snapshots-unjailed", &["--no-vm-jail"]);
    let vm = create_vm(&agent, spec(&agent, "plain")).await.unwrap();
    let mut vms = agent.vms().await;
    vms.start(proto::StartVmRequest { id: vm.id.clone() })
        .await
        .unwrap();
    wait_state(&agent, &vm.id, VmState::Running).await;
    let refused = vms
        .snapshot(proto::SnapshotVmRequest {
            id: vm.id.clone(),
            name: "gold".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("jail"), "{refused:?}");
    kill(&agent, &vm.id).await;
}

fn no_files_below(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}
