//! The VM manager: VM lifecycle, one `vmm` process per VM, in a leaf
//! cgroup of its pool, driven through its control API. It owns the VMs'
//! records and processes behind its lock; each VM is a workload of the
//! pool manager's tree, placed, admitted and released there.
//!
//! States: CREATED → (Start) STARTING → RUNNING ⇄ PAUSED → (Shutdown)
//! STOPPING → STOPPED; a vmm that exits on its own ends STOPPED when the
//! guest powered off or reset (exit 0; vmm's line on how is the reason) and
//! FAILED otherwise (killed by the kernel's OOM killer, crashed, or failed
//! to start), with the reason.
//! Every transition is stored before it is reported and published on the
//! watch stream. A running VM holds its reservation in the pool tree;
//! STOPPED, FAILED and CREATED VMs hold none but count against quotas.
//!
//! Launching happens outside the manager's lock (STARTING marks the VM
//! busy), so a slow vmm start does not stall the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use tokio::sync::broadcast;

use super::artifacts::Kind;
use super::errors::{AgentError, Result};
use super::guest::GuestLink;
use super::networks::{mac_for, nic_owner, NetworkManager};
use super::now;
use super::pools::{pool_id_or_root, PoolManager};
use super::roles;
use super::shared::Shared;
use crate::records::{VmRecord, VmRuntime};
use crate::state::{Change, Ticket};
use stratum_api::proto;
use stratum_api::proto::VmState;
use stratum_cgroup::{Cgroup, CgroupLimits};
use stratum_image::{ImageLease, ImageStore, VmImageFiles};
use stratum_pool::{
    validate_name, PoolId, Shares, VmSizing, Workload, WorkloadId, MILLICORES_PER_CPU,
    VMM_MEMORY_OVERHEAD_BYTES,
};
use stratum_vm::seed::{Seed, StaticInterface};
use stratum_vm::DiskError;
use stratum_vm::{ConsoleFollower, ExitInfo, VmProcess, VmProcessSpec};

/// Grace period of a Shutdown that names none.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// After a hard stop through the API, how long before SIGKILL.
const HARD_STOP_GRACE: Duration = Duration::from_secs(5);
/// Lifecycle events kept for slow watchers before they miss some.
const EVENT_BACKLOG: usize = 1024;

/// The VM manager: every VM's record and running vmm, behind its lock.
pub struct VmManager {
    shared: Arc<Shared>,
    /// Where each VM is a workload: placed, admitted and released there.
    pools: Arc<PoolManager>,
    /// What VMs' NICs on networks are plugged into.
    networks: Arc<NetworkManager>,
    state: RwLock<State>,
    events: broadcast::Sender<proto::VmEvent>,
    /// `vmm --version`, asked once at start.
    vmm_version: String,
    /// Where VM images are (shared with pods and the image service).
    images: ImageStore,
    /// Held while a snapshot is taken: one at a time (each writes the
    /// VM's memory and copies its disks), and its group is chosen under it.
    snapshotting: std::sync::Mutex<()>,
    /// Running VMs' balloons as the memory reclaim last read them, by VM
    /// id, with the vmm's pid they were read from.
    balloons: std::sync::Mutex<BTreeMap<String, (u32, proto::BalloonStatus)>>,
}

mod snapshots;

use snapshots::SnapshotEntry;

/// What the lock guards.
struct State {
    vms: BTreeMap<String, VmEntry>,
    /// VM snapshots, by id.
    snapshots: BTreeMap<String, SnapshotEntry>,
}

/// A VM as the agent keeps it.
pub struct VmEntry {
    pub record: VmRecord,
    pub pool: PoolId,
    /// The running vmm, while there is one.
    pub process: Option<Arc<VmProcess>>,
    /// The agent ended the process itself (Kill, Shutdown): its exit is a
    /// stop, not a failure.
    pub stop_requested: bool,
    /// The link to the guest agent, while the vmm runs.
    pub guest: Option<Arc<GuestLink>>,
    /// The VM image it was made from, leased for its life.
    pub image: Option<VmImage>,
    /// A snapshot of it is being taken: it may not be paused or resumed
    /// meanwhile.
    pub snapshot_busy: bool,
}

/// A VM's image: held, and where its parts are.
pub struct VmImage {
    _lease: ImageLease,
    pub files: VmImageFiles,
    /// The image's manifest digest: it is leased again by this.
    pub digest: String,
}

impl VmEntry {
    fn state(&self) -> VmState {
        self.runtime().state()
    }

    pub(super) fn runtime(&self) -> &VmRuntime {
        self.record.runtime.as_ref().unwrap_or(&DEFAULT_RUNTIME)
    }

    pub(super) fn spec(&self) -> &proto::VmSpec {
        self.record.spec.as_ref().unwrap_or(&DEFAULT_SPEC)
    }
}

static DEFAULT_RUNTIME: VmRuntime = VmRuntime {
    state: 0,
    reason: String::new(),
    pid: 0,
    process_start_time: 0,
    control_socket: String::new(),
    cgroup_path: String::new(),
    disk_paths: Vec::new(),
    console_path: String::new(),
    started_at: None,
    updated_at: None,
    jail_uid: 0,
    seed_path: String::new(),
    root_disk_path: String::new(),
    image_digest: String::new(),
    nics: Vec::new(),
    cloned_from: String::new(),
    restore_pending: false,
    parent_macs: Vec::new(),
};

static DEFAULT_SPEC: proto::VmSpec = proto::VmSpec {
    name: String::new(),
    pool_id: String::new(),
    role: 0,
    vcpus: 0,
    memory_mib: 0,
    kernel: String::new(),
    initrd: String::new(),
    cmdline: String::new(),
    disks: Vec::new(),
    nics: Vec::new(),
    labels: BTreeMap::new(),
    cpu_reservation_millicores: None,
    cpu_limit_millicores: None,
    cpu_shares: None,
    memory_reservation_mib: None,
    cloud_init: None,
    image: String::new(),
    root_disk_mib: 0,
};

impl VmManager {
    /// Takes stock of the stored VMs at startup (see
    /// [`VmManager::restore_records`]).
    pub fn restore(
        shared: Arc<Shared>,
        pools: Arc<PoolManager>,
        networks: Arc<NetworkManager>,
        vmm_version: String,
        images: ImageStore,
        records: Vec<VmRecord>,
        snapshots: Vec<crate::records::SnapshotRecord>,
    ) -> Result<Self> {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let manager = VmManager {
            shared,
            pools,
            networks,
            state: RwLock::new(State {
                vms: BTreeMap::new(),
                snapshots: BTreeMap::new(),
            }),
            events,
            vmm_version,
            images,
            snapshotting: std::sync::Mutex::new(()),
            balloons: std::sync::Mutex::new(BTreeMap::new()),
        };
        manager.restore_records(records)?;
        manager.restore_snapshots(snapshots);
        Ok(manager)
    }

