//! The table view of the API's messages: what an operator reads at a
//! terminal. Units as the operator types them (`500m`, `2Gi`), enums by
//! their short names, `-` for unset or unlimited.

use std::collections::{HashMap, HashSet};

use super::args::{port_text, restart_name, role_name};
use super::progress::short_digest;
use super::size::{format_cpu_time, format_millicores, format_size, MIB};
use super::table::Table;
use stratum_api::proto::{
    workload, Allocation, BalloonStatus, CgroupVersion, GuestInfo, GuestState, HostCapacity,
    HostInfo, Image, ListResourcePoolsResponse, LiveUsage, ResourceAmounts, ResourcePool,
    ResourceUsage, Shares, SharesLevel, VirtualMachine, VmEvent, VmEventKind, VmRole, VmState,
    Workload, WorkloadKind,
};
use stratum_api::proto::{
    ContainerSpec, ContainerState, ContainerStatus, Pod, PodState, PodStats, RestartPolicy,
    RuntimeClass,
};
use stratum_api::proto::{Network, NetworkAttachment, NicSpec, NicStatus, VmSnapshot};

/// `RUNNING` for `VM_STATE_RUNNING`; unknown numbers as `UNKNOWN(n)`.
pub fn state_name(state: i32) -> String {
    match VmState::try_from(state) {
        Ok(s) => s.as_str_name().trim_start_matches("VM_STATE_").to_string(),
        Err(_) => format!("UNKNOWN({state})"),
    }
}

/// `RUNNING` for `POD_STATE_RUNNING`; unknown numbers as `UNKNOWN(n)`.
pub fn pod_state_name(state: i32) -> String {
    match PodState::try_from(state) {
        Ok(s) => s.as_str_name().trim_start_matches("POD_STATE_").to_string(),
        Err(_) => format!("UNKNOWN({state})"),
    }
}

/// `EXITED` for `CONTAINER_STATE_EXITED`; unknown numbers as `UNKNOWN(n)`.
pub fn container_state_name(state: i32) -> String {
    match ContainerState::try_from(state) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("CONTAINER_STATE_")
            .to_string(),
        Err(_) => format!("UNKNOWN({state})"),
    }
}

/// The role's CLI spelling; unknown numbers as `unknown(n)`.
pub fn role_text(role: i32) -> String {
    VmRole::try_from(role).map_or_else(|_| format!("unknown({role})"), |r| role_name(r).into())
}

/// `low`, `normal`, `high`, the custom number; unset reads as `normal`, as
/// the agent treats it.
pub fn shares_text(shares: Option<&Shares>) -> String {
    let Some(shares) = shares else {
        return "normal".into();
    };
    match SharesLevel::try_from(shares.level) {
        Ok(SharesLevel::Unspecified | SharesLevel::Normal) => "normal".into(),
        Ok(SharesLevel::Low) => "low".into(),
        Ok(SharesLevel::High) => "high".into(),
        Ok(SharesLevel::Custom) => shares.custom.to_string(),
        Err(_) => format!("unknown({})", shares.level),
    }
}

