//! `bench-agent`: the node agent's gRPC API under load (`make bench`).
//!
//! Starts a real `node-agent` (the release binary next to this one, or
//! `--agent PATH`) on loopback plaintext with a temporary data dir on disk
//! (fsync cost is part of the figures) and its own cgroup root, then:
//!
//! 1. defines 1,000 pools (10 expandable top-level pools × 99 children with
//!    small reservations) and 1,000 VMs (CREATED, never started, 10 in each
//!    of 100 child pools), timing every create: a third of each at 1
//!    client, a third at 16 concurrent clients (closed loop: a client sends
//!    its next call when the last one answers), and a third *paced*: sent
//!    at a fixed 2,000 calls/s over 16 connections whatever the answers,
//!    each timed from when it was due (open loop, so a slow answer cannot
//!    hide the queue behind it);
//! 2. with all of it defined, runs get (random pool / random VM) and list
//!    (the whole pool tree / the VMs of a random pool) at 1 and 16
//!    concurrent clients (one HTTP/2 connection each) for a fixed time.
//!    The whole-tree list is read as bytes, not decoded (decoding 1,000
//!    pools costs this client more than the agent spends answering, on the
//!    same two cores); one answer is decoded first and checked against the
//!    typed client's;
//! 3. reads the agent's RSS (VmRSS, VmHWM) after populating and at the end.
//!
//! It prints calls/s, p50 and p99 per operation, the agent's and its own
//! CPU time per call (where the 2 cores went), and each figure against the
//! agent's targets: ≥ 2,000 calls/s, p99 < 10 ms, RSS ≤ 30 MiB. A missed
//! target is reported, not an error: the exit status is 0 when it
//! measured, 1 when the agent failed (or could not be started).

// Benchmark binary (dev only): a failed setup ends the run with a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::bytes::{Buf, Bytes};
use prost::Message;
use stratum_api::proto;
use stratum_api::proto::host_client::HostClient;
use stratum_api::proto::resource_pools_client::ResourcePoolsClient;
use stratum_api::proto::virtual_machines_client::VirtualMachinesClient;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use stratum_testkit::agent_process::AgentProcess;