    pub fn vmm_version(&self) -> String {
        self.vmm_version.clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<proto::VmEvent> {
        self.events.subscribe()
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks and admits the VM, clones its disks with no lock held (they
    /// are files a caller named, of any size), then admits it again and
    /// stages its record under the write lock, and answers once the record
    /// is durable.
    pub fn create(&self, spec: &proto::VmSpec) -> Result<proto::VirtualMachine> {
        let mut spec = spec.clone();
        roles::apply_defaults(&mut spec);
        let sizing = check_spec(&spec, self.pools.host_memory())?;
        // Opens the files the spec names: no lock held.
        let base_images = self.check_files(&spec)?;
        self.define(&spec, &sizing, "VM create", |id, image, nics| {
            self.make_vm_files(id, &spec, &base_images, image, nics)
        })
    }

    /// What a create and a clone share, for a spec `check_spec` passed
    /// (`sizing`): the free-space floor, the image lease, the admission's
    /// dry run and the NICs' addresses before `make_files` makes the VM's
    /// directory and record (with no lock held); then the admission and
    /// the record staged, answered once durable. On failure nothing is
    /// left: directory, addresses, image lease.
    fn define(
        &self,
        spec: &proto::VmSpec,
        sizing: &VmSizing,
        what: &str,
        make_files: impl FnOnce(&str, Option<&VmImage>, &[NetworkNic]) -> Result<VmRecord>,
    ) -> Result<proto::VirtualMachine> {
        self.shared.config.check_free_disk(what)?;
        let image = self.lease_image(spec)?;
        let pool = pool_id_or_root(&spec.pool_id);
        let id = format!("vm-{}", self.shared.next_id()?);
        let workload = Workload::vm(WorkloadId::from(id.as_str()), pool.clone(), sizing)?;
        // Refused before any disk is cloned: a dry run of the admission.
        check_name_free(&self.read_state(), &spec.name)?;
        self.pools.check_workload(&workload)?;
        let namespace = self.pools.namespace_of(&pool)?;
        let nics = self.reserve_nics(&id, spec, &namespace)?;
        let made = make_files(&id, image.as_ref(), &nics)
            .and_then(|record| self.admit_vm(record, pool, workload, image));
        match made {
            Ok((ticket, vm)) => {
                // On failure the store has stopped (see `state::journal`).
                self.shared.settle(ticket)?;
                Ok(vm)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.shared.config.vm_dir(&id));
                self.release_nics(&id, nics.iter().map(|n| n.status.index));
                Err(e)
            }
        }
    }

    /// Reserves an address on its network for each of the spec's NICs
    /// that names one; on failure releases what it reserved.
    fn reserve_nics(
        &self,
        id: &str,
        spec: &proto::VmSpec,
        namespace: &str,
    ) -> Result<Vec<NetworkNic>> {
        let mut nics = Vec::new();
        for (i, nic) in spec.nics.iter().enumerate() {
            if nic.network.is_empty() {
                continue;
            }
            let owner = nic_owner(id, i);
            let requested = nic.addresses.first().map(String::as_str);
            let reserved = self.networks.blocking(async |host| {
                let r = self
                    .networks
                    .reserve(&nic.network, &owner, namespace, requested)
                    .await?;
                Ok((r, host.tap_name(&owner)))
            });
            let (reservation, tap) = match reserved {
                Ok(r) => r,
                Err(e) => {
                    // The failed NIC may hold an address already (a taken
                    // one is never its own, so releasing is safe).
                    self.release_nics(id, nics.iter().map(|n: &NetworkNic| n.status.index));
                    return Err(e);
                }
            };
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let mac = if nic.mac.is_empty() {
                mac_for(reservation.ip)
            } else {
                nic.mac.clone()
            };
            nics.push(NetworkNic {
                status: proto::NicStatus {
                    index,
                    network: nic.network.clone(),
                    mac,
                    address: format!("{}/{}", reservation.ip, reservation.prefix_len),
                    gateway: reservation.gateway.to_string(),
                    host_device: tap,
                    guest_addresses: Vec::new(),
                },
                nameservers: reservation
                    .nameservers
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
            });
        }
        Ok(nics)
    }

    /// Releases the addresses of VM `id`'s NICs `indexes` (unplugging any
    /// still plugged in). Failures are logged: reconcile at the next start
    /// releases what no VM holds.
    fn release_nics(&self, id: &str, indexes: impl IntoIterator<Item = u32>) {
        for index in indexes {
            let owner = nic_owner(id, index as usize);
            let released = self
                .networks
                .blocking(async |host| Ok(host.release(&owner).await?));
            if let Err(e) = released {
                tracing::warn!(nic = %owner, "cannot release the NIC's address: {e}");
            }
        }
    }

    /// Plugs VM `id`'s NICs on networks in: TAPs owned by `uid` (0: the
    /// vmm is not jailed), on their bridges. On failure unplugs them.
    fn plug_nics(
        &self,
        id: &str,
        nics: &[proto::NicStatus],
        namespace: &str,
        uid: u32,
    ) -> Result<()> {
        if nics.is_empty() {
            return Ok(());
        }
        let owner_ids = (uid != 0).then_some((uid, uid));
        let plugged = self.networks.blocking(async |host| {
            for nic in nics {
                host.plug(&nic_owner(id, nic.index as usize), namespace, owner_ids)
                    .await?;
            }
            Ok(())
        });
        if plugged.is_err() {
            self.unplug_nics(id, nics);
        }
        plugged
    }

    /// Unplugs VM `id`'s NICs on networks (their TAPs go, their addresses
    /// stay). Failures are logged: reconcile removes TAPs of VMs that do
    /// not run.
    fn unplug_nics(&self, id: &str, nics: &[proto::NicStatus]) {
        if nics.is_empty() {
            return;
        }
        let unplugged = self.networks.blocking(async |host| {
            for nic in nics {
                host.unplug(&nic_owner(id, nic.index as usize)).await?;
            }
            Ok(())
        });
        if let Err(e) = unplugged {
            tracing::warn!(vm = %id, "cannot unplug the VM's NICs: {e}");
        }
    }

    /// The NICs on networks of every VM (their addresses stay at a
    /// reconcile), and of the VMs that run (their TAPs stay).
    pub fn nic_owners(&self) -> (Vec<String>, Vec<String>) {
        let state = self.read_state();
        let mut reserved = Vec::new();
        let mut plugged = Vec::new();
        for (id, vm) in &state.vms {
            for nic in &vm.runtime().nics {
                let owner = nic_owner(id, nic.index as usize);
                if vm.process.is_some() {
                    plugged.push(owner.clone());
                }
                reserved.push(owner);
            }
        }
        (reserved, plugged)
    }

    /// The MAC of each VM NIC on a network, by its IPAM owner.
    pub fn nic_macs(&self) -> BTreeMap<String, String> {
        let state = self.read_state();
        state
            .vms
            .iter()
            .flat_map(|(id, vm)| {
                vm.runtime()
                    .nics
                    .iter()
                    .map(|nic| (nic_owner(id, nic.index as usize), nic.mac.clone()))
            })
            .collect()
    }

    /// Admits the VM for real (the tree may have changed since the dry
    /// run), adds it and stages its record.
    fn admit_vm(
        &self,
        record: VmRecord,
        pool: PoolId,
        workload: Workload,
        image: Option<VmImage>,
    ) -> Result<(Ticket, proto::VirtualMachine)> {
        let mut state = self.write_state();
        let spec = record.spec.as_ref().unwrap_or(&DEFAULT_SPEC);
        check_name_free(&state, &spec.name)?;
        let workload_id = workload.id().clone();
        self.pools.add_workload(workload)?;
        let ticket = match self.shared.stage([Change::PutVm(Box::new(record.clone()))]) {
            Ok(ticket) => ticket,
            Err(e) => {
                self.pools.remove_workload(workload_id.as_str());
                return Err(e);
            }
        };
        let entry = VmEntry {
            record,
            pool,
            process: None,
            stop_requested: false,
            guest: None,
            image,
            snapshot_busy: false,
        };
        let vm = self.to_proto(&entry);
        state.vms.insert(entry.record.id.clone(), entry);
        Ok((ticket, vm))
    }

    /// Leases the spec's VM image, if it names one: NOT_FOUND when the
    /// store has none such, INVALID_ARGUMENT for a container image or a
    /// spec that also names a kernel.
    fn lease_image(&self, spec: &proto::VmSpec) -> Result<Option<VmImage>> {
        if spec.image.is_empty() {
            if spec.kernel.is_empty() {
                return Err(AgentError::InvalidArgument(
                    "a VM needs an image (or, for development, a kernel)".into(),
                ));
            }
            return Ok(None);
        }
        if !spec.kernel.is_empty() || !spec.initrd.is_empty() {
            return Err(AgentError::InvalidArgument(
                "a VM made from an image boots the image's kernel: give no kernel or initrd".into(),
            ));
        }
        let lease = self.images.acquire(&spec.image).map_err(|e| {
            AgentError::NotFound(format!("VM image: {e} (pull or import it first)"))
        })?;
        let Some(files) = self.images.vm_files(lease.record()) else {
            return Err(AgentError::InvalidArgument(format!(
                "{} is a container image, not a VM image",
                stratum_pool::quoted(&spec.image)
            )));
        };
        let digest = lease.record().manifest_digest.to_string();
        Ok(Some(VmImage {
            _lease: lease,
            files,
            digest,
        }))
    }

    /// The image of a stored VM, leased again after a restart. It cannot
    /// have been removed while leased; if it is gone all the same, the VM
    /// keeps its disk and cannot start (its start says why).
    fn lease_again(&self, id: &str, digest: &str) -> Option<VmImage> {
        let leased = self.images.acquire(digest).ok().and_then(|lease| {
            let files = self.images.vm_files(lease.record())?;
            Some(VmImage {
                _lease: lease,
                files,
                digest: digest.to_string(),
            })
        });
        if leased.is_none() {
            tracing::error!(vm = %id, image = %digest, "the VM's image is no longer in the store");
        }
        leased
    }

    /// Checks the host files the spec names against the artifact
    /// directories (see `artifacts`); returns the disks' base images
    /// resolved. Blocking lookups of caller-named paths: no lock held.
    fn check_files(&self, spec: &proto::VmSpec) -> Result<Vec<PathBuf>> {
        self.check_boot_files(spec)?;
        let artifacts = &self.shared.config.artifacts;
        spec.disks
            .iter()
            .enumerate()
            .map(|(i, disk)| {
                artifacts.check(
                    &format!("disk {i} base image"),
                    &disk.base_image,
                    Kind::File,
                )
            })
            .collect()
    }

    /// The kernel and initrd, which the vmm opens at every start.
    fn check_boot_files(&self, spec: &proto::VmSpec) -> Result<()> {
        if !spec.image.is_empty() {
            // They are the image's, in the store.
            return Ok(());
        }
        let artifacts = &self.shared.config.artifacts;
        artifacts.check("kernel", &spec.kernel, Kind::File)?;
        if !spec.initrd.is_empty() {
            artifacts.check("initrd", &spec.initrd, Kind::File)?;
        }
        Ok(())
    }

    /// Makes the VM's directory and clones its disks (from `base_images`,
    /// resolved) into it; on failure removes what it made.
    fn make_vm_files(
        &self,
        id: &str,
        spec: &proto::VmSpec,
        base_images: &[PathBuf],
        image: Option<&VmImage>,
        nics: &[NetworkNic],
    ) -> Result<VmRecord> {
        let dir = self.shared.config.vm_dir(id);
        let made = (|| {
            std::fs::create_dir_all(&dir)
                .map_err(|e| AgentError::Internal(format!("{}: {e}", dir.display())))?;
            let root_disk_path = match image {
                Some(image) => copy_root_disk(&dir, spec, &image.files.disk)?,
                None => String::new(),
            };
            let disk_paths = clone_disks(&dir, spec, base_images)?;
            let seed_path = write_seed(&dir, spec, seed_of(id, spec, nics))?;
            Ok(self.created_record(
                id,
                spec,
                image,
                nics,
                VmRuntime {
                    disk_paths,
                    seed_path,
                    root_disk_path,
                    ..VmRuntime::default()
                },
            ))
        })();
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    /// The record of a VM just made: CREATED, with `files` (its disks and
    /// seed, and what else the caller sets) and what every VM has (its
    /// image, NICs and console log).
    fn created_record(
        &self,
        id: &str,
        spec: &proto::VmSpec,
        image: Option<&VmImage>,
        nics: &[NetworkNic],
        files: VmRuntime,
    ) -> VmRecord {
        VmRecord {
            id: id.to_string(),
            spec: Some(spec.clone()),
            runtime: Some(VmRuntime {
                state: VmState::Created as i32,
                image_digest: image.map(|i| i.digest.clone()).unwrap_or_default(),
                nics: nics.iter().map(|n| n.status.clone()).collect(),
                console_path: stratum_vm::RunDir::new(self.shared.config.vm_run_dir(id))
                    .console_log()
                    .to_string_lossy()
                    .into_owned(),
                updated_at: Some(now()),
                ..files
            }),
            created_at: Some(now()),
        }
    }

    pub fn start(self: &Arc<Self>, id: &str) -> Result<proto::VirtualMachine> {
        // Checked again at every start, with no lock held: the artifact
        // directories may have changed since the create.
        let (spec, image_missing) = {
            let state = self.read_state();
            let entry = vm_entry(&state, id)?;
            let missing = !entry.spec().image.is_empty() && entry.image.is_none();
            (entry.spec().clone(), missing)
        };
        if image_missing {
            return Err(AgentError::FailedPrecondition(format!(
                "VM {id}'s image {} is no longer in the store",
                stratum_pool::quoted(&spec.image)
            )));
        }
        self.check_boot_files(&spec)?;
        let (spec, cgroup, (jail_uid, jail_gid), ticket) = self.begin_start(id)?;
        if let Err(e) = self.shared.settle(ticket) {
            let _ = cgroup.remove();
            return Err(e);
        }
        let (nics, namespace) = self.nics_of(id)?;
        if let Err(e) = self.plug_nics(id, &nics, &namespace, jail_uid) {
            let reason = format!("cannot plug the VM's NICs in: {e}");
            self.fail_start(id, &cgroup, &reason);
            return Err(e);
        }
        let config = &self.shared.config;
        let options = stratum_vm::LaunchOptions {
            jail: config.vm_jail.as_ref().map(|jail| stratum_vm::JailConfig {
                jailer: jail.jailer.clone(),
                uid: jail_uid,
                gid: jail_gid,
            }),
            ..stratum_vm::LaunchOptions::default()
        };
        let launched = stratum_vm::launch_with(
            &config.vmm_binary,
            &config.vm_run_dir(id),
            &spec,
            &cgroup,
            &options,
        );
        match launched {
            Ok(process) => self.finish_start(id, Arc::new(process), &cgroup),
            Err(e) => {
                let reason = format!("vmm failed to start: {e}");
                self.unplug_nics(id, &nics);
                self.fail_start(id, &cgroup, &reason);
                Err(AgentError::FailedPrecondition(reason))
            }
        }
    }

    /// VM `id`'s NICs on networks and its namespace.
    fn nics_of(&self, id: &str) -> Result<(Vec<proto::NicStatus>, String)> {
        let state = self.read_state();
        let entry = vm_entry(&state, id)?;
        let namespace = self.pools.namespace_of(&entry.pool)?;
        Ok((entry.runtime().nics.clone(), namespace))
    }

    /// Admits the VM's reservation, makes its leaf cgroup, picks its jail
    /// uid and marks it STARTING; returns what the launch needs (the jail
    /// uid and gid: the uid's own, or a restoring clone's snapshot group)
    /// and the record's ticket.
    fn begin_start(&self, id: &str) -> Result<(VmProcessSpec, Cgroup, (u32, u32), Ticket)> {
        let mut state = self.write_state();
        let entry = vm_entry(&state, id)?;
        if !matches!(
            entry.state(),
            VmState::Created | VmState::Stopped | VmState::Failed
        ) {
            return Err(AgentError::FailedPrecondition(format!(
                "VM {id} is {}; only a created, stopped or failed VM can start",
                state_name(entry.state())
            )));
        }
        let jail_uid = self.free_jail_uid(&state)?;
        let restore = snapshots::restore_of(&state, entry)?;
        let jail_gid = restore.as_ref().map_or(jail_uid, |(_, gid)| *gid);
        self.pools.admit(id)?;
        let prepared = (|| {
            let entry = vm_entry(&state, id)?;
            let pool_cgroup = self.pools.pool_cgroup(&entry.pool)?;
            let cgroup = self.shared.cgroups.create_vm_leaf(&pool_cgroup, id)?;
            cgroup.apply(&vm_limits(entry.spec()))?;
            let mut spec = process_spec(id, entry);
            spec.restore = restore.map(|(restore, _)| restore);
            Ok((spec, cgroup))
        })();
        let (spec, cgroup) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.pools.release(id);
                return Err(e);
            }
        };
        let cgroup_path = cgroup.path().to_string_lossy().into_owned();
        match self.transition(&mut state, id, VmState::Starting, "", |rt| {
            rt.cgroup_path = cgroup_path;
            rt.jail_uid = jail_uid;
        }) {
            Ok(ticket) => Ok((spec, cgroup, (jail_uid, jail_gid), ticket)),
            Err(e) => {
                self.pools.release(id);
                let _ = cgroup.remove();
                Err(e)
            }
        }
    }

    /// The lowest uid of the jail range that no starting or running VM
    /// holds (0 without a jail). A VM that ends gives its uid back
    /// ([`clear_process`]).
    fn free_jail_uid(&self, state: &State) -> Result<u32> {
        let Some(jail) = &self.shared.config.vm_jail else {
            return Ok(0);
        };
        let used: std::collections::BTreeSet<u32> = state
            .vms
            .values()
            .map(|vm| vm.runtime().jail_uid)
            .filter(|&uid| uid != 0)
            .collect();
        jail.ids
            .clone()
            .find(|uid| !used.contains(uid))
            .ok_or_else(|| {
                AgentError::ResourceExhausted(format!(
                    "every uid of the VM jail range {}-{} is in use",
                    jail.ids.start(),
                    jail.ids.end()
                ))
            })
    }

    fn finish_start(
        self: &Arc<Self>,
        id: &str,
        process: Arc<VmProcess>,
        cgroup: &Cgroup,
    ) -> Result<proto::VirtualMachine> {
        let mut state = self.write_state();
        let stored = self.transition(&mut state, id, VmState::Running, "", |rt| {
            rt.pid = process.pid();
            rt.process_start_time = process.start_time();
            rt.control_socket = process.api_sock().to_string_lossy().into_owned();
            rt.started_at = Some(now());
            // A clone's restore has run: its next start boots its disks.
            rt.restore_pending = false;
        });
        let ticket = match stored {
            Ok(ticket) => ticket,
            Err(e) => {
                // Not recorded, so not started: nothing may outlive the call.
                let _ = process.kill();
                drop(state);
                self.fail_start(id, cgroup, &format!("cannot record the start: {e}"));
                return Err(e);
            }
        };
        if let Some(entry) = state.vms.get_mut(id) {
            entry.process = Some(process.clone());
            entry.stop_requested = false;
        }
        let vm = self.to_proto(vm_entry(&state, id)?);
        drop(state);
        self.watch_exit(id.to_string(), process.clone());
        if let Err(e) = self.shared.settle(ticket) {
            // Not durably recorded: not started either.
            let _ = process.kill();
            return Err(e);
        }
        Ok(vm)
    }

    fn fail_start(&self, id: &str, cgroup: &Cgroup, reason: &str) {
        let _ = cgroup.kill_all(Duration::from_secs(5));
        let _ = cgroup.remove();
        let ticket = {
            let mut state = self.write_state();
            self.pools.release(id);
            self.transition(&mut state, id, VmState::Failed, reason, clear_process)
        };
        if let Err(e) = ticket.and_then(|ticket| self.shared.settle(ticket)) {
            tracing::error!(vm = %id, "cannot record that the start failed: {e}");
        }
    }

    /// Waits for the vmm to exit on a tokio task and records how it ended;
    /// links to the guest agent meanwhile.
    fn watch_exit(self: &Arc<Self>, id: String, process: Arc<VmProcess>) {
        let agent = Arc::clone(self);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(vm = %id, "no async runtime to watch the vmm on");
            return;
        };
        self.link_guest(&runtime, &id, &process);
        runtime.spawn(async move {
            let exit = process.wait_exit().await.unwrap_or(ExitInfo {
                code: None,
                signal: None,
            });
            let agent2 = Arc::clone(&agent);
            let _ =
                tokio::task::spawn_blocking(move || agent2.on_vmm_exit(&id, &process, exit)).await;
        });
    }