fn cgroup_text(version: i32) -> &'static str {
    match CgroupVersion::try_from(version) {
        Ok(CgroupVersion::V1) => "v1",
        Ok(CgroupVersion::V2) => "v2",
        _ => "-",
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

/// A limit of 0 (or `u64::MAX`, from an older agent) means unlimited.
fn limit_text(limit: u64, fmt: fn(u64) -> String) -> String {
    if limit == 0 || limit == u64::MAX {
        "-".into()
    } else {
        fmt(limit)
    }
}

/// `reservation/limit/shares`, e.g. `500m/2000m/high`.
fn allocation_text(alloc: Option<&Allocation>, fmt: fn(u64) -> String) -> String {
    let a = alloc.copied().unwrap_or_default();
    format!(
        "{}/{}/{}",
        fmt(a.reservation),
        limit_text(a.limit, fmt),
        shares_text(a.shares.as_ref())
    )
}

fn amounts_cells(amounts: Option<&ResourceAmounts>) -> [String; 2] {
    let a = amounts.copied().unwrap_or_default();
    [
        format_millicores(a.cpu_millicores),
        format_size(a.memory_bytes),
    ]
}

/// `hostname`, CPUs, memory, KVM, cgroups and versions, one per line.
pub fn host_info(info: &HostInfo) -> String {
    let kvm = info.kvm.clone().unwrap_or_default();
    let v = info.versions.clone().unwrap_or_default();
    let mut t = Table::headless();
    t.row(["HOSTNAME", &info.hostname]);
    t.row(["CPUS".to_string(), info.cpus.to_string()]);
    t.row(["MEMORY".to_string(), format_size(info.memory_bytes)]);
    t.row(["KVM".to_string(), kvm_text(&kvm)]);
    t.row(["CGROUP", cgroup_text(info.cgroup_version)]);
    t.row(["AGENT".to_string(), or_dash(&v.agent)]);
    t.row(["VMM".to_string(), or_dash(&v.vmm)]);
    t.row(["KERNEL".to_string(), or_dash(&v.kernel)]);
    t.row(["API".to_string(), or_dash(&v.api)]);
    t.render()
}

fn kvm_text(kvm: &stratum_api::proto::KvmInfo) -> String {
    let what = match (kvm.present, kvm.unmodified_guests) {
        (false, _) => "absent",
        (true, true) => "present, runs unmodified guests",
        (true, false) => "present, limited (no unmodified guests)",
    };
    if kvm.detail.is_empty() {
        what.into()
    } else {
        format!("{what}: {}", kvm.detail)
    }
}

/// Total, system reserve, reserved and unreserved CPU and memory.
pub fn host_capacity(cap: &HostCapacity) -> String {
    let mut t = Table::new(["", "CPU", "MEMORY"]);
    for (name, amounts) in [
        ("TOTAL", &cap.total),
        ("SYSTEM RESERVE", &cap.system_reserve),
        ("RESERVED", &cap.reserved),
        ("UNRESERVED", &cap.unreserved),
    ] {
        let [cpu, mem] = amounts_cells(amounts.as_ref());
        t.row([name.to_string(), cpu, mem]);
    }
    t.render()
}

/// The pool tree's columns.
pub const POOL_TREE_HEADER: [&str; 8] = [
    "NAME",
    "ID",
    "CPU RES/LIMIT/SHARES",
    "MEM RES/LIMIT/SHARES",
    "EXPANDABLE",
    "USED CPU/MEM",
    "WORKLOADS RUN/ALL",
    "QUOTA",
];

/// The pools as an indented tree (two spaces per level), parents before
/// their children in the order the agent lists them. The tree is rebuilt
/// from `parent_id`/`child_pool_ids` rather than trusting the list order;
/// a pool whose parent is not in the response starts a new tree.
pub fn pool_tree(resp: &ListResourcePoolsResponse) -> String {
    let mut t = Table::new(POOL_TREE_HEADER);
    for (depth, pool) in tree_order(&resp.pools) {
        t.row(pool_row(pool, depth));
    }
    t.render()
}

/// Pools in depth-first order with their depth. Every pool appears once,
/// even if the response's links are inconsistent or cyclic.
fn tree_order(pools: &[ResourcePool]) -> Vec<(usize, &ResourcePool)> {
    let by_id: HashMap<&str, &ResourcePool> = pools.iter().map(|p| (p.id.as_str(), p)).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(pools.len());
    let roots = pools
        .iter()
        .filter(|p| !by_id.contains_key(p.parent_id.as_str()) || p.parent_id == p.id);
    for root in roots.chain(pools.iter()) {
        visit(root, 0, &by_id, &mut seen, &mut out);
    }
    out
}

fn visit<'a>(
    pool: &'a ResourcePool,
    depth: usize,
    by_id: &HashMap<&str, &'a ResourcePool>,
    seen: &mut HashSet<&'a str>,
    out: &mut Vec<(usize, &'a ResourcePool)>,
) {
    if !seen.insert(pool.id.as_str()) {
        return;
    }
    out.push((depth, pool));
    for child in &pool.child_pool_ids {
        if let Some(child) = by_id.get(child.as_str()) {
            visit(child, depth + 1, by_id, seen, out);
        }
    }
}

/// The pool's name, or its id when the spec has none (the root).
pub fn pool_name(pool: &ResourcePool) -> String {
    match pool.spec.as_ref().map(|s| s.name.as_str()) {
        Some(name) if !name.is_empty() => name.into(),
        _ => pool.id.clone(),
    }
}

fn pool_row(pool: &ResourcePool, depth: usize) -> Vec<String> {
    let spec = pool.spec.clone().unwrap_or_default();
    let status = pool.status.unwrap_or_default();
    let usage = status.usage.unwrap_or_default();
    vec![
        format!("{}{}", "  ".repeat(depth), pool_name(pool)),
        pool.id.clone(),
        allocation_text(spec.cpu.as_ref(), format_millicores),
        allocation_text(spec.memory.as_ref(), format_size),
        expandable_text(spec.cpu.as_ref(), spec.memory.as_ref()),
        format!(
            "{}/{}",
            format_millicores(children(status.cpu)),
            format_size(children(status.memory))
        ),
        format!("{}/{}", usage.running_workloads, usage.workloads),
        quota_text(spec.quota.as_ref()),
    ]
}

/// The inventory's columns: pools and workloads side by side.
pub const INVENTORY_HEADER: [&str; 9] = [
    "NAME",
    "KIND",
    "ID",
    "STATE",
    "RESERVED CPU/MEM",
    "LIMIT CPU/MEM",
    "CPU TIME",
    "MEMORY",
    "DETAIL",
];

/// The one inventory (`pool list --workloads`): the pool tree, each pool
/// followed by its VMs and pods one level deeper, then its child pools.
/// A pool's reservation and limit are its spec's and its detail what its
/// children and workloads hold; a workload's are what it charges its pool
/// while it runs and its cgroup's ceilings. CPU time and memory are the
/// cgroups' live counters (`-` when not read: a workload that does not
/// run). Workloads of a pool missing from the answer come last, unindented.
pub fn inventory(resp: &ListResourcePoolsResponse) -> String {
    let mut by_pool: HashMap<&str, Vec<&Workload>> = HashMap::new();
    for w in &resp.workloads {
        by_pool.entry(workload_pool(w)).or_default().push(w);
    }
    let mut t = Table::new(INVENTORY_HEADER);
    for (depth, pool) in tree_order(&resp.pools) {
        t.row(inventory_pool_row(pool, depth));
        for w in by_pool.remove(pool.id.as_str()).unwrap_or_default() {
            t.row(workload_row(w, depth + 1));
        }
    }
    // Whatever is left belongs to no listed pool: in answer order.
    for w in &resp.workloads {
        if by_pool.contains_key(workload_pool(w)) {
            t.row(workload_row(w, 0));
        }
    }
    t.render()
}

/// The workload's pool id, the root's for an empty one.
fn workload_pool(w: &Workload) -> &str {
    if w.pool_id.is_empty() {
        "root"
    } else {
        &w.pool_id
    }
}

/// `cpu/mem` with `-` for 0 (no ceiling).
fn limits_text(amounts: Option<&ResourceAmounts>) -> String {
    let a = amounts.copied().unwrap_or_default();
    format!(
        "{}/{}",
        limit_text(a.cpu_millicores, format_millicores),
        limit_text(a.memory_bytes, format_size)
    )
}

/// CPU time and memory charged now, `-` for each when not read.
fn live_cells(live: Option<&LiveUsage>) -> [String; 2] {
    match live {
        Some(l) => [
            format_cpu_time(l.cpu_usage_ns),
            format_size(l.memory_current_bytes),
        ],
        None => ["-".into(), "-".into()],
    }
}

fn inventory_pool_row(pool: &ResourcePool, depth: usize) -> Vec<String> {
    let spec = pool.spec.clone().unwrap_or_default();
    let status = pool.status.unwrap_or_default();
    let cpu = spec.cpu.unwrap_or_default();
    let mem = spec.memory.unwrap_or_default();
    let [cpu_time, memory] = live_cells(status.live.as_ref());
    vec![
        format!("{}{}", "  ".repeat(depth), pool_name(pool)),
        "pool".into(),
        pool.id.clone(),
        "-".into(),
        format!(
            "{}/{}",
            format_millicores(cpu.reservation),
            format_size(mem.reservation)
        ),
        format!(
            "{}/{}",
            limit_text(cpu.limit, format_millicores),
            limit_text(mem.limit, format_size)
        ),
        cpu_time,
        memory,
        format!(
            "used {}/{}",
            format_millicores(children(status.cpu)),
            format_size(children(status.memory))
        ),
    ]
}

fn workload_row(w: &Workload, depth: usize) -> Vec<String> {
    let kind = match WorkloadKind::try_from(w.kind) {
        Ok(WorkloadKind::Vm) => "vm".to_string(),
        Ok(WorkloadKind::Pod) => "pod".to_string(),
        _ => format!("unknown({})", w.kind),
    };
    let state = match w.state {
        Some(workload::State::VmState(s)) => state_name(s),
        Some(workload::State::PodState(s)) => pod_state_name(s),
        None => "-".into(),
    };
    let mut detail = match WorkloadKind::try_from(w.kind) {
        Ok(WorkloadKind::Vm) => format!("{} vcpus, {}", w.vcpus, format_size(w.guest_memory_bytes)),
        Ok(WorkloadKind::Pod) if w.containers == 1 => "1 container".into(),
        Ok(WorkloadKind::Pod) => format!("{} containers", w.containers),
        _ => String::new(),
    };
    if !w.reason.is_empty() {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&cut(&w.reason, TABLE_REASON_CHARS));
    }
    let [cpu_time, memory] = live_cells(w.live.as_ref());
    vec![
        format!("{}{}", "  ".repeat(depth), w.name),
        kind,
        w.id.clone(),
        state,
        amounts_cells(w.reservation.as_ref()).join("/"),
        limits_text(w.limits.as_ref()),
        cpu_time,
        memory,
        or_dash(&detail),
    ]
}

