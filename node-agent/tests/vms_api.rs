//! VMs through the real agent's gRPC API, with real `vmm` processes on
//! this host's KVM running a guest that halts forever (real Linux guests
//! run in the nested test host: tests/tests/node_agent.rs): lifecycle,
//! cgroup placement, events, bad specs, host files outside the artifact
//! directories, quotas, admission, a vmm that dies, and re-adoption after
//! kill -9 of the agent.

// Test helpers may panic: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use stratum_api::proto;
use stratum_api::proto::VmState;
use stratum_testkit::test_agent::{
    create_vm, emulation_failure_kernel, fat_file, get_vm as get, halting_kernel,
    vm_state as state, wait_vm_state as wait_state, TestAgent,
};
use tokio_stream::StreamExt;
use tonic::Code;

fn vm_spec(agent: &TestAgent, name: &str, pool: &str) -> proto::VmSpec {
    agent.halting_vm_spec(name, pool)
}

/// Starts VM `id` and checks it runs.
async fn start_running(agent: &TestAgent, id: &str) {
    let started = agent
        .vms()
        .await
        .start(proto::StartVmRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&started), VmState::Running, "{}", agent.log());
}

/// What VM `id`'s vmm holds as its configuration (`GET /vm/config`).
fn vmm_config(agent: &TestAgent, id: &str) -> serde_json::Value {
    let run_dir = stratum_vm::RunDir::new(agent.dir.join("data/vms").join(id).join("run"));
    stratum_vm::ApiClient::new(run_dir.api_sock())
        .vm_config()
        .unwrap()
}