    /// Starts the link to the guest agent of the running VM `id`, unless a
    /// later start replaced `process` already.
    fn link_guest(&self, runtime: &tokio::runtime::Handle, id: &str, process: &Arc<VmProcess>) {
        let socket = stratum_vm::RunDir::new(self.shared.config.vm_run_dir(id)).vsock_sock();
        let identity = self
            .read_state()
            .vms
            .get(id)
            .and_then(snapshots::identity_of);
        let link = GuestLink::spawn(
            runtime,
            id.to_string(),
            socket,
            self.events.clone(),
            identity,
        );
        let mut state = self.write_state();
        match state.vms.get_mut(id) {
            Some(entry)
                if entry
                    .process
                    .as_ref()
                    .is_some_and(|p| Arc::ptr_eq(p, process)) =>
            {
                if let Some(old) = entry.guest.replace(link) {
                    old.stop();
                }
            }
            _ => link.stop(),
        }
    }

    /// Watches every VM that is running (after a restart re-adopted them).
    pub fn watch_running(self: Arc<Self>) {
        let running: Vec<(String, Arc<VmProcess>)> = self
            .read_state()
            .vms
            .iter()
            .filter_map(|(id, vm)| vm.process.clone().map(|p| (id.clone(), p)))
            .collect();
        for (id, process) in running {
            self.watch_exit(id, process);
        }
    }