fn children(usage: Option<ResourceUsage>) -> u64 {
    usage.map_or(0, |u| u.reserved_by_children)
}

/// `yes` when both resources are expandable, `no` when neither, else the
/// one that is.
fn expandable_text(cpu: Option<&Allocation>, mem: Option<&Allocation>) -> String {
    let flag = |a: Option<&Allocation>| a.is_some_and(|a| a.expandable_reservation);
    match (flag(cpu), flag(mem)) {
        (true, true) => "yes",
        (false, false) => "no",
        (true, false) => "cpu",
        (false, true) => "mem",
    }
    .into()
}

/// `vms=10,pods=20,vcpus=40,mem=64Gi`, the caps set (0 = none); `-` without
/// caps.
fn quota_text(quota: Option<&stratum_api::proto::Quota>) -> String {
    let q = quota.copied().unwrap_or_default();
    let mut caps = Vec::new();
    if q.max_vms > 0 {
        caps.push(format!("vms={}", q.max_vms));
    }
    if q.max_pods > 0 {
        caps.push(format!("pods={}", q.max_pods));
    }
    if q.max_vcpus > 0 {
        caps.push(format!("vcpus={}", q.max_vcpus));
    }
    if q.max_memory_bytes > 0 {
        caps.push(format!("mem={}", format_size(q.max_memory_bytes)));
    }
    if caps.is_empty() {
        "-".into()
    } else {
        caps.join(",")
    }
}

/// One pool in full, one field per line.
pub fn pool_detail(pool: &ResourcePool) -> String {
    let spec = pool.spec.clone().unwrap_or_default();
    let status = pool.status.unwrap_or_default();
    let usage = status.usage.unwrap_or_default();
    let mut t = Table::headless();
    t.row(["ID".to_string(), pool.id.clone()]);
    t.row(["NAME".to_string(), pool_name(pool)]);
    t.row(["PARENT".to_string(), or_dash(&pool.parent_id)]);
    t.row([
        "CPU (RES/LIMIT/SHARES)".to_string(),
        allocation_text(spec.cpu.as_ref(), format_millicores),
    ]);
    t.row([
        "MEM (RES/LIMIT/SHARES)".to_string(),
        allocation_text(spec.memory.as_ref(), format_size),
    ]);
    t.row([
        "EXPANDABLE".to_string(),
        expandable_text(spec.cpu.as_ref(), spec.memory.as_ref()),
    ]);
    t.row(["QUOTA".to_string(), quota_text(spec.quota.as_ref())]);
    t.row([
        "CPU CHARGED/CHILDREN/FREE".to_string(),
        usage_text(status.cpu, format_millicores),
    ]);
    t.row([
        "MEM CHARGED/CHILDREN/FREE".to_string(),
        usage_text(status.memory, format_size),
    ]);
    t.row([
        "WORKLOADS".to_string(),
        format!(
            "{} ({} running): {} vms ({} vcpus), {} pods, {} memory ceilings",
            usage.workloads,
            usage.running_workloads,
            usage.vms,
            usage.vcpus,
            usage.pods,
            format_size(usage.memory_bytes)
        ),
    ]);
    if usage.pods_without_memory_limit > 0 {
        t.row([
            "PODS WITHOUT MEM LIMIT".to_string(),
            usage.pods_without_memory_limit.to_string(),
        ]);
    }
    t.row(["CHILD POOLS".to_string(), list_text(&pool.child_pool_ids)]);
    t.row(["WORKLOAD IDS".to_string(), list_text(&pool.workload_ids)]);
    t.render()
}

