//! A real agent set up for pods: its own pod network (bridge, CIDR and
//! nftables table of its own), the busybox image from a throwaway local
//! registry pulled, and on drop everything its pods leave — mounts, the
//! network, run directories — taken down, even when the test failed.
//!
//! Host preparation (idempotent): crun refuses hybrid cgroup setups whose
//! v2 hierarchy offers controllers (this machine's offers `hugetlb`); such
//! controllers are mounted as v1 hierarchies, as systemd does on hybrid
//! hosts. Without it the agent would fall back to runc.

// A test fixture: a broken fixture fails the test that uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use stratum_api::proto::image_service_client::ImageServiceClient;
use stratum_api::proto::pod_service_client::PodServiceClient;
use stratum_api::proto::{
    ContainerSpec, ExecSyncRequest, ExecSyncResponse, LogsRequest, PullImageRequest,
};
use stratum_net::{HostNetworks, Ipv4Cidr, NetConfig};
use tonic::transport::Channel;

use crate::fixture;
use crate::test_agent::TestAgent;

static HOST: Once = Once::new();
static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// Hybrid hosts: move controllers off the v2 hierarchy so crun accepts
/// the host.
pub fn prepare_host() {
    HOST.call_once(|| {
        fixture::mount_unified_controllers_as_v1().expect("mount hybrid controllers as v1");
    });
}

/// See the module docs.
pub struct PodAgent {
    pub net: NetConfig,
    /// The busybox image's reference, pulled.
    pub reference: String,
    // Dropped after `Drop::drop` below, in this order.
    pub agent: TestAgent,
    _registry: fixture::TestRegistry,
    _work: tempfile::TempDir,
}

impl PodAgent {
    pub async fn start(name: &str) -> PodAgent {
        Self::start_with(name, &[]).await
    }

    /// With more agent arguments.
    pub async fn start_with(name: &str, extra: &[&str]) -> PodAgent {
        Self::start_full(name, extra, None).await
    }

    /// With the fixture's registry also serving as the mirror of
    /// `registry` (`--registry-mirror REGISTRY=http://...`).
    pub async fn start_mirroring(name: &str, registry: &str) -> PodAgent {
        Self::start_full(name, &[], Some(registry)).await
    }

    async fn start_full(name: &str, extra: &[&str], mirrored: Option<&str>) -> PodAgent {
        prepare_host();
        let work = tempfile::tempdir().unwrap();
        let (registry, reference) = fixture::registry_with_busybox(work.path()).expect("fixture");
        let mirror = mirrored.map(|r| format!("{r}=http://{}", registry.addr()));
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        let tag = std::process::id() % 10_000 * 10 + n;
        let bridge = format!("stp{tag}");
        let cidr = format!("10.{}.{}.0/24", 200 + n % 50, std::process::id() % 250);
        let mut args = vec![
            "--insecure-registry",
            registry.addr(),
            "--pod-bridge",
            &bridge,
            "--pod-cidr",
            &cidr,
        ];
        args.extend_from_slice(extra);
        if let Some(mirror) = &mirror {
            args.extend(["--registry-mirror", mirror.as_str()]);
        }
        let agent = TestAgent::start_with(name, &args);
        let mut net = NetConfig::new(&agent.dir.join("data"));
        net.bridge = bridge.clone();
        net.nft_table = bridge;
        net.cidr = cidr.parse::<Ipv4Cidr>().unwrap();
        net.netns_dir = PathBuf::from("/run/stratum")
            .join(&agent.cgroup_root)
            .join("netns");
        let pod_agent = PodAgent {
            net,
            reference,
            agent,
            _registry: registry,
            _work: work,
        };
        let mut images = ImageServiceClient::new(pod_agent.agent.channel().await);
        let mut pull = images
            .pull(PullImageRequest {
                reference: pod_agent.reference.clone(),
                auth: None,
                namespace: String::new(),
            })
            .await
            .expect("pull")
            .into_inner();
        while pull.message().await.expect("pull progress").is_some() {}
        pod_agent
    }

    pub async fn pods(&self) -> PodServiceClient<Channel> {
        PodServiceClient::new(self.agent.channel().await)
    }

    /// A busybox container running `script` with `sh -c`.
    pub fn container(&self, name: &str, script: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: self.reference.clone(),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    /// The agent's runtime directory (netns files, sandboxes).
    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from("/run/stratum").join(&self.agent.cgroup_root)
    }
}

impl Drop for PodAgent {
    fn drop(&mut self) {
        self.agent.kill9();
        for dir in [self.agent.dir.clone(), self.run_dir()] {
            unmount_under(&dir);
        }
        let net = self.net.clone();
        let purge = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(HostNetworks::purge(&net))
        });
        let _ = purge.join();
        let _ = std::fs::remove_dir_all(self.run_dir());
    }
}

/// ExecSync of `command` in a pod's container, with a 20 s timeout.
pub async fn exec(
    client: &mut PodServiceClient<Channel>,
    pod: &str,
    container: &str,
    command: &[&str],
) -> Result<ExecSyncResponse, tonic::Status> {
    client
        .exec_sync(ExecSyncRequest {
            pod_id: pod.into(),
            container_name: container.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout_seconds: 20,
        })
        .await
        .map(|r| r.into_inner())
}

/// The container's log records' messages (the last `tail` with one).
pub async fn logs(
    client: &mut PodServiceClient<Channel>,
    pod: &str,
    container: &str,
    tail: Option<u32>,
) -> Vec<String> {
    let mut stream = client
        .logs(LogsRequest {
            pod_id: pod.into(),
            container_name: container.into(),
            follow: false,
            tail_lines: tail,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut lines = Vec::new();
    while let Some(record) = stream.message().await.expect("log record") {
        lines.push(String::from_utf8_lossy(&record.message).into_owned());
    }
    lines
}

/// Lazily unmounts every mount below `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(mounts) = stratum_runtime::mountinfo::read_self() else {
        return;
    };
    let mut points: Vec<PathBuf> = mounts
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}