    fn on_vmm_exit(&self, id: &str, process: &Arc<VmProcess>, exit: ExitInfo) {
        let recorded = self.record_vmm_exit(id, process, exit);
        if let Ok(ticket) = &recorded {
            if *ticket != Ticket::NONE {
                if let Ok((nics, _)) = self.nics_of(id) {
                    self.unplug_nics(id, &nics);
                }
            }
        }
        if let Err(e) = recorded.and_then(|ticket| self.shared.settle(ticket)) {
            tracing::error!(vm = %id, "cannot record that the vmm exited: {e}");
        }
    }

    /// Releases the exited VM's reservation and cgroup and stages its new
    /// state.
    fn record_vmm_exit(
        &self,
        id: &str,
        process: &Arc<VmProcess>,
        exit: ExitInfo,
    ) -> Result<Ticket> {
        let mut state = self.write_state();
        let Some(entry) = state.vms.get(id) else {
            return Ok(Ticket::NONE);
        };
        // A later start may have replaced the process already.
        if !entry
            .process
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, process))
        {
            return Ok(Ticket::NONE);
        }
        let cgroup = self
            .shared
            .cgroups
            .open(Path::new(&entry.runtime().cgroup_path))
            .ok();
        let oom_killed = cgroup
            .as_ref()
            .and_then(|c| c.usage().ok())
            .is_some_and(|u| u.oom_kills > 0);
        let (mut new_state, mut reason) = exit_outcome(entry.stop_requested, oom_killed, &exit);
        let run_dir = stratum_vm::RunDir::new(self.shared.config.vm_run_dir(id));
        match run_dir.guest_end() {
            // vmm says how the guest ended, also when the agent re-adopted
            // it and cannot read its status: a reset nobody asked for
            // shows as one.
            Some(end)
                if !oom_killed && exit.signal.is_none() && exit.code.is_none_or(|c| c == 0) =>
            {
                new_state = VmState::Stopped;
                reason = end;
            }
            _ if new_state == VmState::Failed => with_vmm_error(&mut reason, run_dir.path()),
            _ => {}
        }
        if let Some(cgroup) = cgroup {
            let _ = cgroup.kill_all(Duration::from_secs(5));
            if let Err(e) = cgroup.remove() {
                tracing::warn!(vm = %id, "cannot remove the VM's cgroup: {e}");
            }
        }
        self.pools.release(id);
        if let Some(entry) = state.vms.get_mut(id) {
            entry.process = None;
            if let Some(guest) = entry.guest.take() {
                guest.stop();
            }
        }
        self.transition(&mut state, id, new_state, &reason, clear_process)
    }

    pub fn shutdown(&self, id: &str, timeout: Duration) -> Result<proto::VirtualMachine> {
        let (process, ticket) = {
            let mut state = self.write_state();
            let process = running_process(&state, id)?;
            if let Some(entry) = state.vms.get_mut(id) {
                entry.stop_requested = true;
            }
            let ticket = self.transition(
                &mut state,
                id,
                VmState::Stopping,
                "shutdown requested",
                |_| {},
            )?;
            (process, ticket)
        };
        self.shared.settle(ticket)?;
        // A paused guest can react to nothing.
        let _ = process.resume();
        if !self.shutdown_through_guest_agent(id) {
            if let Err(e) = process.ctrl_alt_del() {
                tracing::warn!(vm = %id, "Ctrl+Alt+Del failed, stopping hard: {e}");
            }
        }
        let id_owned = id.to_string();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if tokio::time::timeout(timeout, process.wait_exit())
                    .await
                    .is_ok()
                {
                    return;
                }
                tracing::info!(vm = %id_owned, "guest did not shut down in time, stopping hard");
                // The API call blocks (a Unix-socket round trip with a timeout).
                let stopping = process.clone();
                let _ = tokio::task::spawn_blocking(move || stopping.hard_stop()).await;
                if tokio::time::timeout(HARD_STOP_GRACE, process.wait_exit())
                    .await
                    .is_err()
                {
                    let _ = process.kill();
                }
            });
        }
        self.get(id)
    }

    /// Asks the guest agent, when one answers, to power the guest off;
    /// false when there is none or it did not acknowledge (Ctrl+Alt+Del
    /// is then the way).
    fn shutdown_through_guest_agent(&self, id: &str) -> bool {
        let link = self
            .read_state()
            .vms
            .get(id)
            .and_then(|entry| entry.guest.clone());
        let Some(link) = link.filter(|link| link.answers()) else {
            return false;
        };
        match link.request_shutdown(false) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(vm = %id, "shutdown through the guest agent failed ({e}); Ctrl+Alt+Del");
                false
            }
        }
    }

    pub fn kill(&self, id: &str) -> Result<proto::VirtualMachine> {
        let mut state = self.write_state();
        let process = running_process(&state, id)?;
        if let Some(entry) = state.vms.get_mut(id) {
            entry.stop_requested = true;
        }
        process
            .kill()
            .map_err(|e| AgentError::Internal(format!("cannot kill VM {id}: {e}")))?;
        let ticket = self.transition(&mut state, id, VmState::Stopping, "killed", |_| {})?;
        let vm = self.to_proto(vm_entry(&state, id)?);
        drop(state);
        self.shared.settle(ticket)?;
        Ok(vm)
    }

    pub fn pause(&self, id: &str, pause: bool) -> Result<proto::VirtualMachine> {
        let mut state = self.write_state();
        let process = running_process(&state, id)?;
        let (from, to) = if pause {
            (VmState::Running, VmState::Paused)
        } else {
            (VmState::Paused, VmState::Running)
        };
        let entry = vm_entry(&state, id)?;
        if entry.snapshot_busy {
            return Err(AgentError::FailedPrecondition(format!(
                "VM {id}: a snapshot of it is being taken"
            )));
        }
        let current = entry.state();
        if current != from {
            return Err(AgentError::FailedPrecondition(format!(
                "VM {id} is {}, not {}",
                state_name(current),
                state_name(from)
            )));
        }
        let done = if pause {
            process.pause()
        } else {
            process.resume()
        };
        done.map_err(|e| AgentError::Internal(format!("VM {id}: {e}")))?;
        let ticket = self.transition(&mut state, id, to, "", |_| {})?;
        let vm = self.to_proto(vm_entry(&state, id)?);
        drop(state);
        self.shared.settle(ticket)?;
        Ok(vm)
    }

    pub fn delete(&self, id: &str) -> Result<()> {
        let mut state = self.write_state();
        let entry = vm_entry(&state, id)?;
        if !matches!(
            entry.state(),
            VmState::Created | VmState::Stopped | VmState::Failed
        ) {
            return Err(AgentError::FailedPrecondition(format!(
                "VM {id} is {}; stop it before deleting it",
                state_name(entry.state())
            )));
        }
        let ticket = self.shared.stage([Change::DeleteVm(id.to_string())])?;
        self.pools.remove_workload(id);
        let nics: Vec<u32> = state
            .vms
            .remove(id)
            .map(|vm| vm.runtime().nics.iter().map(|n| n.index).collect())
            .unwrap_or_default();
        drop(state);
        self.shared.settle(ticket)?;
        self.release_nics(id, nics);
        let dir = self.shared.config.vm_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(vm = %id, "cannot remove {}: {e}", dir.display());
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<proto::VirtualMachine> {
        let state = self.read_state();
        Ok(self.to_proto(vm_entry(&state, id)?))
    }

    pub fn list(&self, filter: &proto::ListVmsRequest) -> Vec<proto::VirtualMachine> {
        let state = self.read_state();
        let mut vms: Vec<proto::VirtualMachine> = state
            .vms
            .values()
            .filter(|vm| matches_filter(vm, filter))
            .map(|vm| self.to_proto(vm))
            .collect();
        vms.sort_by(|a, b| name_of(a).cmp(name_of(b)));
        vms
    }

    /// The console log of VM `id`.
    /// A follower of the VM's console log: from its start with `history`,
    /// else from its end now. It ends once a running VM's vmm has exited
    /// and its output is read; for a VM that has run and stopped, at the
    /// end of the log; for one not started yet it waits for the start.
    pub fn console(&self, id: &str, history: bool) -> Result<ConsoleFollower> {
        let (path, process, vm_state) = {
            let state = self.read_state();
            let vm = vm_entry(&state, id)?;
            let process = vm.process.as_ref().map(|p| p.identity());
            (
                PathBuf::from(&vm.runtime().console_path),
                process,
                vm.state(),
            )
        };
        // Looked at with the lock released: a file system stall must not
        // hold up every other call.
        let offset = if history {
            0
        } else {
            std::fs::metadata(&path).map_or(0, |m| m.len())
        };
        let follower = ConsoleFollower::new(path, offset);
        Ok(match (process, vm_state) {
            (Some(process), _) => follower.until_exit_of(process),
            (None, VmState::Created) => follower,
            (None, _) => follower.until_eof(),
        })
    }

    /// The VM's pool, for watch filters.
    pub fn pool_of(&self, id: &str) -> Option<String> {
        self.read_state().vms.get(id).map(|vm| vm.pool.to_string())
    }

    fn to_proto(&self, vm: &VmEntry) -> proto::VirtualMachine {
        let guest = vm.guest.as_ref().map(|link| link.info());
        let mut view = vm_to_proto(vm, self.pools.reservation_of(&vm.record.id), guest);
        if let Some(status) = view.status.as_mut() {
            status.balloon = self.balloon_of(&vm.record.id, status.pid);
        }
        view
    }

    /// The balloon last read from the vmm with `pid`.
    fn balloon_of(&self, id: &str, pid: u32) -> Option<proto::BalloonStatus> {
        let balloons = self.balloons.lock().unwrap_or_else(|e| e.into_inner());
        match balloons.get(id) {
            Some((read_from, status)) if pid != 0 && *read_from == pid => Some(*status),
            _ => None,
        }
    }

    /// What the memory reclaim read of the running VMs' balloons this
    /// round; VMs it did not read are forgotten.
    pub(super) fn set_balloons(&self, read: BTreeMap<String, (u32, proto::BalloonStatus)>) {
        *self.balloons.lock().unwrap_or_else(|e| e.into_inner()) = read;
    }

    /// Writes again the limits of every running VM in `pools` (after a
    /// pool update rewrote theirs). A failure is logged: the pool update
    /// stands, and the VM keeps the limits it had.
    pub fn apply_limits_in(&self, pools: &[PoolId]) {
        let pools: std::collections::HashSet<&PoolId> = pools.iter().collect();
        let state = self.read_state();
        for vm in state.vms.values().filter(|vm| pools.contains(&vm.pool)) {
            if let Err(e) = self.apply_vm_limits(vm) {
                tracing::warn!(vm = %vm.record.id, "cannot write the VM's limits again: {e}");
            }
        }
    }

    /// The cgroup paths the VMs' records name (for the reconcile at start).
    pub(super) fn cgroup_paths(&self) -> Vec<PathBuf> {
        self.read_state()
            .vms
            .values()
            .map(|vm| PathBuf::from(&vm.runtime().cgroup_path))
            .filter(|p| !p.as_os_str().is_empty())
            .collect()
    }

    /// Every VM's record, for the inventory (taken before the pools' lock).
    pub(super) fn with_each<T>(&self, f: impl FnOnce(&BTreeMap<String, VmEntry>) -> T) -> T {
        f(&self.read_state().vms)
    }

    pub(super) fn apply_vm_limits(&self, vm: &VmEntry) -> Result<()> {
        if vm.process.is_none() || vm.runtime().cgroup_path.is_empty() {
            return Ok(());
        }
        self.shared
            .cgroups
            .open(Path::new(&vm.runtime().cgroup_path))?
            .apply(&vm_limits(vm.spec()))?;
        Ok(())
    }

    /// Sets the VM's state, stages the record and publishes the event
    /// (watchers forward it once it is durable); the in-memory record
    /// changes only if the store took it. The caller settles the ticket
    /// after releasing the lock.
    fn transition(
        &self,
        state: &mut State,
        id: &str,
        to: VmState,
        reason: &str,
        update: impl FnOnce(&mut VmRuntime),
    ) -> Result<Ticket> {
        let entry = state
            .vms
            .get_mut(id)
            .ok_or_else(|| AgentError::NotFound(format!("VM {id} not found")))?;
        let from = entry.state();
        let mut record = entry.record.clone();
        {
            let runtime = record.runtime.get_or_insert_with(VmRuntime::default);
            runtime.state = to as i32;
            runtime.reason = reason.to_string();
            runtime.updated_at = Some(now());
            update(runtime);
        }
        let ticket = self
            .shared
            .stage([Change::PutVm(Box::new(record.clone()))])?;
        entry.record = record;
        let _ = self.events.send(proto::VmEvent {
            kind: proto::VmEventKind::StateChanged as i32,
            vm_id: id.to_string(),
            old_state: from as i32,
            new_state: to as i32,
            reason: reason.to_string(),
            timestamp: Some(now()),
        });
        Ok(ticket)
    }

    /// Takes stock of the stored VMs at startup: running ones whose vmm
    /// is still there (same pid, same start time, API answering) are
    /// re-adopted with their reservation; the others are marked FAILED and
    /// whatever they left in their cgroup is killed and removed.
    fn restore_records(&self, records: Vec<VmRecord>) -> Result<()> {
        let mut ticket = Ticket::NONE;
        let mut state = self.write_state();
        for record in records {
            let id = record.id.clone();
            let spec = record.spec.clone().unwrap_or_default();
            let sizing = VmSizing::try_from(&spec)?;
            let pool = pool_id_or_root(&spec.pool_id);
            self.pools.add_workload(Workload::vm(
                WorkloadId::from(id.as_str()),
                pool.clone(),
                &sizing,
            )?)?;
            let mut entry = VmEntry {
                record,
                pool,
                process: None,
                stop_requested: false,
                guest: None,
                image: None,
                snapshot_busy: false,
            };
            if !entry.runtime().image_digest.is_empty() {
                entry.image = self.lease_again(&id, &entry.runtime().image_digest);
            }
            let was_running = matches!(
                entry.state(),
                VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
            );
            if was_running {
                match adopt(entry.runtime(), &self.shared.config.vm_run_dir(&id)) {
                    Ok(process) => {
                        self.pools.admit(&id)?;
                        tracing::info!(vm = %id, pid = process.pid(), "re-adopted running vmm");
                        entry.process = Some(Arc::new(process));
                    }
                    Err(mut reason) => {
                        with_vmm_error(&mut reason, &self.shared.config.vm_run_dir(&id));
                        self.clean_up_dead(&entry, &reason);
                        state.vms.insert(id.clone(), entry);
                        ticket = ticket.max(self.transition(
                            &mut state,
                            &id,
                            VmState::Failed,
                            &reason,
                            clear_process,
                        )?);
                        continue;
                    }
                }
            }
            state.vms.insert(id, entry);
        }
        drop(state);
        self.shared.settle(ticket)
    }

    fn clean_up_dead(&self, entry: &VmEntry, reason: &str) {
        tracing::warn!(vm = %entry.record.id, "{reason}");
        let runtime = entry.runtime();
        if let Ok(cgroup) = self.shared.cgroups.open(Path::new(&runtime.cgroup_path)) {
            let _ = cgroup.kill_all(Duration::from_secs(5));
            let _ = cgroup.remove();
        }
    }
}