fn usage_text(usage: Option<ResourceUsage>, fmt: fn(u64) -> String) -> String {
    let u = usage.unwrap_or_default();
    format!(
        "{}/{}/{}",
        fmt(u.charged_to_parent),
        fmt(u.reserved_by_children),
        fmt(u.unreserved)
    )
}

fn list_text(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// The VM list's columns.
pub const VM_HEADER: [&str; 8] = [
    "ID", "NAME", "POOL", "ROLE", "STATE", "VCPUS", "MEMORY", "PID",
];

/// VMs, one per row.
pub fn vm_table(vms: &[VirtualMachine]) -> String {
    let mut t = Table::new(VM_HEADER);
    for vm in vms {
        t.row(vm_row(vm));
    }
    t.render()
}

fn vm_row(vm: &VirtualMachine) -> Vec<String> {
    let spec = vm.spec.clone().unwrap_or_default();
    let status = vm.status.clone().unwrap_or_default();
    vec![
        vm.id.clone(),
        spec.name,
        pool_id_text(&spec.pool_id),
        role_text(spec.role),
        state_name(status.state),
        spec.vcpus.to_string(),
        format_size(spec.memory_mib.saturating_mul(MIB)),
        pid_text(status.pid),
    ]
}

fn pool_id_text(id: &str) -> String {
    if id.is_empty() {
        "root".into()
    } else {
        id.into()
    }
}

/// The jailed vmm's uid; `root (unjailed)` for a vmm without a jail.
fn uid_text(uid: u32, pid: u32) -> String {
    match (uid, pid) {
        (_, 0) => "-".to_string(),
        (0, _) => "root (unjailed)".to_string(),
        (uid, _) => uid.to_string(),
    }
}

fn pid_text(pid: u32) -> String {
    if pid == 0 {
        "-".into()
    } else {
        pid.to_string()
    }
}

fn timestamp_text(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".into(), ToString::to_string)
}

/// The snapshot list's columns.
pub const SNAPSHOT_HEADER: [&str; 7] = ["ID", "NAME", "VM", "MEMORY", "DISKS", "CLONES", "CREATED"];

/// Snapshots, one per row: the space they take and how many clones.
pub fn snapshot_table(snapshots: &[VmSnapshot]) -> String {
    let mut t = Table::new(SNAPSHOT_HEADER);
    for s in snapshots {
        t.row(vec![
            s.id.clone(),
            s.name.clone(),
            s.vm_id.clone(),
            format_size(s.memory_bytes),
            format_size(s.disk_bytes),
            s.clones.len().to_string(),
            timestamp_text(s.created_at.as_ref()),
        ]);
    }
    t.render()
}

/// One snapshot in full.
pub fn snapshot_detail(s: &VmSnapshot) -> String {
    let spec = s.spec.clone().unwrap_or_default();
    let mut t = Table::headless();
    t.row(vec!["id".into(), s.id.clone()]);
    t.row(vec!["name".into(), s.name.clone()]);
    t.row(vec!["vm".into(), format!("{} ({})", s.vm_id, spec.name)]);
    t.row(vec!["pool".into(), pool_id_text(&spec.pool_id)]);
    t.row(vec![
        "size".into(),
        format!(
            "{} vCPUs, {}",
            spec.vcpus,
            format_size(spec.memory_mib.saturating_mul(MIB))
        ),
    ]);
    t.row(vec!["memory file".into(), format_size(s.memory_bytes)]);
    t.row(vec!["disk copies".into(), format_size(s.disk_bytes)]);
    t.row(vec!["clones".into(), list_text(&s.clones)]);
    t.row(vec![
        "created".into(),
        timestamp_text(s.created_at.as_ref()),
    ]);
    t.render()
}

/// One VM in full, one field per line (disks and NICs one per line).
pub fn vm_detail(vm: &VirtualMachine) -> String {
    let spec = vm.spec.clone().unwrap_or_default();
    let status = vm.status.clone().unwrap_or_default();
    let mut t = Table::headless();
    let mut state = state_name(status.state);
    if !status.reason.is_empty() {
        state = format!("{state} ({})", status.reason);
    }
    t.row(["ID".to_string(), vm.id.clone()]);
    t.row(["NAME".to_string(), spec.name.clone()]);
    t.row(["POOL".to_string(), pool_id_text(&spec.pool_id)]);
    t.row(["ROLE".to_string(), role_text(spec.role)]);
    t.row(["STATE".to_string(), state]);
    t.row(["PID".to_string(), pid_text(status.pid)]);
    t.row(["UID".to_string(), uid_text(status.uid, status.pid)]);
    t.row(["VCPUS".to_string(), spec.vcpus.to_string()]);
    t.row([
        "MEMORY".to_string(),
        format_size(spec.memory_mib.saturating_mul(MIB)),
    ]);
    t.row(["CPU (RES/LIMIT/SHARES)".to_string(), vm_cpu_text(&spec)]);
    t.row([
        "MEM RESERVATION".to_string(),
        vm_mem_reservation_text(&spec),
    ]);
    t.row([
        "RESERVATION".to_string(),
        amounts_cells(status.reservation.as_ref()).join("/"),
    ]);
    if let Some(balloon) = &status.balloon {
        t.row(["BALLOON".to_string(), balloon_text(balloon)]);
    }
    if spec.image.is_empty() {
        t.row(["KERNEL".to_string(), or_dash(&spec.kernel)]);
        t.row(["INITRD".to_string(), or_dash(&spec.initrd)]);
    } else {
        t.row(["IMAGE".to_string(), spec.image.clone()]);
    }
    t.row(["CMDLINE".to_string(), or_dash(&spec.cmdline)]);
    vm_devices(&mut t, &spec, &status.nics);
    t.row([
        "CREATED".to_string(),
        timestamp_text(status.created_at.as_ref()),
    ]);
    t.row([
        "STARTED".to_string(),
        timestamp_text(status.started_at.as_ref()),
    ]);
    guest_rows(&mut t, status.guest.as_ref());
    t.render()
}

/// `target 96Mi, holds 96Mi; guest 180Mi of 420Mi available`: the
/// guest's part once it reported.
fn balloon_text(balloon: &BalloonStatus) -> String {
    let held = format!(
        "target {}, holds {}",
        format_size(balloon.target_mib.saturating_mul(MIB)),
        format_size(balloon.actual_mib.saturating_mul(MIB))
    );
    if balloon.guest_total_mib == 0 {
        return held;
    }
    format!(
        "{held}; guest {} of {} available",
        format_size(balloon.guest_available_mib.saturating_mul(MIB)),
        format_size(balloon.guest_total_mib.saturating_mul(MIB))
    )
}

/// What the guest agent says: its state, then (once it answered) the
/// guest's hostname, OS, kernel, addresses per interface, last heartbeat.
fn guest_rows(t: &mut Table, guest: Option<&GuestInfo>) {
    let Some(guest) = guest else {
        t.row(["GUEST".to_string(), "-".to_string()]);
        return;
    };
    let state = match guest.state() {
        GuestState::Unspecified => "unknown",
        GuestState::Connected => "connected",
        GuestState::Ready => "ready",
        GuestState::Lost => "lost",
    };
    let state = if guest.reason.is_empty() {
        state.to_string()
    } else {
        format!("{state} ({})", guest.reason)
    };
    t.row(["GUEST".to_string(), state]);
    if guest.agent_version.is_empty() {
        return;
    }
    t.row(["GUEST HOSTNAME".to_string(), or_dash(&guest.hostname)]);
    t.row(["GUEST OS".to_string(), or_dash(&guest.os)]);
    t.row(["GUEST KERNEL".to_string(), or_dash(&guest.kernel)]);
    for interface in &guest.interfaces {
        let addresses = list_text(&interface.addresses);
        t.row([
            format!("GUEST IF {}", interface.name),
            format!("{} {addresses}", or_dash(&interface.mac)),
        ]);
    }
    t.row(["GUEST AGENT".to_string(), guest.agent_version.clone()]);
    t.row([
        "GUEST HEARD".to_string(),
        timestamp_text(guest.last_heartbeat.as_ref()),
    ]);
}

fn vm_cpu_text(spec: &stratum_api::proto::VmSpec) -> String {
    let res = spec
        .cpu_reservation_millicores
        .map_or_else(|| "role default".into(), format_millicores);
    let limit = limit_text(spec.cpu_limit_millicores.unwrap_or(0), format_millicores);
    format!("{res}/{limit}/{}", shares_text(spec.cpu_shares.as_ref()))
}

fn vm_mem_reservation_text(spec: &stratum_api::proto::VmSpec) -> String {
    spec.memory_reservation_mib.map_or_else(
        || "all of memory".into(),
        |mib| format_size(mib.saturating_mul(MIB)),
    )
}

/// Disks, NICs and labels. A NIC on a network shows what the agent set up
/// (its status) once there is one, else what the spec asks for; a NIC on
/// a TAP, its spec.
fn vm_devices(t: &mut Table, spec: &stratum_api::proto::VmSpec, nics: &[NicStatus]) {
    for (i, disk) in spec.disks.iter().enumerate() {
        let mut text = disk.base_image.clone();
        if disk.read_only {
            text.push_str(" ro");
        }
        if !disk.serial.is_empty() {
            text.push_str(&format!(" serial={}", disk.serial));
        }
        t.row([format!("DISK {i}"), text]);
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        let on_network = nics.iter().find(|n| usize::try_from(n.index) == Ok(i));
        let text = match on_network {
            Some(status) => nic_status_text(status),
            None => nic_spec_text(nic),
        };
        t.row([format!("NIC {i}"), text]);
    }
    // A status the spec has no NIC for (not from a consistent answer).
    for status in nics
        .iter()
        .filter(|n| usize::try_from(n.index).map_or(true, |i| i >= spec.nics.len()))
    {
        t.row([format!("NIC {}", status.index), nic_status_text(status)]);
    }
    let labels: Vec<String> = spec
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    t.row(["LABELS".to_string(), list_text(&labels)]);
}

/// A NIC as the spec has it: `TAP mac=MAC [ip=..] [gw=..]`, or on a
/// network `net=NAME mac=MAC [ip=..]` (the address asked for).
fn nic_spec_text(nic: &NicSpec) -> String {
    let mac = if nic.mac.is_empty() {
        "generated"
    } else {
        &nic.mac
    };
    let mut text = if nic.network.is_empty() {
        format!("{} mac={mac}", nic.tap_name)
    } else {
        format!("net={} mac={mac}", nic.network)
    };
    if !nic.addresses.is_empty() {
        text.push_str(&format!(" ip={}", nic.addresses.join(",")));
    }
    if !nic.gateway.is_empty() {
        text.push_str(&format!(" gw={}", nic.gateway));
    }
    text
}

/// A NIC on a network as the agent set it up, every field always there
/// (`-` when empty): `net=NAME mac=MAC ip=CIDR gw=IP dev=TAP
/// guest=CIDR,...` (the host TAP while the VM runs; the guest's addresses
/// on it as its guest agent reports them).
fn nic_status_text(nic: &NicStatus) -> String {
    let guest = if nic.guest_addresses.is_empty() {
        "-".to_string()
    } else {
        nic.guest_addresses.join(",")
    };
    format!(
        "net={} mac={} ip={} gw={} dev={} guest={guest}",
        or_dash(&nic.network),
        or_dash(&nic.mac),
        or_dash(&nic.address),
        or_dash(&nic.gateway),
        or_dash(&nic.host_device),
    )
}

/// The network list's columns.
pub const NETWORK_HEADER: [&str; 7] = [
    "NAME",
    "CIDR",
    "GATEWAY",
    "BRIDGE",
    "NAT",
    "NAMESPACES",
    "ATTACHED",
];

/// Networks, one per row: NAMESPACES `*` for every namespace, ATTACHED
/// the number of VM NICs and pods on it.
pub fn network_table(networks: &[Network]) -> String {
    let mut t = Table::new(NETWORK_HEADER);
    for network in networks {
        let spec = network.spec.clone().unwrap_or_default();
        let status = network.status.clone().unwrap_or_default();
        let namespaces = if spec.namespaces.is_empty() {
            "*".to_string()
        } else {
            spec.namespaces.join(",")
        };
        t.row([
            spec.name.clone(),
            or_dash(&spec.cidr),
            or_dash(&status.gateway),
            network_bridge(network),
            yes_no(spec.nat).to_string(),
            namespaces,
            status.attachments.len().to_string(),
        ]);
    }
    t.render()
}

/// The bridge in use, else the one asked for, else `-`.
fn network_bridge(network: &Network) -> String {
    let used = network.status.as_ref().map(|s| s.bridge.as_str());
    let asked = network.spec.as_ref().map(|s| s.bridge.as_str());
    or_dash(used.filter(|b| !b.is_empty()).or(asked).unwrap_or_default())
}

fn yes_no(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

/// One network in full, one field per line, then an `ATTACHMENT` line per
/// VM NIC or pod on it.
pub fn network_detail(network: &Network) -> String {
    let spec = network.spec.clone().unwrap_or_default();
    let status = network.status.clone();
    let mut t = Table::headless();
    t.row(["NAME".to_string(), spec.name.clone()]);
    t.row(["CIDR".to_string(), or_dash(&spec.cidr)]);
    t.row([
        "GATEWAY".to_string(),
        or_dash(status.as_ref().map_or("", |s| s.gateway.as_str())),
    ]);
    t.row(["BRIDGE".to_string(), network_bridge(network)]);
    t.row(["NAT".to_string(), yes_no(spec.nat).to_string()]);
    let namespaces = if spec.namespaces.is_empty() {
        "* (every namespace)".to_string()
    } else {
        spec.namespaces.join(", ")
    };
    t.row(["NAMESPACES".to_string(), namespaces]);
    t.row(["NAMESERVERS".to_string(), list_text(&spec.nameservers)]);
    t.row([
        "FREE".to_string(),
        status
            .as_ref()
            .map_or_else(|| "-".into(), |s| s.free_addresses.to_string()),
    ]);
    t.row([
        "CREATED".to_string(),
        timestamp_text(status.as_ref().and_then(|s| s.created_at.as_ref())),
    ]);
    let attachments = status.map(|s| s.attachments).unwrap_or_default();
    t.row(["ATTACHED".to_string(), attachments.len().to_string()]);
    for a in &attachments {
        t.row(["ATTACHMENT".to_string(), attachment_text(a)]);
    }
    t.render()
}

/// `vm vm-3/0 ns=NS ip=CIDR mac=MAC dev=TAP` (the VM's id and NIC index),
/// `pod pod-7 ns=NS ip=CIDR mac=- dev=VETH`; `-` for what is empty.
fn attachment_text(a: &NetworkAttachment) -> String {
    let kind = or_dash(&a.kind);
    let id = if a.kind == "vm" {
        format!("{}/{}", or_dash(&a.id), a.nic)
    } else {
        or_dash(&a.id)
    };
    format!(
        "{kind} {id} ns={} ip={} mac={} dev={}",
        or_dash(&a.namespace),
        or_dash(&a.address),
        or_dash(&a.mac),
        or_dash(&a.host_device),
    )
}

/// `TIME  VM  OLD -> NEW  reason` on one line.
pub fn event_line(event: &VmEvent) -> String {
    let what = match event.kind() {
        VmEventKind::StateChanged => format!(
            "{} -> {}",
            state_name(event.old_state),
            state_name(event.new_state)
        ),
        VmEventKind::GuestReady => "GUEST_READY".to_string(),
        VmEventKind::GuestLost => "GUEST_LOST".to_string(),
    };
    let mut line = format!(
        "{}  {}  {what}",
        timestamp_text(event.timestamp.as_ref()),
        event.vm_id,
    );
    if !event.reason.is_empty() {
        line.push_str("  ");
        line.push_str(&event.reason);
    }
    line
}

/// The image list's columns.
pub const IMAGE_HEADER: [&str; 6] = ["REFERENCE", "ID", "SIZE", "LAYERS", "USERS", "STORED"];

/// `<none>` for an unnamed image, else its first reference.
fn image_name(image: &Image) -> String {
    image
        .references
        .first()
        .cloned()
        .unwrap_or_else(|| "<none>".into())
}

/// Images, one per row.
pub fn image_table(images: &[Image]) -> String {
    let mut t = Table::new(IMAGE_HEADER);
    for image in images {
        t.row([
            image_name(image),
            short_digest(&image.id).to_string(),
            format_size(image.size_bytes),
            image.layers.len().to_string(),
            image.users.to_string(),
            timestamp_text(image.stored_at.as_ref()),
        ]);
    }
    t.render()
}

/// One image in full, one field per line (names and layers one per line).
pub fn image_detail(image: &Image) -> String {
    let config = image.config.clone().unwrap_or_default();
    let mut t = Table::headless();
    t.row(["ID".to_string(), image.id.clone()]);
    t.row(["MANIFEST".to_string(), image.manifest_digest.clone()]);
    if image.references.is_empty() {
        t.row(["REFERENCE", "-"]);
    }
    for reference in &image.references {
        t.row(["REFERENCE".to_string(), reference.clone()]);
    }
    t.row(["SIZE".to_string(), format_size(image.size_bytes)]);
    t.row(["USERS".to_string(), image.users.to_string()]);
    t.row([
        "STORED".to_string(),
        timestamp_text(image.stored_at.as_ref()),
    ]);
    t.row(["ENTRYPOINT".to_string(), list_text(&config.entrypoint)]);
    t.row(["CMD".to_string(), list_text(&config.cmd)]);
    t.row(["WORKDIR".to_string(), or_dash(&config.working_dir)]);
    t.row(["USER".to_string(), or_dash(&config.user)]);
    for env in &config.env {
        t.row(["ENV".to_string(), env.clone()]);
    }
    for port in &config.exposed_ports {
        t.row(["EXPOSE".to_string(), port.clone()]);
    }
    for (k, v) in &config.labels {
        t.row(["LABEL".to_string(), format!("{k}={v}")]);
    }
    for layer in &image.layers {
        t.row([
            "LAYER".to_string(),
            format!("{} {}", layer.digest, format_size(layer.size_bytes)),
        ]);
    }
    t.render()
}

/// The pod list's columns.
pub const POD_HEADER: [&str; 9] = [
    "ID",
    "NAME",
    "NAMESPACE",
    "POOL",
    "STATE",
    "READY",
    "RESTARTS",
    "IP",
    "PORTS",
];

/// Pods, one per row: READY is running containers / all containers,
/// RESTARTS the restarts of all of them.
pub fn pod_table(pods: &[Pod]) -> String {
    let mut t = Table::new(POD_HEADER);
    for pod in pods {
        t.row(pod_row(pod));
    }
    t.render()
}

fn pod_row(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let running = status
        .containers
        .iter()
        .filter(|c| c.state == ContainerState::Running as i32)
        .count();
    let total = status.containers.len().max(spec.containers.len());
    let restarts: u64 = status
        .containers
        .iter()
        .map(|c| u64::from(c.restart_count))
        .sum();
    vec![
        pod.id.clone(),
        spec.name.clone(),
        pod_namespace(&spec, &status),
        pool_id_text(&spec.pool_id),
        pod_state_name(status.state),
        format!("{running}/{total}"),
        restarts.to_string(),
        or_dash(&status.ip),
        ports_text(&spec),
    ]
}

/// The namespace in force, else the one asked for, else `-`.
fn pod_namespace(
    spec: &stratum_api::proto::PodSpec,
    status: &stratum_api::proto::PodStatus,
) -> String {
    if status.namespace.is_empty() {
        or_dash(&spec.namespace)
    } else {
        status.namespace.clone()
    }
}

fn ports_text(spec: &stratum_api::proto::PodSpec) -> String {
    let ports: Vec<String> = spec.port_mappings.iter().map(port_text).collect();
    if ports.is_empty() {
        "-".into()
    } else {
        ports.join(",")
    }
}

fn restart_text(policy: i32) -> String {
    RestartPolicy::try_from(policy)
        .map_or_else(|_| format!("unknown({policy})"), |p| restart_name(p).into())
}

fn runtime_class_text(class: i32) -> String {
    match RuntimeClass::try_from(class) {
        Ok(RuntimeClass::Unspecified | RuntimeClass::Container) => "container".into(),
        Ok(RuntimeClass::Microvm) => "microvm".into(),
        Err(_) => format!("unknown({class})"),
    }
}

/// Most characters of a reason a table row shows (`get` shows it whole).
const TABLE_REASON_CHARS: usize = 60;

/// `text`, or its first `max` characters and `…` when longer.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// `STATE (reason)`, or the state alone without a reason.
fn with_reason(state: String, reason: &str) -> String {
    if reason.is_empty() {
        state
    } else {
        format!("{state} ({reason})")
    }
}

/// The container table's columns in `pod get`.
pub const CONTAINER_HEADER: [&str; 9] = [
    "CONTAINER",
    "STATE",
    "EXIT",
    "RESTARTS",
    "PID",
    "IMAGE",
    "LIMIT CPU/MEM",
    "COMMAND",
    "REASON",
];

/// One pod in full: its fields one per line, then a table of its
/// containers (spec and state side by side), then each container's
/// environment, working directory and times.
pub fn pod_detail(pod: &Pod) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let requests = spec.resources.and_then(|r| r.requests);
    let mut t = Table::headless();
    t.row(["ID".to_string(), pod.id.clone()]);
    t.row(["NAME".to_string(), spec.name.clone()]);
    t.row(["NAMESPACE".to_string(), pod_namespace(&spec, &status)]);
    t.row(["POOL".to_string(), pool_id_text(&spec.pool_id)]);
    t.row([
        "STATE".to_string(),
        with_reason(pod_state_name(status.state), &status.reason),
    ]);
    t.row(["IP".to_string(), or_dash(&status.ip)]);
    let network = if spec.network.is_empty() {
        "default"
    } else {
        &spec.network
    };
    t.row(["NETWORK", network]);
    let hostname = if spec.hostname.is_empty() {
        &spec.name
    } else {
        &spec.hostname
    };
    t.row(["HOSTNAME".to_string(), or_dash(hostname)]);
    t.row([
        "RUNTIME".to_string(),
        runtime_class_text(spec.runtime_class),
    ]);
    t.row([
        "RESTART POLICY".to_string(),
        restart_text(spec.restart_policy),
    ]);
    t.row([
        "REQUESTS CPU/MEM".to_string(),
        amounts_cells(status.reservation.as_ref().or(requests.as_ref())).join("/"),
    ]);
    let limits = status
        .limits
        .or_else(|| spec.resources.and_then(|r| r.limits));
    t.row(["LIMITS CPU/MEM".to_string(), limits_text(limits.as_ref())]);
    if spec.port_mappings.is_empty() {
        t.row(["PORTS", "-"]);
    }
    for port in &spec.port_mappings {
        t.row(["PORT".to_string(), port_text(port)]);
    }
    let labels: Vec<String> = spec
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    t.row(["LABELS".to_string(), list_text(&labels)]);
    t.row([
        "CREATED".to_string(),
        timestamp_text(status.created_at.as_ref()),
    ]);
    t.row([
        "STARTED".to_string(),
        timestamp_text(status.started_at.as_ref()),
    ]);
    t.row([
        "FINISHED".to_string(),
        timestamp_text(status.finished_at.as_ref()),
    ]);
    let containers = pod_containers(&spec.containers, &status.containers);
    let mut out = t.render();
    out.push('\n');
    let mut c = Table::new(CONTAINER_HEADER);
    for (spec, status) in &containers {
        c.row(container_row(*spec, *status));
    }
    out.push_str(&c.render());
    let details = container_details(&containers);
    if !details.is_empty() {
        out.push('\n');
        out.push_str(&details.render());
    }
    out
}

type ContainerPair<'a> = (Option<&'a ContainerSpec>, Option<&'a ContainerStatus>);

/// Each container's spec with its status, matched by name: in spec order,
/// then any status without a spec.
fn pod_containers<'a>(
    specs: &'a [ContainerSpec],
    statuses: &'a [ContainerStatus],
) -> Vec<ContainerPair<'a>> {
    let mut out: Vec<ContainerPair<'a>> = specs
        .iter()
        .map(|s| (Some(s), statuses.iter().find(|c| c.name == s.name)))
        .collect();
    for status in statuses {
        if !specs.iter().any(|s| s.name == status.name) {
            out.push((None, Some(status)));
        }
    }
    out
}