/// Kills VM `id`, waits until it is STOPPED, deletes it.
async fn kill_and_delete(agent: &TestAgent, id: &str) {
    let mut vms = agent.vms().await;
    vms.kill(proto::KillVmRequest { id: id.into() })
        .await
        .unwrap();
    wait_state(agent, id, VmState::Stopped).await;
    vms.delete(proto::DeleteVmRequest { id: id.into() })
        .await
        .unwrap();
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn a_disks_rate_limit_reaches_its_vmm() {
    let agent = TestAgent::start("ratelimit");
    let base = agent.dir.join("limited.img");
    std::fs::File::create(&base)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let bucket = |size, refill_time_ms| proto::TokenBucket {
        size,
        refill_time_ms,
        one_time_burst: 0,
    };
    let disk = |refill_time_ms| proto::DiskSpec {
        base_image: base.to_string_lossy().into_owned(),
        rate_limit: Some(proto::RateLimit {
            bandwidth: Some(bucket(4 << 20, refill_time_ms)),
            ops: Some(bucket(0, 1000)),
        }),
        ..Default::default()
    };
    // A refill time vmm would refuse is refused at create.
    let too_slow = proto::VmSpec {
        disks: vec![disk(366 * 24 * 3600 * 1000)],
        ..vm_spec(&agent, "too-slow", "")
    };
    let err = create_vm(&agent, too_slow).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    let spec = proto::VmSpec {
        disks: vec![proto::DiskSpec {
            size_mib: 8,
            ..disk(1000)
        }],
        ..vm_spec(&agent, "limited", "")
    };
    let vm = create_vm(&agent, spec).await.unwrap();
    let clone = agent.dir.join("data/vms").join(&vm.id).join("disk0.img");
    assert_eq!(
        std::fs::metadata(&clone).unwrap().len(),
        8 << 20,
        "the clone is grown to size_mib"
    );
    start_running(&agent, &vm.id).await;
    let config = vmm_config(&agent, &vm.id);
    assert_eq!(
        config["drives"][0]["path_on_host"], "/vm/disk0",
        "the jailed vmm sees its disk at its jail path: {config}"
    );
    let limiter = &config["drives"][0]["rate_limiter"];
    assert_eq!(limiter["bandwidth"]["size"], 4 << 20, "{config}");
    assert_eq!(limiter["bandwidth"]["refill_time"], 1000, "{config}");
    // A bucket of size 0 limits nothing and is not sent.
    assert!(limiter["ops"].is_null(), "{config}");
    // It reserves all its memory: nothing may be taken, no balloon.
    assert!(config["balloon"].is_null(), "{config}");
}

/// A VM that reserves less than its memory runs with a balloon, empty at
/// boot, that the guest may deflate rather than OOM-kill and that reports
/// the guest's memory every second: the memory reclaim's handle on it.
#[tokio::test]
async fn an_overcommitted_vm_gets_a_balloon() {
    let agent = TestAgent::start("balloon");
    let spec = proto::VmSpec {
        memory_reservation_mib: Some(16),
        ..vm_spec(&agent, "overcommitted", "")
    };
    let vm = create_vm(&agent, spec).await.unwrap();
    start_running(&agent, &vm.id).await;
    let config = vmm_config(&agent, &vm.id);
    let balloon = &config["balloon"];
    assert_eq!(balloon["amount_mib"], 0, "{config}");
    assert_eq!(balloon["deflate_on_oom"], true, "{config}");
    assert_eq!(balloon["stats_polling_interval_s"], 1, "{config}");
}

#[tokio::test]
async fn a_vm_runs_in_its_pool_cgroup_through_its_lifecycle() {
    let agent = TestAgent::start("lifecycle");
    let mut events = agent
        .vms()
        .await
        .watch(proto::WatchVmsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // A sparse 64 MiB base image with some data: the VM gets its own clone.
    let base = agent.dir.join("base.img");
    let file = std::fs::File::create(&base).unwrap();
    file.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"stratum-base", 1 << 20).unwrap();
    let spec = proto::VmSpec {
        disks: vec![proto::DiskSpec {
            base_image: base.to_string_lossy().into_owned(),
            serial: "root".into(),
            ..Default::default()
        }],
        ..vm_spec(&agent, "worker-1", "")
    };
    let vm = create_vm(&agent, spec).await.unwrap();
    assert_eq!(state(&vm), VmState::Created);
    let clone = agent.dir.join("data/vms").join(&vm.id).join("disk0.img");
    assert_eq!(
        std::fs::read(&clone).unwrap(),
        std::fs::read(&base).unwrap()
    );
    let started = agent
        .vms()
        .await
        .start(proto::StartVmRequest { id: vm.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&started), VmState::Running, "{}", agent.log());
    let pid = started.status.as_ref().unwrap().pid;
    assert!(pid_alive(pid));
    let leaf = agent.cgroup(&format!("vm-{}", vm.id));
    assert_eq!(
        leaf.procs().unwrap(),
        [pid],
        "the vmm runs in the VM's leaf cgroup"
    );
    // In its jail: the first uid of the agent's range, its own PID
    // namespace, no capabilities, vmm's seccomp filters; its disk is its.
    let uid = started.status.as_ref().unwrap().uid;
    assert_eq!(uid, 1_900_000_000);
    // vmm's main thread confines itself once it has taken the VM over,
    // just after the API answered the start.
    let mut status = String::new();
    for _ in 0..200 {
        status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        if status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2'))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(
        field("Uid:"),
        format!("{uid}\t{uid}\t{uid}\t{uid}"),
        "{status}"
    );
    assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert_eq!(field("NSpid:"), format!("{pid}\t1"), "{status}");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&clone).unwrap().uid(), uid);
    let reservation = started.status.as_ref().unwrap().reservation.unwrap();
    assert_eq!(
        reservation.memory_bytes,
        (32 + 16) << 20,
        "guest RAM + VMM overhead"
    );

    let paused = agent
        .vms()
        .await
        .pause(proto::PauseVmRequest { id: vm.id.clone() })
        .await
        .unwrap();
    assert_eq!(state(paused.get_ref()), VmState::Paused);
    let e = agent
        .vms()
        .await
        .pause(proto::PauseVmRequest { id: vm.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    agent
        .vms()
        .await
        .resume(proto::ResumeVmRequest { id: vm.id.clone() })
        .await
        .unwrap();
    let e = agent
        .vms()
        .await
        .delete(proto::DeleteVmRequest { id: vm.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "a running VM cannot be deleted"
    );

    agent
        .vms()
        .await
        .kill(proto::KillVmRequest { id: vm.id.clone() })
        .await
        .unwrap();
    let stopped = wait_state(&agent, &vm.id, VmState::Stopped).await;
    assert!(!pid_alive(pid) || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_err());
    assert!(
        stopped.status.unwrap().reservation.is_none(),
        "a stopped VM holds no reservation"
    );
    assert!(!leaf.exists(), "the leaf cgroup is removed");

    let mut seen = Vec::new();
    while seen.len() < 5 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        seen.push(event.new_state());
    }
    assert_eq!(
        seen,
        [
            VmState::Starting,
            VmState::Running,
            VmState::Paused,
            VmState::Running,
            VmState::Stopping
        ]
    );
    let last = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(last.new_state(), VmState::Stopped);

    agent
        .vms()
        .await
        .delete(proto::DeleteVmRequest { id: vm.id.clone() })
        .await
        .unwrap();
    let e = agent
        .vms()
        .await
        .get(proto::GetVmRequest { id: vm.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(!agent.dir.join("data/vms").join(&vm.id).exists());
}

/// A spec that names only its role gets the role's size and shares,
/// stored as the VM's spec.
#[tokio::test]
async fn a_roles_template_fills_what_the_spec_leaves_out() {
    let agent = TestAgent::start("roles");
    let spec = proto::VmSpec {
        role: proto::VmRole::Etcd as i32,
        vcpus: 0,
        memory_mib: 0,
        ..vm_spec(&agent, "etcd-0", "")
    };
    let vm = create_vm(&agent, spec).await.unwrap();
    let spec = vm.spec.unwrap();
    assert_eq!((spec.vcpus, spec.memory_mib), (2, 2048));
    assert_eq!(spec.cpu_shares.unwrap().level(), proto::SharesLevel::High);
    let reservation = vm.status.unwrap().reservation;
    assert!(reservation.is_none(), "nothing reserved before a start");
    let stored = get(&agent, &vm.id).await.spec.unwrap();
    assert_eq!((stored.vcpus, stored.memory_mib), (2, 2048));
}

/// What `mtype` (Debian's mtools) reads of `file` on the FAT volume `image`.
/// A VM with cloud-init data gets its NoCloud seed at create, attached
/// read-only after its disks at start (as its jail sees it), and loses it
/// with the VM.
#[tokio::test]
async fn a_cloud_init_seed_is_made_attached_and_removed_with_the_vm() {
    let agent = TestAgent::start("seed");
    let tap = format!("sts{}", std::process::id() % 100_000);
    let made = std::process::Command::new("ip")
        .args(["tuntap", "add", "dev", &tap, "mode", "tap"])
        .status()
        .unwrap();
    assert!(made.success(), "ip tuntap add {tap}");
    struct Tap(String);
    impl Drop for Tap {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .status();
        }
    }
    let _tap = Tap(tap.clone());
    let user_data = "#cloud-config\nhostname: seeded\n";
    let spec = proto::VmSpec {
        cloud_init: Some(proto::CloudInit {
            user_data: user_data.as_bytes().to_vec(),
            meta_data: [("zone".to_string(), "rack-7".to_string())].into(),
            metadata_service: true,
        }),
        nics: vec![proto::NicSpec {
            tap_name: tap.clone(),
            mac: "06:00:00:00:00:0A".into(),
            addresses: vec!["10.9.0.2/24".into()],
            gateway: "10.9.0.1".into(),
            ..Default::default()
        }],
        ..vm_spec(&agent, "seeded", "")
    };
    let vm = create_vm(&agent, spec).await.unwrap();
    let vm_dir = agent.dir.join("data/vms").join(&vm.id);
    let seed = vm_dir.join("seed.img");
    assert_eq!(fat_file(&seed, "user-data"), user_data);
    let meta: serde_json::Value = serde_json::from_str(&fat_file(&seed, "meta-data")).unwrap();
    assert_eq!(meta["instance-id"], vm.id.as_str());
    assert_eq!(meta["local-hostname"], "seeded");
    assert_eq!(meta["zone"], "rack-7");
    let net: serde_json::Value = serde_json::from_str(&fat_file(&seed, "network-config")).unwrap();
    let nic = &net["ethernets"]["nic0"];
    assert_eq!(nic["match"]["macaddress"], "06:00:00:00:00:0a", "{net}");
    assert_eq!(nic["addresses"][0], "10.9.0.2/24", "{net}");
    assert_eq!(nic["routes"][0]["via"], "10.9.0.1", "{net}");

    let started = agent
        .vms()
        .await
        .start(proto::StartVmRequest { id: vm.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&started), VmState::Running, "{}", agent.log());
    let run_dir = stratum_vm::RunDir::new(vm_dir.join("run"));
    let config = stratum_vm::ApiClient::new(run_dir.api_sock())
        .vm_config()
        .unwrap();
    let drives = config["drives"].as_array().unwrap();
    assert_eq!(drives.len(), 1, "the seed is the only disk: {config}");
    assert_eq!(drives[0]["path_on_host"], "/vm/disk0", "{config}");
    assert_eq!(drives[0]["is_read_only"], true, "{config}");
    assert_eq!(config["vsock"]["uds_path"], "/run/vsock.sock", "{config}");
    // The same files from the metadata service, V2 on the NIC.
    assert_eq!(config["mmds-config"]["version"], "V2", "{config}");
    assert_eq!(
        config["mmds-config"]["network_interfaces"],
        serde_json::json!(["net0"]),
        "{config}"
    );
    let served = stratum_vm::ApiClient::new(run_dir.api_sock())
        .mmds()
        .unwrap();
    let latest = &served["latest"];
    assert_eq!(latest["user-data"], user_data, "{served}");
    assert_eq!(
        latest["meta-data"].as_str(),
        Some(fat_file(&seed, "meta-data").as_str()),
        "{served}"
    );
    assert_eq!(
        latest["network-config"].as_str(),
        Some(fat_file(&seed, "network-config").as_str()),
        "{served}"
    );

    kill_and_delete(&agent, &vm.id).await;
    assert!(!vm_dir.exists(), "the seed went with the VM");
}

#[tokio::test]
async fn bad_vm_specs_get_their_codes_and_leave_nothing() {
    let agent = TestAgent::start("badvms");
    create_vm(&agent, vm_spec(&agent, "taken", ""))
        .await
        .unwrap();
    let base = vm_spec(&agent, "x", "");
    // The test agent's artifact directory is its working directory.
    let artifact = |name: &str| agent.dir.join(name).to_string_lossy().into_owned();
    let escaping_link = artifact("shadow-link");
    std::os::unix::fs::symlink("/etc/shadow", &escaping_link).unwrap();
    let cases: Vec<(&str, proto::VmSpec, Code)> = vec![
        (
            "more vCPUs than a VM may have",
            proto::VmSpec {
                vcpus: 255,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "no role, so no template for the missing size",
            proto::VmSpec {
                role: proto::VmRole::Unspecified as i32,
                vcpus: 0,
                memory_mib: 0,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "beyond the host",
            proto::VmSpec {
                memory_mib: 1 << 30,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "missing kernel",
            proto::VmSpec {
                kernel: artifact("no-such-vmlinux"),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "missing disk base",
            proto::VmSpec {
                disks: vec![proto::DiskSpec {
                    base_image: artifact("no-such.img"),
                    ..Default::default()
                }],
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "kernel outside the artifact directories",
            proto::VmSpec {
                kernel: "/etc/shadow".into(),
                ..base.clone()
            },
            Code::PermissionDenied,
        ),
        (
            "initrd outside the artifact directories",
            proto::VmSpec {
                initrd: "/etc/passwd".into(),
                ..base.clone()
            },
            Code::PermissionDenied,
        ),
        (
            "disk cloned from outside the artifact directories",
            proto::VmSpec {
                disks: vec![proto::DiskSpec {
                    base_image: "/etc/shadow".into(),
                    ..Default::default()
                }],
                ..base.clone()
            },
            Code::PermissionDenied,
        ),
        (
            "disk through a link that leaves the artifact directories",
            proto::VmSpec {
                disks: vec![proto::DiskSpec {
                    base_image: escaping_link.clone(),
                    ..Default::default()
                }],
                ..base.clone()
            },
            Code::PermissionDenied,
        ),
        (
            "kernel through '..'",
            proto::VmSpec {
                kernel: format!("{}/../../etc/shadow", agent.dir.display()),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "bad name",
            proto::VmSpec {
                name: "Not A Label".into(),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "no role",
            proto::VmSpec {
                role: 0,
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "name in use",
            proto::VmSpec {
                name: "taken".into(),
                ..base.clone()
            },
            Code::AlreadyExists,
        ),
        (
            "unknown pool",
            proto::VmSpec {
                pool_id: "pool-999".into(),
                ..base.clone()
            },
            Code::NotFound,
        ),
        (
            "CPU limit below the reservation",
            proto::VmSpec {
                cpu_reservation_millicores: Some(500),
                cpu_limit_millicores: Some(200),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "MAC that is no MAC",
            proto::VmSpec {
                nics: vec![proto::NicSpec {
                    tap_name: "tap0".into(),
                    mac: "zz:zz".into(),
                    ..Default::default()
                }],
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "multicast MAC",
            proto::VmSpec {
                nics: vec![proto::NicSpec {
                    tap_name: "tap0".into(),
                    mac: "01:00:5e:00:00:01".into(),
                    ..Default::default()
                }],
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
        (
            "a 10 kB name",
            proto::VmSpec {
                name: "x".repeat(10_000),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
    ];
    let cloud_init = |user_data: Vec<u8>, key: &str| proto::VmSpec {
        cloud_init: Some(proto::CloudInit {
            user_data,
            meta_data: [(key.to_string(), "v".to_string())].into(),
            metadata_service: false,
        }),
        ..base.clone()
    };
    let served = |user_data: &[u8], nics: Vec<proto::NicSpec>| proto::VmSpec {
        cloud_init: Some(proto::CloudInit {
            user_data: user_data.to_vec(),
            metadata_service: true,
            ..Default::default()
        }),
        nics,
        ..base.clone()
    };
    let tap0 = proto::NicSpec {
        tap_name: "tap0".into(),
        ..Default::default()
    };
    let two_mib = agent.dir.join("two-mib.img");
    std::fs::File::create(&two_mib)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let sized_disk = |size_mib| proto::VmSpec {
        disks: vec![proto::DiskSpec {
            base_image: two_mib.to_string_lossy().into_owned(),
            size_mib,
            ..Default::default()
        }],
        ..base.clone()
    };
    // A NIC on tap0 with what `nic` says of it.
    let with_nic = |nic: proto::NicSpec| proto::VmSpec {
        nics: vec![proto::NicSpec {
            tap_name: "tap0".into(),
            ..nic
        }],
        ..base.clone()
    };
    let cases = cases.into_iter().chain([
        (
            "a disk smaller than its base image",
            sized_disk(1),
            Code::InvalidArgument,
        ),
        (
            "a disk over 16 TiB",
            sized_disk((16 << 20) + 1),
            Code::InvalidArgument,
        ),
        (
            "user-data over 64 KiB",
            cloud_init(vec![b'#'; 64 * 1024 + 1], "zone"),
            Code::InvalidArgument,
        ),
        (
            "a metadata service without a NIC to serve it on",
            served(b"#cloud-config\n", Vec::new()),
            Code::InvalidArgument,
        ),
        (
            "user-data the metadata service cannot serve as text",
            served(&[0x1f, 0x8b, 0xff, 0xfe], vec![tap0.clone()]),
            Code::InvalidArgument,
        ),
        (
            "meta-data the agent sets",
            cloud_init(b"#cloud-config\n".to_vec(), "instance-id"),
            Code::InvalidArgument,
        ),
        (
            "static addresses without the NIC's mac",
            with_nic(proto::NicSpec {
                addresses: vec!["10.0.0.2/24".into()],
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
        (
            "an address that is not CIDR",
            with_nic(proto::NicSpec {
                mac: "06:00:00:00:00:01".into(),
                addresses: vec!["10.0.0.2/33".into()],
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
        (
            "a gateway without addresses",
            with_nic(proto::NicSpec {
                gateway: "10.0.0.1".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
        ),
        (
            "a meta-data key that is not an identifier",
            cloud_init(b"#cloud-config\n".to_vec(), "a: b"),
            Code::InvalidArgument,
        ),
    ]);
    for (what, spec, code) in cases {
        let e = create_vm(&agent, spec).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert!(
            e.message().len() < 1024,
            "{what}: the message echoes the input: {} bytes",
            e.message().len()
        );
    }
    let vms = agent
        .vms()
        .await
        .list(proto::ListVmsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .vms;
    assert_eq!(vms.len(), 1, "only the first VM exists");
    let dirs = std::fs::read_dir(agent.dir.join("data/vms"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1, "no VM directory was left behind");
}

#[tokio::test]
async fn a_kernel_that_left_the_artifact_directories_does_not_start() {
    let agent = TestAgent::start("artifacts");
    let link = agent.dir.join("kernel-link");
    std::os::unix::fs::symlink(halting_kernel(&agent.dir), &link).unwrap();
    let vm = create_vm(
        &agent,
        proto::VmSpec {
            kernel: link.to_string_lossy().into_owned(),
            ..vm_spec(&agent, "moved", "")
        },
    )
    .await
    .expect("created from a kernel inside");
    // Re-pointed after the create: the start checks again.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    let e = agent
        .vms()
        .await
        .start(proto::StartVmRequest { id: vm.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("--artifact-dir"), "{e:?}");
    assert_eq!(state(&get(&agent, &vm.id).await), VmState::Created);
}

#[tokio::test]
async fn quotas_and_reservations_are_enforced() {
    let agent = TestAgent::start("admission");
    let pool = agent
        .pools()
        .await
        .create(proto::CreateResourcePoolRequest {
            parent_id: String::new(),
            spec: Some(proto::ResourcePoolSpec {
                name: "tight".into(),
                memory: Some(proto::Allocation {
                    reservation: 64 << 20,
                    ..Default::default()
                }),
                quota: Some(proto::Quota {
                    max_vms: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    // Each VM reserves 32 + 16 MiB: the first fits the pool's 64 MiB, the
    // second does not; a third is over the quota.
    let a = create_vm(&agent, vm_spec(&agent, "a", &pool.id))
        .await
        .unwrap();
    let b = create_vm(&agent, vm_spec(&agent, "b", &pool.id))
        .await
        .unwrap();
    let e = create_vm(&agent, vm_spec(&agent, "c", &pool.id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    agent
        .vms()
        .await
        .start(proto::StartVmRequest { id: a.id.clone() })
        .await
        .unwrap();
    let e = agent
        .vms()
        .await
        .start(proto::StartVmRequest { id: b.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let b_now = get(&agent, &b.id).await;
    assert_eq!(
        state(&b_now),
        VmState::Created,
        "a refused start changes nothing"
    );
    assert!(!agent
        .cgroup(&pool.id)
        .children()
        .unwrap()
        .contains(&format!("vm-{}", b.id)));
}

#[tokio::test]
async fn a_dead_vmm_is_reported_and_running_vms_are_readopted_after_kill_9() {
    let mut agent = TestAgent::start("readopt");
    let keep = create_vm(&agent, vm_spec(&agent, "keep", ""))
        .await
        .unwrap();
    let doomed = create_vm(&agent, vm_spec(&agent, "doomed", ""))
        .await
        .unwrap();
    for id in [&keep.id, &doomed.id] {
        agent
            .vms()
            .await
            .start(proto::StartVmRequest { id: id.clone() })
            .await
            .unwrap();
    }
    let keep_pid = get(&agent, &keep.id).await.status.unwrap().pid;
    let doomed_pid = get(&agent, &doomed.id).await.status.unwrap().pid;

    agent.kill9();
    // While the agent is down, one vmm dies.
    // SAFETY: plain kill(2) of a process this test started (via the agent).
    unsafe { libc::kill(doomed_pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(200));
    agent.spawn();

    let kept = get(&agent, &keep.id).await;
    assert_eq!(state(&kept), VmState::Running, "{}", agent.log());
    assert_eq!(
        kept.status.unwrap().pid,
        keep_pid,
        "the same vmm, re-adopted"
    );
    let dead = get(&agent, &doomed.id).await;
    assert_eq!(state(&dead), VmState::Failed);
    assert!(
        dead.status.unwrap().reason.contains("gone"),
        "{}",
        agent.log()
    );
    assert!(!agent
        .cgroup("")
        .children()
        .unwrap()
        .contains(&format!("vm-{}", doomed.id)));

    // The re-adopted vmm is watched: its death is reported too.
    // SAFETY: as above.
    unsafe { libc::kill(keep_pid as i32, libc::SIGKILL) };
    let failed = wait_state(&agent, &keep.id, VmState::Failed).await;
    assert!(!failed.status.unwrap().reason.is_empty());
}

/// A guest KVM cannot run starts, then fails: the VM's reason carries
/// vmm's own error, and `nodectl vm start` reports the failure.
#[tokio::test]
async fn a_failed_vm_says_why() {
    let agent = TestAgent::start("failing");
    let spec = proto::VmSpec {
        kernel: emulation_failure_kernel(&agent.dir)
            .to_string_lossy()
            .into_owned(),
        ..vm_spec(&agent, "doomed", "")
    };
    let vm = create_vm(&agent, spec.clone()).await.unwrap();
    agent
        .vms()
        .await
        .start(proto::StartVmRequest { id: vm.id.clone() })
        .await
        .expect("the start itself succeeds");
    let failed = wait_state(&agent, &vm.id, VmState::Failed).await;
    let reason = failed.status.unwrap().reason;
    assert!(
        reason.contains("exited with status 1") && reason.contains("KVM_EXIT_INTERNAL_ERROR"),
        "{reason}"
    );

    let again = create_vm(
        &agent,
        proto::VmSpec {
            name: "doomed-too".into(),
            ..spec
        },
    )
    .await
    .unwrap();
    let out = agent.nodectl(&["vm", "start", &again.id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("failed") && stderr.contains("KVM_EXIT_INTERNAL_ERROR"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FAILED"),
        "the VM as it ended up is printed"
    );
}

/// The console of a VM that has stopped ends with its log.
#[tokio::test]
async fn the_console_of_a_stopped_vm_ends() {
    let agent = TestAgent::start("console-end");
    let vm = create_vm(&agent, vm_spec(&agent, "brief", ""))
        .await
        .unwrap();
    let mut client = agent.vms().await;
    client
        .start(proto::StartVmRequest { id: vm.id.clone() })
        .await
        .unwrap();
    client
        .kill(proto::KillVmRequest { id: vm.id.clone() })
        .await
        .unwrap();
    wait_state(&agent, &vm.id, VmState::Stopped).await;
    let stream = client
        .console(proto::ConsoleRequest {
            id: vm.id.clone(),
            include_history: true,
        })
        .await
        .unwrap()
        .into_inner();
    let chunks = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .expect("the console stream of a stopped VM ends");
    assert!(chunks.iter().all(Result::is_ok), "{chunks:?}");
    let out = agent.nodectl(&["vm", "console", "--history", &vm.id]);
    assert!(out.status.success(), "{out:?}");
}

/// A VM made from a VM image the agent imported: the image's kernel and
/// command line boot it, its own copy of the image's disk (grown to the
/// role's root disk size, sparse) is its first disk, and the image cannot
/// be removed while the VM exists. Bad image references change nothing.
#[tokio::test]
async fn a_vm_is_made_from_an_imported_vm_image_which_it_leases() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let agent = TestAgent::start("vm-image");
    let disk = agent.dir.join("root.raw");
    let file = std::fs::File::create(&disk).unwrap();
    file.set_len(4 << 20).unwrap();
    file.write_all_at(b"stratum root disk", 0).unwrap();
    let layout = agent.dir.join("vm-image");
    let cmdline = "console=ttyS0 stratum.from=image";
    stratum_image::vm_layout::write_vm_layout(
        &stratum_image::vm_layout::VmImageSource {
            kernel: halting_kernel(&agent.dir),
            initrd: None,
            disk,
            cmdline: cmdline.into(),
            tag: "1".into(),
        },
        &layout,
    )
    .unwrap();
    let imported = agent.nodectl(&[
        "image",
        "import",
        &layout.to_string_lossy(),
        "--reference",
        "stratum/test-vm:1",
    ]);
    assert!(imported.status.success(), "{imported:?}");

    let from_image = |image: &str| proto::VmSpec {
        image: image.into(),
        kernel: String::new(),
        cmdline: String::new(),
        ..vm_spec(&agent, "from-image", "")
    };
    let cases = [
        (
            "an image not in the store",
            from_image("stratum/absent:1"),
            Code::NotFound,
        ),
        (
            "an image and a kernel",
            proto::VmSpec {
                kernel: halting_kernel(&agent.dir).to_string_lossy().into_owned(),
                ..from_image("stratum/test-vm:1")
            },
            Code::InvalidArgument,
        ),
        (
            "a root disk smaller than the image's",
            proto::VmSpec {
                root_disk_mib: 1,
                ..from_image("stratum/test-vm:1")
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, spec, code) in cases {
        let e = create_vm(&agent, spec).await.unwrap_err();
        assert_eq!(e.code(), code, "{what}: {e:?}");
    }
    let vms_dir = agent.dir.join("data/vms");
    let left = std::fs::read_dir(&vms_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "no VM directory was left behind");

    let vm = create_vm(&agent, from_image("stratum/test-vm:1"))
        .await
        .unwrap();
    let root = vms_dir.join(&vm.id).join("root.img");
    let meta = std::fs::metadata(&root).unwrap();
    assert_eq!(meta.len(), 40 << 30, "a worker's root disk");
    assert!(meta.blocks() * 512 < 1 << 20, "grown sparse");
    let mut head = [0u8; 17];
    std::fs::File::open(&root)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(&head, b"stratum root disk");

    start_running(&agent, &vm.id).await;
    let config = vmm_config(&agent, &vm.id);
    assert_eq!(config["boot-source"]["boot_args"], cmdline, "{config}");
    assert_eq!(config["drives"][0]["drive_id"], "root", "{config}");
    assert_eq!(config["drives"][0]["is_read_only"], false, "{config}");

    let refused = agent.nodectl(&["image", "rm", "stratum/test-vm:1"]);
    assert!(!refused.status.success(), "removed under a VM: {refused:?}");
    // After kill -9 the agent leases the image again for the VM.
    let mut agent = agent;
    agent.kill9();
    agent.spawn();
    assert_eq!(state(&get(&agent, &vm.id).await), VmState::Running);
    let refused = agent.nodectl(&["image", "rm", "stratum/test-vm:1"]);
    assert!(
        !refused.status.success(),
        "removed under a VM after a restart: {refused:?}"
    );
    kill_and_delete(&agent, &vm.id).await;
    let removed = agent.nodectl(&["image", "rm", "stratum/test-vm:1"]);
    assert!(removed.status.success(), "{removed:?}");
}