/// Refuses a second VM named `name`.
fn check_name_free(state: &State, name: &str) -> Result<()> {
    if state.vms.values().any(|vm| vm.spec().name == name) {
        return Err(AgentError::AlreadyExists(format!(
            "a VM named {name:?} already exists"
        )));
    }
    Ok(())
}

fn adopt(runtime: &VmRuntime, run_dir: &Path) -> std::result::Result<VmProcess, String> {
    if runtime.pid == 0 {
        return Err("the agent stopped while the vmm was starting".into());
    }
    VmProcess::adopt(runtime.pid, runtime.process_start_time, run_dir)
        .map_err(|e| format!("vmm (pid {}) is gone: {e}", runtime.pid))
}

fn clear_process(runtime: &mut VmRuntime) {
    runtime.pid = 0;
    runtime.process_start_time = 0;
    runtime.control_socket.clear();
    runtime.jail_uid = 0;
}

/// Adds vmm's own last error line to `reason`, when it wrote one: it says
/// what failed in terms the operator can act on (KVM's exit, a device).
fn with_vmm_error(reason: &mut String, run_dir: &Path) {
    if let Some(message) = stratum_vm::RunDir::new(run_dir).vmm_error() {
        reason.push_str(": ");
        reason.push_str(&message);
    }
}