/// The container's command line: command then args, `-` for the image's.
fn command_text(spec: &ContainerSpec) -> String {
    let words: Vec<&str> = spec
        .command
        .iter()
        .chain(&spec.args)
        .map(String::as_str)
        .collect();
    if words.is_empty() {
        "-".into()
    } else {
        words.join(" ")
    }
}

fn container_row(spec: Option<&ContainerSpec>, status: Option<&ContainerStatus>) -> Vec<String> {
    let st = status.cloned().unwrap_or_default();
    let name = spec
        .map_or(st.name.as_str(), |s| s.name.as_str())
        .to_string();
    let image = match (spec, st.image_id.is_empty()) {
        (Some(s), true) => s.image.clone(),
        (Some(s), false) => format!("{} ({})", s.image, short_digest(&st.image_id)),
        (None, _) => or_dash(short_digest(&st.image_id)),
    };
    let mut reason = st.reason.clone();
    if let Some(at) = &st.restart_at {
        if !reason.is_empty() {
            reason.push_str("; ");
        }
        reason.push_str(&format!("restarts at {at}"));
    }
    vec![
        name,
        status.map_or_else(|| "-".into(), |s| container_state_name(s.state)),
        st.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
        st.restart_count.to_string(),
        pid_text(st.pid),
        image,
        limits_text(spec.and_then(|s| s.limits.as_ref())),
        spec.map_or_else(|| "-".into(), command_text),
        or_dash(&reason),
    ]
}