const MIB: u64 = 1 << 20;
const TOP_POOLS: usize = 10;
const CHILDREN_PER_TOP: usize = 99;
const VMS: usize = 1000;
/// Child pools that hold VMs (the first of each top pool's children).
const VM_POOLS: usize = 100;
const TARGET_CALLS_PER_S: f64 = 2000.0;
const TARGET_P99: Duration = Duration::from_millis(10);
const TARGET_RSS_KIB: u64 = 30 * 1024;
/// The node agent's gRPC API under load (see the module docs).
#[derive(clap::Parser)]
#[command(name = "bench-agent")]
struct Options {
    /// node-agent binary [default: node-agent next to bench-agent]
    #[arg(long, value_name = "PATH")]
    agent: Option<PathBuf>,
    /// vmm binary handed to the agent (VMs are only created, never
    /// started) [default: vmm next to bench-agent, else /bin/true]
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// Duration of each get/list run, in seconds
    #[arg(long, value_name = "N", default_value_t = 5.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Where the temporary data dir goes [default: $TMPDIR or /tmp,
    /// /var/tmp if that is a tmpfs: fsync must reach a disk]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl Options {
    /// The agent binary, once [`resolve_binaries`] has filled it in.
    fn agent_binary(&self) -> &Path {
        self.agent.as_deref().unwrap_or(Path::new("node-agent"))
    }
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(n) if n > 0.0 => Ok(n),
        Ok(_) => Err("must be > 0".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let mut options = <Options as clap::Parser>::parse();
    if let Err(e) = resolve_binaries(&mut options) {
        eprintln!("bench-agent: {e}");
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut agent = match BenchAgent::start(&options) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-agent: the agent did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(bench(&mut agent, &options));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-agent: the agent failed: {e}");
            let log = agent.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("agent log (last lines):");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Fills in the binaries next to this one and checks the agent's exists.
fn resolve_binaries(options: &mut Options) -> Result<(), String> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let agent = options
        .agent
        .get_or_insert_with(|| exe_dir.join("node-agent"));
    if !agent.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p node-agent --bins` or pass --agent",
            agent.display()
        ));
    }
    options.vmm.get_or_insert_with(|| {
        Some(exe_dir.join("vmm"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/bin/true"))
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// The agent process, its files and its cgroups.

struct BenchAgent {
    process: AgentProcess,
}

impl BenchAgent {
    fn start(options: &Options) -> Result<BenchAgent, String> {
        let base = match &options.dir {
            Some(d) => d.clone(),
            None => {
                let tmp = std::env::temp_dir();
                if fs_type(&tmp).0 == TMPFS_MAGIC {
                    PathBuf::from("/var/tmp")
                } else {
                    tmp
                }
            }
        };
        let work =
            std::path::absolute(base.join(format!("stratum-bench-agent-{}", std::process::id())))
                .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&work);
        let vmm = options.vmm.as_deref().unwrap_or(Path::new("/bin/true"));
        // VMs are only created here, never started: no jail to check.
        let args = vec![
            "--vmm".to_string(),
            vmm.display().to_string(),
            "--no-vm-jail".to_string(),
        ];
        let cgroup_root = format!("bench-agent-{}", std::process::id());
        Ok(BenchAgent {
            process: AgentProcess::start(options.agent_binary(), work, cgroup_root, &args)?,
        })
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn work(&self) -> &Path {
        self.process.work()
    }

    fn data_dir(&self) -> PathBuf {
        self.work().join("data")
    }

    async fn channel(&self) -> Result<Channel, String> {
        self.process.channel().await
    }

    /// (VmRSS, VmHWM) in KiB.
    fn rss_kib(&self) -> (u64, u64) {
        let (rss, hwm, _) = self.status();
        (rss, hwm)
    }

    /// (VmRSS KiB, VmHWM KiB, threads) from `/proc/<pid>/status`.
    fn status(&self) -> (u64, u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
    }

    /// User + system CPU time the agent has used.
    fn cpu_time(&self) -> Duration {
        proc_cpu_time(&format!("/proc/{}/stat", self.process.pid()))
    }
}

impl Drop for BenchAgent {
    fn drop(&mut self) {
        // The process (and its cgroups) go with `process`, after this.
        let work = self.work().to_path_buf();
        let _ = std::fs::remove_dir_all(work);
    }
}

fn proc_cpu_time(stat_path: &str) -> Duration {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the ')'.
    // SAFETY: sysconf reads a constant of the system; no memory is involved.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos((ticks(11) + ticks(12)) * 1_000_000_000 / hz)
}

fn self_cpu_time() -> Duration {
    proc_cpu_time("/proc/self/stat")
}

const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The filesystem under `path`: (magic, name).
fn fs_type(path: &Path) -> (i64, &'static str) {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return (0, "unknown");
    };
    // SAFETY: statfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a live, writable
    // statfs that the call fills.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return (0, "unknown");
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    let name = match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        TMPFS_MAGIC => "tmpfs: fsync costs nothing here",
        0x794C_7630 => "overlayfs",
        0x0102_1997 => "9p",
        _ => "other",
    };
    (magic, name)
}

/// p50 of writing 4 KiB and fdatasync-ing it in `dir`: the floor under
/// every durable create.
fn fdatasync_p50(dir: &Path) -> Option<Duration> {
    let path = dir.join("fsync-probe");
    let file = std::fs::File::create(&path).ok()?;
    let block = [7u8; 4096];
    let mut times = Vec::new();
    for i in 0..50u64 {
        let t = Instant::now();
        file.write_at(&block, (i % 8) * 4096).ok()?;
        file.sync_data().ok()?;
        times.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    times.sort();
    Some(times[times.len() / 2])
}

// ---------------------------------------------------------------------------
// Load.

#[derive(Clone)]
struct Client {
    pools: ResourcePoolsClient<Channel>,
    vms: VirtualMachinesClient<Channel>,
    /// For calls whose answer is taken as bytes (see [`RawAnswer`]).
    raw: tonic::client::Grpc<Channel>,
}

const LIST_POOLS: &str = "/stratum.v1.ResourcePools/List";

impl Client {
    /// The whole pool tree's encoded answer, not decoded.
    async fn list_pools_raw(&self) -> Result<Bytes, tonic::Status> {
        let mut grpc = self.raw.clone();
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let answer = grpc
            .unary(
                tonic::Request::new(proto::ListResourcePoolsRequest::default()),
                PathAndQuery::from_static(LIST_POOLS),
                RawAnswer,
            )
            .await?;
        Ok(answer.into_inner())
    }
}

/// Encodes the request with prost and hands the answer over as it came.
struct RawAnswer;

impl Codec for RawAnswer {
    type Encode = proto::ListResourcePoolsRequest;
    type Decode = Bytes;
    type Encoder = tonic_prost::ProstEncoder<proto::ListResourcePoolsRequest>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The raw whole-tree answer decodes to what the typed client gets.
async fn check_raw_list(client: &Client) -> Result<(), String> {
    let raw = client.list_pools_raw().await.map_err(|e| e.to_string())?;
    let decoded = proto::ListResourcePoolsResponse::decode(raw).map_err(|e| e.to_string())?;
    let typed = client
        .pools
        .clone()
        .list(proto::ListResourcePoolsRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    if decoded != typed {
        return Err("the whole-tree list read as bytes differs from the typed answer".into());
    }
    Ok(())
}

/// The fixture everything was created into.
struct Fixture {
    pool_ids: Vec<String>,
    vm_ids: Vec<String>,
    vm_pool_ids: Vec<String>,
}

#[derive(Clone, Copy)]
enum ReadOp {
    GetPool,
    GetVm,
    ListPools,
    ListVms,
}

impl ReadOp {
    fn name(self) -> &'static str {
        match self {
            ReadOp::GetPool => "get pool (random)",
            ReadOp::GetVm => "get VM (random)",
            ReadOp::ListPools => "list pools (whole tree)",
            ReadOp::ListVms => "list VMs (random pool)",
        }
    }
}

/// One measured run.
struct Run {
    name: String,
    clients: usize,
    latencies: Vec<Duration>,
    wall: Duration,
    errors: u64,
    first_error: Option<String>,
    agent_cpu: Duration,
    bench_cpu: Duration,
    response_bytes: usize,
    /// The agent's VmRSS right after the run, KiB.
    rss_after_kib: u64,
    /// For a paced run, the calls/s offered.
    paced: Option<f64>,
}

impl Run {
    /// A run of creates that began at `start` (the agent's CPU time, ours,
    /// the wall clock), measured now.
    fn of_creates(
        agent: &BenchAgent,
        name: &str,
        clients: usize,
        mut latencies: Vec<Duration>,
        start: (Duration, Duration, Instant),
        paced: Option<f64>,
    ) -> Run {
        let (cpu0, self0, t0) = start;
        let wall = t0.elapsed();
        latencies.sort();
        Run {
            name: name.to_string(),
            clients,
            latencies,
            wall,
            errors: 0,
            first_error: None,
            agent_cpu: agent.cpu_time().saturating_sub(cpu0),
            bench_cpu: self_cpu_time().saturating_sub(self0),
            response_bytes: 0,
            rss_after_kib: agent.rss_kib().0,
            paced,
        }
    }

    fn calls_per_s(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    /// A closed-loop run met the call rate; a paced run kept its pace:
    /// the last answer came within the p99 target of its due time.
    fn kept_up(&self) -> bool {
        match self.paced {
            Some(rate) => {
                let due = Duration::from_secs_f64(self.latencies.len() as f64 / rate);
                rate >= TARGET_CALLS_PER_S && self.wall <= due + TARGET_P99
            }
            None => self.calls_per_s() >= TARGET_CALLS_PER_S,
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank =
            ((p * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }
}

/// A small xorshift generator: the benchmark needs spread, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

async fn clients(agent: &BenchAgent, n: usize) -> Result<Vec<Client>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = agent.channel().await?;
        out.push(Client {
            pools: ResourcePoolsClient::new(channel.clone()),
            vms: VirtualMachinesClient::new(channel.clone()),
            raw: tonic::client::Grpc::new(channel),
        });
    }
    Ok(out)
}

/// Runs `requests` (in order, each by one of `clients`, concurrently) and
/// returns the timing and what each call answered (`id(answer)`).
async fn run_creates<Req, F, Fut>(
    agent: &BenchAgent,
    name: &str,
    clients: Vec<Client>,
    requests: Vec<Req>,
    call: F,
) -> Result<(Run, Vec<String>), String>
where
    Req: Clone + Send + Sync + 'static,
    F: Fn(Client, Req) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<String, tonic::Status>> + Send,
{
    let n = clients.len();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let (cpu0, self0, t0) = (agent.cpu_time(), self_cpu_time(), Instant::now());
    let mut tasks = Vec::new();
    for client in clients {
        let (requests, next, call) = (requests.clone(), next.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(req) = requests.get(i) else { break };
                let t = Instant::now();
                let answer = call(client.clone(), req.clone()).await;
                done.push((i, t.elapsed(), answer));
            }
            done
        }));
    }
    let mut ids = vec![String::new(); requests.len()];
    let mut latencies = Vec::with_capacity(requests.len());
    for task in tasks {
        for (i, latency, answer) in task.await.map_err(|e| e.to_string())? {
            let id = answer.map_err(|s| format!("{name} #{i}: {:?}: {}", s.code(), s.message()))?;
            ids[i] = id;
            latencies.push(latency);
        }
    }
    let run = Run::of_creates(agent, name, n, latencies, (cpu0, self0, t0), None);
    Ok((run, ids))
}

/// Sends `requests` at `rate` calls/s over `clients` (round robin), each
/// at its due time whether or not earlier ones have answered, and times
/// each from its due time to its answer.
async fn run_paced<Req, F, Fut>(
    agent: &BenchAgent,
    name: &str,
    rate: f64,
    clients: Vec<Client>,
    requests: Vec<Req>,
    call: F,
) -> Result<(Run, Vec<String>), String>
where
    Req: Send + 'static,
    F: Fn(Client, Req) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<String, tonic::Status>> + Send + 'static,
{
    let n = clients.len();
    let count = requests.len();
    let (cpu0, self0, t0) = (agent.cpu_time(), self_cpu_time(), Instant::now());
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for (i, req) in requests.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due).await;
        let (client, call) = (clients[i % n].clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            let answer = call(client, req).await;
            (due.elapsed(), answer)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    let mut latencies = Vec::with_capacity(count);
    for (i, task) in tasks.into_iter().enumerate() {
        let (latency, answer) = task.await.map_err(|e| e.to_string())?;
        ids.push(answer.map_err(|s| format!("{name} #{i}: {:?}: {}", s.code(), s.message()))?);
        latencies.push(latency);
    }
    let run = Run::of_creates(agent, name, n, latencies, (cpu0, self0, t0), Some(rate));
    Ok((run, ids))
}

async fn read_once(
    client: &mut Client,
    kind: ReadOp,
    fixture: &Fixture,
    rng: &mut Rng,
) -> Result<usize, tonic::Status> {
    Ok(match kind {
        ReadOp::GetPool => {
            let id = fixture.pool_ids[rng.below(fixture.pool_ids.len())].clone();
            client
                .pools
                .get(proto::GetResourcePoolRequest { id })
                .await?
                .into_inner()
                .encoded_len()
        }
        ReadOp::GetVm => {
            let id = fixture.vm_ids[rng.below(fixture.vm_ids.len())].clone();
            client
                .vms
                .get(proto::GetVmRequest { id })
                .await?
                .into_inner()
                .encoded_len()
        }
        ReadOp::ListPools => client.list_pools_raw().await?.len(),
        ReadOp::ListVms => {
            let pool_id = fixture.vm_pool_ids[rng.below(fixture.vm_pool_ids.len())].clone();
            client
                .vms
                .list(proto::ListVmsRequest {
                    pool_id,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .encoded_len()
        }
    })
}

async fn run_reads(
    agent: &BenchAgent,
    kind: ReadOp,
    clients: &[Client],
    fixture: &Arc<Fixture>,
    duration: Duration,
) -> Result<Run, String> {
    let (cpu0, self0, t0) = (agent.cpu_time(), self_cpu_time(), Instant::now());
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let mut client = client.clone();
        let fixture = fixture.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x1000_0001));
            let mut latencies = Vec::new();
            let (mut errors, mut first_error, mut bytes) = (0u64, None, 0usize);
            while Instant::now() < deadline {
                let t = Instant::now();
                match read_once(&mut client, kind, &fixture, &mut rng).await {
                    Ok(n) => {
                        latencies.push(t.elapsed());
                        bytes = bytes.max(n);
                    }
                    Err(s) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                    }
                }
            }
            (latencies, errors, first_error, bytes)
        }));
    }
    let mut run = Run {
        name: kind.name().to_string(),
        clients: clients.len(),
        latencies: Vec::new(),
        wall: Duration::ZERO,
        errors: 0,
        first_error: None,
        agent_cpu: Duration::ZERO,
        bench_cpu: Duration::ZERO,
        response_bytes: 0,
        rss_after_kib: 0,
        paced: None,
    };
    for task in tasks {
        let (latencies, errors, first_error, bytes) = task.await.map_err(|e| e.to_string())?;
        run.latencies.extend(latencies);
        run.errors += errors;
        run.first_error = run.first_error.or(first_error);
        run.response_bytes = run.response_bytes.max(bytes);
    }
    run.wall = t0.elapsed();
    run.agent_cpu = agent.cpu_time().saturating_sub(cpu0);
    run.bench_cpu = self_cpu_time().saturating_sub(self0);
    run.rss_after_kib = agent.rss_kib().0;
    run.latencies.sort();
    Ok(run)
}

fn alloc(reservation: u64, limit: u64, expandable: bool) -> Option<proto::Allocation> {
    Some(proto::Allocation {
        shares: Some(proto::Shares {
            level: proto::SharesLevel::Normal as i32,
            custom: 0,
        }),
        reservation,
        limit,
        expandable_reservation: expandable,
    })
}

async fn create_pools(
    agent: &BenchAgent,
    runs: &mut Vec<Run>,
    unreserved: &proto::ResourceAmounts,
) -> Result<Vec<String>, String> {
    // Children reserve small amounts that together use ~80% of the host's
    // CPU and ~50% of its memory; the top pools reserve a tenth of what
    // their children hold and borrow the rest (expandable), as a tenant
    // namespace does.
    let children = (TOP_POOLS * CHILDREN_PER_TOP) as u64;
    let child_cpu = unreserved.cpu_millicores * 8 / 10 / children;
    let child_mem = (unreserved.memory_bytes / 2 / children) / MIB * MIB;
    let top_requests: Vec<proto::CreateResourcePoolRequest> = (0..TOP_POOLS)
        .map(|t| proto::CreateResourcePoolRequest {
            parent_id: String::new(),
            spec: Some(proto::ResourcePoolSpec {
                name: format!("tenant-{t:02}"),
                cpu: alloc(child_cpu * CHILDREN_PER_TOP as u64 / 10, 0, true),
                memory: alloc(child_mem * CHILDREN_PER_TOP as u64 / 10, 0, true),
                quota: Some(proto::Quota {
                    max_vms: 500,
                    max_vcpus: 2000,
                    ..Default::default()
                }),
            }),
        })
        .collect();
    let create_pool = |mut c: Client, r: proto::CreateResourcePoolRequest| async move {
        c.pools.create(r).await.map(|p| p.into_inner().id)
    };
    let (mut top_run, top_ids) = run_creates(
        agent,
        "create pool",
        clients(agent, 1).await?,
        top_requests,
        create_pool,
    )
    .await?;
    // Children interleaved over the top pools: child j of every top pool,
    // then child j + 1.
    let child_requests: Vec<proto::CreateResourcePoolRequest> = (0..CHILDREN_PER_TOP)
        .flat_map(|j| (0..TOP_POOLS).map(move |t| (t, j)))
        .map(|(t, j)| proto::CreateResourcePoolRequest {
            parent_id: top_ids[t].clone(),
            spec: Some(proto::ResourcePoolSpec {
                name: format!("ns-{j:02}"),
                cpu: alloc(child_cpu, 1000, false),
                memory: alloc(child_mem, 4096 * MIB, false),
                quota: Some(proto::Quota {
                    max_vms: 50,
                    max_vcpus: 100,
                    ..Default::default()
                }),
            }),
        })
        .collect();
    let third = (TOP_POOLS + child_requests.len()) / 3 - TOP_POOLS;
    let (first, rest) = child_requests.split_at(third);
    let (second, paced) = rest.split_at(rest.len() / 2);
    let (serial, mut ids) = run_creates(
        agent,
        "create pool",
        clients(agent, 1).await?,
        first.to_vec(),
        create_pool,
    )
    .await?;
    let (concurrent, more) = run_creates(
        agent,
        "create pool",
        clients(agent, 16).await?,
        second.to_vec(),
        create_pool,
    )
    .await?;
    let (paced_run, paced_ids) = run_paced(
        agent,
        "create pool (paced)",
        TARGET_CALLS_PER_S,
        clients(agent, 16).await?,
        paced.to_vec(),
        create_pool,
    )
    .await?;
    top_run.latencies.extend(serial.latencies);
    top_run.latencies.sort();
    top_run.wall += serial.wall;
    top_run.agent_cpu += serial.agent_cpu;
    top_run.bench_cpu += serial.bench_cpu;
    top_run.rss_after_kib = serial.rss_after_kib;
    runs.push(top_run);
    runs.push(concurrent);
    runs.push(paced_run);
    ids.extend(more);
    ids.extend(paced_ids);
    // Pool ids in creation order: top pools, then the children.
    let mut all = top_ids;
    all.extend(ids);
    Ok(all)
}

async fn create_vms(
    agent: &BenchAgent,
    runs: &mut Vec<Run>,
    pool_ids: &[String],
    kernel: &Path,
) -> Result<(Vec<String>, Vec<String>), String> {
    // The first 10 children of each top pool hold 10 VMs each.
    let vm_pools: Vec<String> = (0..VM_POOLS)
        .map(|i| pool_ids[TOP_POOLS + i].clone())
        .collect();
    let roles = [
        proto::VmRole::ControlPlane,
        proto::VmRole::Etcd,
        proto::VmRole::Worker,
        proto::VmRole::Worker,
        proto::VmRole::Worker,
    ];
    let requests: Vec<proto::CreateVmRequest> = (0..VMS)
        .map(|i| {
            let role = roles[i % roles.len()];
            let labels = BTreeMap::from([
                ("app".to_string(), format!("cluster-{}", i % VM_POOLS)),
                ("tier".to_string(), format!("{role:?}").to_lowercase()),
            ]);
            proto::CreateVmRequest {
                spec: Some(proto::VmSpec {
                    name: format!("bench-vm-{i:04}"),
                    pool_id: vm_pools[i % VM_POOLS].clone(),
                    role: role as i32,
                    vcpus: if role == proto::VmRole::Worker { 2 } else { 1 },
                    memory_mib: if role == proto::VmRole::Worker {
                        1024
                    } else {
                        512
                    },
                    kernel: kernel.to_string_lossy().into_owned(),
                    cmdline: "console=ttyS0 reboot=k panic=1".into(),
                    labels: labels.into_iter().collect(),
                    ..Default::default()
                }),
            }
        })
        .collect();
    let (first, rest) = requests.split_at(VMS / 3);
    let (second, paced) = rest.split_at(rest.len() / 2);
    let create_vm = |mut c: Client, r: proto::CreateVmRequest| async move {
        c.vms.create(r).await.map(|v| v.into_inner().id)
    };
    let (serial, mut ids) = run_creates(
        agent,
        "create VM",
        clients(agent, 1).await?,
        first.to_vec(),
        create_vm,
    )
    .await?;
    let (concurrent, more) = run_creates(
        agent,
        "create VM",
        clients(agent, 16).await?,
        second.to_vec(),
        create_vm,
    )
    .await?;
    let (paced_run, paced_ids) = run_paced(
        agent,
        "create VM (paced)",
        TARGET_CALLS_PER_S,
        clients(agent, 16).await?,
        paced.to_vec(),
        create_vm,
    )
    .await?;
    runs.push(serial);
    runs.push(concurrent);
    runs.push(paced_run);
    ids.extend(more);
    ids.extend(paced_ids);
    Ok((ids, vm_pools))
}

async fn bench(agent: &mut BenchAgent, options: &Options) -> Result<(), String> {
    let data_dir = agent.data_dir();
    let (_, fs_name) = fs_type(&data_dir);
    let kernel = agent.work().join("kernel");
    std::fs::write(&kernel, vec![0u8; 4096]).map_err(|e| e.to_string())?;
    let fsync = fdatasync_p50(agent.work());
    let (rss_idle, _) = agent.rss_kib();

    let channel = agent.channel().await?;
    let capacity = HostClient::new(channel)
        .get_capacity(proto::GetHostCapacityRequest {})
        .await
        .map_err(|s| format!("host capacity: {s}"))?
        .into_inner();
    let unreserved = capacity.unreserved.unwrap_or_default();

    let mut runs = Vec::new();
    let t = Instant::now();
    let pool_ids = create_pools(agent, &mut runs, &unreserved).await?;
    let (vm_ids, vm_pool_ids) = create_vms(agent, &mut runs, &pool_ids, &kernel).await?;
    let populate = t.elapsed();
    agent.process.check_alive()?;
    let (rss_populated, _) = agent.rss_kib();

    let fixture = Arc::new(Fixture {
        pool_ids,
        vm_ids,
        vm_pool_ids,
    });
    let duration = Duration::from_secs_f64(options.seconds);
    for n in [1, 16] {
        let clients = clients(agent, n).await?;
        check_raw_list(&clients[0]).await?;
        for kind in [
            ReadOp::GetPool,
            ReadOp::GetVm,
            ReadOp::ListPools,
            ReadOp::ListVms,
        ] {
            let run = run_reads(agent, kind, &clients, &fixture, duration).await?;
            agent.process.check_alive()?;
            if run.latencies.is_empty() {
                return Err(format!(
                    "{}: no call succeeded ({})",
                    run.name,
                    run.first_error.unwrap_or_default()
                ));
            }
            runs.push(run);
        }
    }
    agent.process.check_alive()?;
    let (rss_end, hwm, threads) = agent.status();

    report(&Report {
        agent,
        options,
        data_dir: &data_dir,
        fs_name,
        fsync,
        populate,
        runs: &runs,
        rss: [rss_idle, rss_populated, rss_end, hwm],
        threads,
    });
    Ok(())
}

// ---------------------------------------------------------------------------
// Output.

struct Report<'a> {
    agent: &'a BenchAgent,
    options: &'a Options,
    data_dir: &'a Path,
    fs_name: &'static str,
    fsync: Option<Duration>,
    populate: Duration,
    runs: &'a [Run],
    /// idle, after populating, at the end, peak (KiB).
    rss: [u64; 4],
    /// The agent's threads at the end.
    threads: u64,
}

fn fmt_latency(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn report(r: &Report) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("node-agent gRPC API benchmark");
    println!(
        "  agent     {} (pid {}), plaintext on 127.0.0.1:{}, cgroup root {}",
        r.options.agent_binary().display(),
        r.agent.process.pid(),
        r.agent.process.port(),
        r.agent.process.cgroup_root()
    );
    println!(
        "  data dir  {} ({}); 4 KiB write + fdatasync there: p50 {}",
        r.data_dir.display(),
        r.fs_name,
        r.fsync.map_or("n/a".into(), fmt_latency)
    );
    println!(
        "  host      {cpus} CPUs (the agent and this client share them); {} pools and {} VMs (CREATED) defined in {:.1} s",
        TOP_POOLS * (1 + CHILDREN_PER_TOP),
        VMS,
        r.populate.as_secs_f64()
    );
    println!(
        "  reads     {} s per row; each client is its own HTTP/2 connection",
        r.options.seconds
    );
    println!();
    println!(
        "{:<24} {:>7} {:>6} {:>9} {:>9} {:>9} {:>10} {:>9} {:>8} {:>9}  reference: ≥ 2,000 calls/s, p99 < 10 ms",
        "operation", "clients", "calls", "calls/s", "p50", "p99", "agent CPU", "own CPU", "resp", "agent RSS"
    );
    println!(
        "{:<24} {:>7} {:>6} {:>9} {:>9} {:>9} {:>10} {:>9} {:>8} {:>9}",
        "", "", "", "", "", "", "per call", "per call", "bytes", "after"
    );
    for run in r.runs {
        let calls = run.latencies.len().max(1) as u32;
        let rate = run.calls_per_s();
        let p99 = run.percentile(0.99);
        println!(
            "{:<24} {:>7} {:>6} {:>9.0} {:>9} {:>9} {:>10} {:>9} {:>8} {:>9}  calls/s {}, p99 {}",
            run.name,
            run.clients,
            run.latencies.len(),
            rate,
            fmt_latency(run.percentile(0.50)),
            fmt_latency(p99),
            fmt_latency(run.agent_cpu / calls),
            fmt_latency(run.bench_cpu / calls),
            if run.response_bytes > 0 {
                run.response_bytes.to_string()
            } else {
                "-".into()
            },
            fmt_mib(run.rss_after_kib),
            verdict(run.kept_up()),
            verdict(p99 < TARGET_P99),
        );
        if run.errors > 0 {
            println!(
                "  ({} calls failed, first: {})",
                run.errors,
                run.first_error.as_deref().unwrap_or("?")
            );
        }
    }
    println!(
        "  1 and 16 clients: closed loop (each client waits for its answer), so p99 grows with the\n  \
         calls in flight; paced: {TARGET_CALLS_PER_S:.0} calls/s offered over 16 connections whatever \
         the answers,\n  each timed from when it was due"
    );
    let [idle, populated, end, peak] = r.rss;
    println!();
    println!(
        "agent RSS ({} threads at the end)                             reference: ≤ 30 MiB",
        r.threads
    );
    for (what, kib) in [
        ("idle, before populating", idle),
        ("with 1,000 pools + 1,000 VMs", populated),
        ("at the end", end),
        ("peak (VmHWM)", peak),
    ] {
        println!(
            "  {what:<30} {:>10}                     {}",
            fmt_mib(kib),
            verdict(kib <= TARGET_RSS_KIB)
        );
    }
}