/// STOPPED or FAILED, and why, for a vmm that exited.
fn exit_outcome(stop_requested: bool, oom_killed: bool, exit: &ExitInfo) -> (VmState, String) {
    if oom_killed {
        return (
            VmState::Failed,
            "the vmm was killed by the OOM killer: the VM exceeded its memory limit".into(),
        );
    }
    match (exit.code, exit.signal) {
        (Some(0), _) => (VmState::Stopped, "the guest powered off or reset".into()),
        _ if stop_requested => (VmState::Stopped, "stopped at the agent's request".into()),
        (Some(code), _) => (
            VmState::Failed,
            format!("the vmm exited with status {code}"),
        ),
        (None, Some(signal)) => (
            VmState::Failed,
            format!("the vmm was killed by signal {signal}"),
        ),
        (None, None) => (
            VmState::Failed,
            "the vmm exited (status unknown: adopted process)".into(),
        ),
    }
}

/// What a VM's leaf enforces: its CPU limit (spec, else its vCPUs), its
/// shares scaled by vCPUs, and a memory cap of guest RAM plus the VMM
/// overhead the pool model reserves for it.
pub(super) fn vm_limits(spec: &proto::VmSpec) -> CgroupLimits {
    let vcpus = spec.vcpus.max(1);
    let shares = stratum_pool::convert::shares_from_proto(
        spec.cpu_shares.as_ref(),
        stratum_pool::Resource::Cpu,
    )
    .unwrap_or(Shares::Normal);
    CgroupLimits {
        cpu_shares_weight: u64::from(shares.for_vcpus(vcpus)),
        cpu_limit_millicores: Some(
            spec.cpu_limit_millicores
                .filter(|&l| l > 0)
                .unwrap_or(u64::from(vcpus) * MILLICORES_PER_CPU),
        ),
        memory_limit_bytes: spec
            .memory_mib
            .checked_mul(stratum_pool::MIB)
            .and_then(|m| m.checked_add(VMM_MEMORY_OVERHEAD_BYTES)),
        memory_reservation_bytes: None,
        pids_max: None,
    }
}

/// Checks what can be checked without touching the host's state: sizing,
/// name, files, NICs. INVALID_ARGUMENT for all of it.
fn check_spec(spec: &proto::VmSpec, host_memory: u64) -> Result<VmSizing> {
    let invalid = |m: String| AgentError::InvalidArgument(m);
    validate_name(&spec.name).map_err(|e| invalid(format!("VM name: {e}")))?;
    let sizing = VmSizing::try_from(spec)?;
    let reservation = sizing.reservation()?;
    if let Some(limit) = spec.cpu_limit_millicores.filter(|&l| l > 0) {
        if limit < reservation.cpu_millicores {
            return Err(invalid(format!(
                "CPU limit {limit}m is below the VM's CPU reservation {}m",
                reservation.cpu_millicores
            )));
        }
    }
    if spec.memory_mib.saturating_mul(stratum_pool::MIB) > host_memory {
        return Err(invalid(format!(
            "{} MiB of memory is more than the host has ({} MiB)",
            spec.memory_mib,
            host_memory / stratum_pool::MIB
        )));
    }
    if spec.root_disk_mib > MAX_DISK_MIB {
        return Err(invalid(format!(
            "root disk: {} MiB is more than the largest disk, {MAX_DISK_MIB} MiB (16 TiB)",
            spec.root_disk_mib
        )));
    }
    if spec.root_disk_mib > 0 && spec.image.is_empty() {
        return Err(invalid(
            "root_disk_mib is for a VM made from an image".into(),
        ));
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        if disk.serial.len() > 20 {
            return Err(invalid(format!("disk {i}: serial longer than 20 bytes")));
        }
        if disk.size_mib > MAX_DISK_MIB {
            return Err(invalid(format!(
                "disk {i}: {} MiB is more than the largest disk, {MAX_DISK_MIB} MiB (16 TiB)",
                disk.size_mib
            )));
        }
        check_rate_limit(&format!("disk {i}"), disk.rate_limit.as_ref())?;
    }
    if let Some(seed) = seed_of("", spec, &[]) {
        seed.validate()
            .map_err(|e| invalid(format!("cloud_init: {e}")))?;
        if wants_metadata_service(spec) {
            if spec.nics.is_empty() {
                return Err(invalid(
                    "cloud_init: the metadata service is served through a NIC: give one".into(),
                ));
            }
            seed.metadata_document()
                .map_err(|e| invalid(format!("cloud_init: {e}")))?;
        }
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        if !nic.network.is_empty() {
            check_network_nic(i, nic).map_err(invalid)?;
        } else if nic.tap_name.is_empty() || nic.tap_name.len() > 15 {
            return Err(invalid(format!(
                "nic {i}: give a network, or (for development) a tap_name of 1 to 15 bytes"
            )));
        }
        check_rate_limit(&format!("nic {i} rx"), nic.rx_rate_limit.as_ref())?;
        check_rate_limit(&format!("nic {i} tx"), nic.tx_rate_limit.as_ref())?;
        if !nic.mac.is_empty() && !is_unicast_mac(&nic.mac) {
            return Err(invalid(format!(
                "nic {i}: MAC {} is not a unicast address of the form 02:00:00:00:00:01",
                stratum_pool::quoted(&nic.mac)
            )));
        }
        if nic.network.is_empty() {
            check_nic_addressing(i, nic).map_err(invalid)?;
        }
    }
    Ok(sizing)
}