/// Per container, what the table has no room for: environment, working
/// directory, run id and times; `NAME FIELD value` rows.
fn container_details(containers: &[ContainerPair<'_>]) -> Table {
    let mut t = Table::headless();
    for (spec, status) in containers {
        let name = spec
            .map(|s| s.name.as_str())
            .or(status.map(|s| s.name.as_str()))
            .unwrap_or_default();
        if let Some(spec) = spec {
            for env in &spec.env {
                t.row([name, "ENV", &format!("{}={}", env.name, env.value)]);
            }
            if !spec.working_dir.is_empty() {
                t.row([name, "WORKDIR", &spec.working_dir]);
            }
        }
        if let Some(st) = status {
            if !st.id.is_empty() {
                t.row([name, "RUN ID", &st.id]);
            }
            for (field, ts) in [
                ("CREATED", &st.created_at),
                ("STARTED", &st.started_at),
                ("FINISHED", &st.finished_at),
            ] {
                if let Some(ts) = ts {
                    t.row([name.to_string(), field.to_string(), ts.to_string()]);
                }
            }
        }
    }
    t
}

/// The stats table's columns.
pub const POD_STATS_HEADER: [&str; 5] = ["NAME", "CPU TIME", "MEMORY", "OOM KILLS", "LIMIT HITS"];

/// A pod's live usage, then each container's indented beneath it (`-`
/// for a container that does not run).
pub fn pod_stats(stats: &PodStats) -> String {
    let mut t = Table::new(POD_STATS_HEADER);
    t.row(stats_row(&stats.pod_id, stats.pod.as_ref()));
    for c in &stats.containers {
        t.row(stats_row(&format!("  {}", c.name), c.usage.as_ref()));
    }
    t.render()
}

fn stats_row(name: &str, usage: Option<&LiveUsage>) -> Vec<String> {
    let [cpu, mem] = live_cells(usage);
    let (oom, hits) = usage.map_or_else(
        || ("-".into(), "-".into()),
        |u| (u.oom_kills.to_string(), u.memory_limit_hits.to_string()),
    );
    vec![name.to_string(), cpu, mem, oom, hits]
}