/// A NIC on a network: no TAP of its own, at most one requested address,
/// the network's gateway and name servers.
fn check_network_nic(i: usize, nic: &proto::NicSpec) -> std::result::Result<(), String> {
    if !nic.tap_name.is_empty() {
        return Err(format!(
            "nic {i}: a NIC on network {} gets its TAP from the agent: give no tap_name",
            nic.network
        ));
    }
    if nic.addresses.len() > 1 {
        return Err(format!(
            "nic {i}: a NIC on a network has one address (give at most one)"
        ));
    }
    if !nic.gateway.is_empty() || !nic.nameservers.is_empty() {
        return Err(format!(
            "nic {i}: a NIC on network {} uses the network's gateway and name servers",
            nic.network
        ));
    }
    Ok(())
}

/// A NIC's static addressing: CIDR addresses, IP gateway and name
/// servers, and the MAC the guest finds the NIC by.
fn check_nic_addressing(i: usize, nic: &proto::NicSpec) -> std::result::Result<(), String> {
    const MAX_ADDRESSES: usize = 16;
    let ip = |what: &str, text: &str| {
        text.parse::<std::net::IpAddr>().map_err(|_| {
            format!(
                "nic {i}: {what} {} is not an IP address",
                stratum_pool::quoted(text)
            )
        })
    };
    if nic.addresses.is_empty() {
        if !nic.gateway.is_empty() || !nic.nameservers.is_empty() {
            return Err(format!("nic {i}: a gateway or name servers need addresses"));
        }
        return Ok(());
    }
    if nic.mac.is_empty() {
        return Err(format!(
            "nic {i}: static addresses need the NIC's mac, which the guest finds it by"
        ));
    }
    if nic.addresses.len() > MAX_ADDRESSES || nic.nameservers.len() > MAX_ADDRESSES {
        return Err(format!(
            "nic {i}: at most {MAX_ADDRESSES} addresses and name servers"
        ));
    }
    for address in &nic.addresses {
        let bad = || {
            format!(
                "nic {i}: address {} is not CIDR (10.0.0.2/24)",
                stratum_pool::quoted(address)
            )
        };
        let (addr, prefix) = address.split_once('/').ok_or_else(bad)?;
        let addr = ip("address", addr).map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if !prefix.parse::<u8>().is_ok_and(|p| p <= max) {
            return Err(bad());
        }
    }
    if !nic.gateway.is_empty() {
        ip("gateway", &nic.gateway)?;
    }
    for nameserver in &nic.nameservers {
        ip("name server", nameserver)?;
    }
    Ok(())
}

/// The largest disk a spec may ask for: ext4's largest file.
const MAX_DISK_MIB: u64 = 16 << 20;

/// The longest refill time a token bucket may have: vmm refuses longer.
const MAX_REFILL_TIME_MS: u64 = 365 * 24 * 3600 * 1000;

fn check_rate_limit(what: &str, limit: Option<&proto::RateLimit>) -> Result<()> {
    let buckets = limit
        .into_iter()
        .flat_map(|l| [("bandwidth", &l.bandwidth), ("ops", &l.ops)]);
    for (name, bucket) in buckets {
        if bucket
            .as_ref()
            .is_some_and(|b| b.refill_time_ms > MAX_REFILL_TIME_MS)
        {
            return Err(AgentError::InvalidArgument(format!(
                "{what}: the {name} bucket's refill_time_ms is over a year ({MAX_REFILL_TIME_MS})"
            )));
        }
    }
    Ok(())
}

/// vmm's limiter for a spec's `limit`: None when it limits nothing (no
/// bucket, or only buckets of size or refill time 0).
fn rate_limiter(limit: Option<&proto::RateLimit>) -> Option<stratum_vm::RateLimiter> {
    let bucket = |b: &Option<proto::TokenBucket>| {
        b.as_ref()
            .filter(|b| b.size > 0 && b.refill_time_ms > 0)
            .map(|b| stratum_vm::TokenBucket {
                size: b.size,
                refill_time: b.refill_time_ms,
                one_time_burst: b.one_time_burst,
            })
    };
    let limit = limit?;
    let limiter = stratum_vm::RateLimiter {
        bandwidth: bucket(&limit.bandwidth),
        ops: bucket(&limit.ops),
    };
    (limiter != stratum_vm::RateLimiter::default()).then_some(limiter)
}

/// Six colon-separated pairs of hex digits, the group bit clear: what a
/// NIC may take as its own address.
fn is_unicast_mac(mac: &str) -> bool {
    let octets: Vec<&str> = mac.split(':').collect();
    let hex = |o: &&str| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit());
    if octets.len() != 6 || !octets.iter().all(hex) {
        return false;
    }
    u8::from_str_radix(octets[0], 16).is_ok_and(|first| first & 1 == 0)
}

/// The VM's own copy of its image's disk, `root.img`: reflink or sparse
/// copy, grown to `root_disk_mib` or the role's root disk size.
fn copy_root_disk(dir: &Path, spec: &proto::VmSpec, image_disk: &Path) -> Result<String> {
    let dest = dir.join("root.img");
    let image_size = std::fs::metadata(image_disk)
        .map_err(|e| AgentError::Internal(format!("the image's disk: {e}")))?
        .len();
    let size = match spec.root_disk_mib {
        0 => roles::template(spec.role())
            .map(|t| t.root_disk_mib * stratum_pool::MIB)
            .filter(|&size| size > image_size),
        mib => Some(mib.saturating_mul(stratum_pool::MIB)),
    };
    stratum_vm::disk::clone_disk_sized(image_disk, &dest, size).map_err(|e| match e {
        DiskError::SmallerThanBase { .. } => AgentError::InvalidArgument(format!("root disk: {e}")),
        e => AgentError::Internal(format!("root disk: {e}")),
    })?;
    Ok(dest.to_string_lossy().into_owned())
}

fn clone_disks(dir: &Path, spec: &proto::VmSpec, base_images: &[PathBuf]) -> Result<Vec<String>> {
    base_images
        .iter()
        .zip(&spec.disks)
        .enumerate()
        .map(|(i, (base_image, disk))| {
            let dest = dir.join(format!("disk{i}.img"));
            let size = (disk.size_mib > 0).then(|| disk.size_mib * stratum_pool::MIB);
            stratum_vm::disk::clone_disk_sized(base_image, &dest, size).map_err(|e| match e {
                DiskError::SmallerThanBase { .. } => {
                    AgentError::InvalidArgument(format!("disk {i}: {e}"))
                }
                e => AgentError::Internal(format!("disk {i}: {e}")),
            })?;
            Ok(dest.to_string_lossy().into_owned())
        })
        .collect()
}

/// The NoCloud seed volume in a VM's directory.
const SEED_FILE: &str = "seed.img";
/// Beside it, the same files as the metadata service's document, when the
/// spec asks for one.
const METADATA_FILE: &str = "metadata.json";

/// Writes `seed` into the VM's directory `dir` (and its metadata document
/// when `spec` asks for the metadata service); returns the seed's path,
/// empty without a seed.
fn write_seed(dir: &Path, spec: &proto::VmSpec, seed: Option<Seed>) -> Result<String> {
    let Some(seed) = seed else {
        return Ok(String::new());
    };
    let failed = |e: &dyn std::fmt::Display| AgentError::Internal(format!("cloud-init seed: {e}"));
    let path = dir.join(SEED_FILE);
    seed.write(&path).map_err(|e| failed(&e))?;
    if wants_metadata_service(spec) {
        let document = seed.metadata_document().map_err(|e| failed(&e))?;
        std::fs::write(dir.join(METADATA_FILE), document.to_string()).map_err(|e| failed(&e))?;
    }
    Ok(path.to_string_lossy().into_owned())
}

fn wants_metadata_service(spec: &proto::VmSpec) -> bool {
    spec.cloud_init.as_ref().is_some_and(|c| c.metadata_service)
}

/// The seed of the VM `id` when its spec has cloud-init data: its id is
/// the instance-id (stable for the VM's life), its name the hostname.
/// The NICs on networks get their addressing from the network's IPAM
/// (`network_nics`), in the same network-config; a VM with such a NIC gets
/// a seed even without cloud_init, so that its guest can use the address.
fn seed_of(id: &str, spec: &proto::VmSpec, network_nics: &[NetworkNic]) -> Option<Seed> {
    if spec.cloud_init.is_none() && network_nics.is_empty() {
        return None;
    }
    let cloud_init = spec.cloud_init.clone().unwrap_or_default();
    let tap_nics = spec
        .nics
        .iter()
        .filter(|nic| nic.network.is_empty() && !nic.addresses.is_empty())
        .map(|nic| StaticInterface {
            mac: nic.mac.clone(),
            addresses: nic.addresses.clone(),
            gateway: (!nic.gateway.is_empty()).then(|| nic.gateway.clone()),
            nameservers: nic.nameservers.clone(),
        });
    let on_networks = network_nics.iter().map(|nic| StaticInterface {
        mac: nic.status.mac.clone(),
        addresses: vec![nic.status.address.clone()],
        gateway: Some(nic.status.gateway.clone()),
        nameservers: nic.nameservers.clone(),
    });
    Some(Seed {
        instance_id: id.to_string(),
        hostname: spec.name.clone(),
        user_data: cloud_init.user_data,
        extra_meta_data: cloud_init.meta_data.into_iter().collect(),
        interfaces: tap_nics.chain(on_networks).collect(),
    })
}

/// A NIC on a network as create chose it, with what its guest is told.
struct NetworkNic {
    status: proto::NicStatus,
    nameservers: Vec<String>,
}

/// The guest CID of every VM's vsock device. Each VM's vsock is its own
/// (its host end is its hybrid-vsock socket), so one CID serves them all.
const GUEST_CID: u32 = 3;

fn process_spec(id: &str, entry: &VmEntry) -> VmProcessSpec {
    let spec = entry.spec();
    let runtime = entry.runtime();
    let image = entry.image.as_ref().map(|i| &i.files);
    let (kernel, initrd, image_cmdline) = match image {
        Some(files) => (
            files.kernel.clone(),
            files.initrd.clone(),
            files.cmdline.clone(),
        ),
        None => (
            PathBuf::from(&spec.kernel),
            (!spec.initrd.is_empty()).then(|| PathBuf::from(&spec.initrd)),
            None,
        ),
    };
    let root_disk = (!runtime.root_disk_path.is_empty()).then(|| stratum_vm::DiskSpec {
        path: PathBuf::from(&runtime.root_disk_path),
        read_only: false,
        serial: Some("root".into()),
        rate_limit: None,
    });
    VmProcessSpec {
        id: id.to_string(),
        kernel,
        initrd,
        cmdline: (!spec.cmdline.is_empty())
            .then(|| spec.cmdline.clone())
            .or(image_cmdline),
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        disks: root_disk
            .into_iter()
            .chain(spec.disks.iter().zip(&runtime.disk_paths).map(|(d, path)| {
                stratum_vm::DiskSpec {
                    path: PathBuf::from(path),
                    read_only: d.read_only,
                    serial: (!d.serial.is_empty()).then(|| d.serial.clone()),
                    rate_limit: rate_limiter(d.rate_limit.as_ref()),
                }
            }))
            .chain(
                (!runtime.seed_path.is_empty()).then(|| stratum_vm::DiskSpec {
                    path: PathBuf::from(&runtime.seed_path),
                    read_only: true,
                    serial: Some("cidata".into()),
                    rate_limit: None,
                }),
            )
            .collect(),
        nics: spec
            .nics
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let on_network = runtime.nics.iter().find(|s| s.index as usize == i);
                let (tap, mac) = match on_network {
                    Some(s) => (s.host_device.clone(), s.mac.clone()),
                    None => (n.tap_name.clone(), n.mac.clone()),
                };
                stratum_vm::NicSpec {
                    tap,
                    mac: (!mac.is_empty()).then_some(mac),
                    rx_rate_limit: rate_limiter(n.rx_rate_limit.as_ref()),
                    tx_rate_limit: rate_limiter(n.tx_rate_limit.as_ref()),
                }
            })
            .collect(),
        vsock_cid: Some(GUEST_CID),
        restore: None,
        metadata: (wants_metadata_service(spec) && !runtime.seed_path.is_empty())
            .then(|| Path::new(&runtime.seed_path).with_file_name(METADATA_FILE)),
        balloon: has_balloon(spec).then_some(BALLOON),
    }
}

/// A VM that reserves less than its memory runs overcommitted and gets a
/// balloon, through which the memory reclaim takes back what its guest
/// does not use when its pool runs short. A VM that reserves all of it
/// has nothing that may be taken.
pub(super) fn has_balloon(spec: &proto::VmSpec) -> bool {
    reclaimable_mib(spec) > 0
}

/// The most of its memory a VM's balloon may hold: what it did not
/// reserve.
pub(super) fn reclaimable_mib(spec: &proto::VmSpec) -> u64 {
    spec.memory_reservation_mib
        .map_or(0, |reserved| spec.memory_mib.saturating_sub(reserved))
}

/// Empty at boot; the guest may take pages back rather than OOM-kill (a
/// balloon never costs a guest a process); statistics every second, which
/// the reclaim reads every few.
const BALLOON: stratum_vm::Balloon = stratum_vm::Balloon {
    amount_mib: 0,
    deflate_on_oom: true,
    stats_polling_interval_s: 1,
};

fn vm_entry<'a>(state: &'a State, id: &str) -> Result<&'a VmEntry> {
    state
        .vms
        .get(id)
        .ok_or_else(|| AgentError::NotFound(format!("VM {id} not found")))
}

fn running_process(state: &State, id: &str) -> Result<Arc<VmProcess>> {
    let entry = vm_entry(state, id)?;
    match (&entry.process, entry.state()) {
        (Some(p), VmState::Running | VmState::Paused) => Ok(p.clone()),
        _ => Err(AgentError::FailedPrecondition(format!(
            "VM {id} is {}, not running",
            state_name(entry.state())
        ))),
    }
}

fn matches_filter(vm: &VmEntry, filter: &proto::ListVmsRequest) -> bool {
    let spec = vm.spec();
    (filter.pool_id.is_empty() || vm.pool.as_str() == filter.pool_id)
        && (filter.role == 0 || spec.role == filter.role)
        && filter
            .label_selector
            .iter()
            .all(|(k, v)| spec.labels.get(k) == Some(v))
}

/// The API's view of a VM, with the reservation it holds while admitted.
fn vm_to_proto(
    vm: &VmEntry,
    reservation: Option<stratum_pool::Resources>,
    guest: Option<proto::GuestInfo>,
) -> proto::VirtualMachine {
    let runtime = vm.runtime();
    let reservation = reservation.map(Into::into);
    proto::VirtualMachine {
        id: vm.record.id.clone(),
        spec: vm.record.spec.clone(),
        status: Some(proto::VmStatus {
            state: runtime.state,
            reason: runtime.reason.clone(),
            pid: runtime.pid,
            uid: if runtime.pid == 0 {
                0
            } else {
                runtime.jail_uid
            },
            created_at: vm.record.created_at,
            started_at: runtime.started_at,
            reservation,
            nics: nic_statuses(&runtime.nics, runtime.pid != 0, guest.as_ref()),
            guest,
            balloon: None,
        }),
    }
}

fn name_of(vm: &proto::VirtualMachine) -> &str {
    vm.spec.as_ref().map_or("", |s| s.name.as_str())
}

pub fn state_name(state: VmState) -> &'static str {
    match state {
        VmState::Unspecified => "unspecified",
        VmState::Created => "created",
        VmState::Starting => "starting",
        VmState::Running => "running",
        VmState::Paused => "paused",
        VmState::Stopping => "stopping",
        VmState::Stopped => "stopped",
        VmState::Failed => "failed",
    }
}

/// The VM's NICs on networks as the status shows them: what was chosen
/// at create, the TAP while the VM runs, and the guest agent's addresses
/// for each MAC.
fn nic_statuses(
    nics: &[proto::NicStatus],
    running: bool,
    guest: Option<&proto::GuestInfo>,
) -> Vec<proto::NicStatus> {
    nics.iter()
        .map(|nic| {
            let guest_addresses = guest
                .into_iter()
                .flat_map(|g| &g.interfaces)
                .filter(|i| i.mac.eq_ignore_ascii_case(&nic.mac))
                .flat_map(|i| i.addresses.iter().cloned())
                .collect();
            proto::NicStatus {
                guest_addresses,
                host_device: if running {
                    nic.host_device.clone()
                } else {
                    String::new()
                },
                ..nic.clone()
            }
        })
        .collect()
}
