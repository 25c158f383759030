//! VM snapshots and Instant Clones, part of the VM manager: a snapshot is
//! taken of one of its VMs and restored into new ones, so it lives beside
//! them behind the same lock.
//!
//! A snapshot is a directory, `<data_dir>/snapshots/<id>/`: vmm's state
//! and memory files (Firecracker's Full snapshot) and a copy-on-write copy
//! of each of the VM's disks but its seed, taken while the VM is paused so
//! that memory and disks agree. The state and memory belong to root and
//! the snapshot's own group, mode 0640: a clone's vmm runs with that group
//! as its gid, so it reads them and nothing of another snapshot; the disk
//! copies are root's alone (each clone gets a copy of its own).
//!
//! A clone is a VM made from the snapshot's spec under its own name, with
//! its own addresses and MACs on the parent's networks, its own seed
//! (instance-id and hostname its own), and copies of the snapshot's disks
//! in the parent's drive order. Its first start restores the snapshot
//! instead of booting: in its jail the snapshot's `/vm/disk<N>` are the
//! clone's own copies, its TAPs and vsock socket come in as the load's
//! overrides, and its memory is the snapshot's memory file mapped private,
//! shared by every clone until one writes a page. Its guest agent is then
//! told the clone's identity (see `guest`). Later starts boot its disks.
//!
//! Clones need the VM jail: without it the snapshot would name the
//! parent's own disk files. What it refuses: a VM with a NIC on a TAP
//! named by the spec (a clone would share it), a snapshot deleted while a
//! clone of it runs or has not restored it yet.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::records::SnapshotRecord;
use stratum_guest::proto::{InterfaceIdentity, Reidentify};

/// The most clones one call makes.
const MAX_CLONES: u32 = 64;
/// The files vmm writes in its run directory, then moved into the
/// snapshot's directory.
const STATE_FILE: &str = "snapshot.state";
const MEMORY_FILE: &str = "snapshot.mem";

/// A snapshot as the manager keeps it.
pub(super) struct SnapshotEntry {
    pub record: SnapshotRecord,
    /// The parent's image, leased while the snapshot exists: its clones
    /// are made from it.
    _image: Option<VmImage>,
}

impl SnapshotEntry {
    fn parent(&self) -> &VmRecord {
        self.record.vm.as_ref().unwrap_or(&EMPTY_VM)
    }

    fn spec(&self) -> &proto::VmSpec {
        self.parent().spec.as_ref().unwrap_or(&DEFAULT_SPEC)
    }
}

static EMPTY_VM: VmRecord = VmRecord {
    id: String::new(),
    spec: None,
    runtime: None,
    created_at: None,
};

/// The restore a start of `entry` makes, with the group its vmm runs as:
/// a clone's first start. The snapshot must still be there.
pub(super) fn restore_of(
    state: &State,
    entry: &VmEntry,
) -> Result<Option<(stratum_vm::Restore, u32)>> {
    let runtime = entry.runtime();
    if !runtime.restore_pending {
        return Ok(None);
    }
    let snapshot = state.snapshots.get(&runtime.cloned_from).ok_or_else(|| {
        AgentError::FailedPrecondition(format!(
            "VM {} restores snapshot {}, which is gone",
            entry.record.id, runtime.cloned_from
        ))
    })?;
    let dir = Path::new(&snapshot.record.dir);
    Ok(Some((
        stratum_vm::Restore {
            state: dir.join(STATE_FILE),
            memory: dir.join(MEMORY_FILE),
        },
        snapshot.record.gid,
    )))
}

/// A clone's identity for its guest agent: its name, and each NIC's MAC,
/// address and gateway in place of the parent's.
pub(super) fn identity_of(entry: &VmEntry) -> Option<Reidentify> {
    let runtime = entry.runtime();
    if runtime.cloned_from.is_empty() {
        return None;
    }
    let interfaces = runtime
        .nics
        .iter()
        .zip(&runtime.parent_macs)
        .map(|(nic, old_mac)| InterfaceIdentity {
            old_mac: old_mac.clone(),
            mac: nic.mac.clone(),
            addresses: vec![nic.address.clone()],
            gateway: nic.gateway.clone(),
        })
        .collect();
    Some(Reidentify {
        hostname: entry.spec().name.clone(),
        interfaces,
        entropy: Vec::new(),
    })
}

/// The names of `count` clones called `name`.
fn clone_names(name: &str, count: u32) -> Result<Vec<String>> {
    let count = count.max(1);
    if count > MAX_CLONES {
        return Err(AgentError::InvalidArgument(format!(
            "at most {MAX_CLONES} clones at a time, not {count}"
        )));
    }
    let names: Vec<String> = if count == 1 {
        vec![name.to_string()]
    } else {
        (1..=count).map(|i| format!("{name}-{i}")).collect()
    };
    for name in &names {
        validate_name(name).map_err(|e| AgentError::InvalidArgument(format!("clone name: {e}")))?;
    }
    Ok(names)
}

/// What taking a snapshot needs of its VM, read under the lock.
struct Parent {
    record: VmRecord,
    process: Arc<VmProcess>,
    running: bool,
    disks: Vec<PathBuf>,
    image_digest: String,
}

impl VmManager {
    /// Snapshots VM `vm_id` as `name` (see the module doc).
    pub fn snapshot(&self, vm_id: &str, name: &str) -> Result<proto::VmSnapshot> {
        validate_name(name)
            .map_err(|e| AgentError::InvalidArgument(format!("snapshot name: {e}")))?;
        self.require_jail("snapshots")?;
        let _one_at_a_time = self.snapshotting.lock().unwrap_or_else(|p| p.into_inner());
        let parent = self.begin_snapshot(vm_id, name)?;
        let taken = self.take_snapshot(&parent, name);
        if parent.running {
            if let Err(e) = parent.process.resume() {
                tracing::warn!(vm = %vm_id, "cannot resume the VM after its snapshot: {e}");
            }
        }
        if let Some(entry) = self.write_state().vms.get_mut(vm_id) {
            entry.snapshot_busy = false;
        }
        let (record, image) = taken?;
        let ticket = {
            let mut state = self.write_state();
            if state
                .snapshots
                .values()
                .any(|s| s.record.name == record.name)
            {
                drop(state);
                let _ = std::fs::remove_dir_all(&record.dir);
                return Err(name_taken(name));
            }
            let ticket = self
                .shared
                .stage([Change::PutSnapshot(Box::new(record.clone()))]);
            let ticket = match ticket {
                Ok(ticket) => ticket,
                Err(e) => {
                    drop(state);
                    let _ = std::fs::remove_dir_all(&record.dir);
                    return Err(e);
                }
            };
            state.snapshots.insert(
                record.id.clone(),
                SnapshotEntry {
                    record: record.clone(),
                    _image: image,
                },
            );
            ticket
        };
        self.shared.settle(ticket)?;
        tracing::info!(vm = %vm_id, snapshot = %record.id, name, "snapshot taken");
        self.get_snapshot(&record.id)
    }

    fn require_jail(&self, what: &str) -> Result<()> {
        if self.shared.config.vm_jail.is_none() {
            return Err(AgentError::FailedPrecondition(format!(
                "{what} need the VM jail (the agent runs with --no-vm-jail): a clone finds \
                 its own disks at its jail's paths"
            )));
        }
        Ok(())
    }

    /// Checks the VM and the name and marks the VM busy.
    fn begin_snapshot(&self, vm_id: &str, name: &str) -> Result<Parent> {
        let mut state = self.write_state();
        if state.snapshots.values().any(|s| s.record.name == name) {
            return Err(name_taken(name));
        }
        let entry = state
            .vms
            .get_mut(vm_id)
            .ok_or_else(|| AgentError::NotFound(format!("VM {vm_id} not found")))?;
        let process = match (&entry.process, entry.state()) {
            (Some(p), VmState::Running | VmState::Paused) => p.clone(),
            (_, s) => {
                return Err(AgentError::FailedPrecondition(format!(
                    "VM {vm_id} is {}; only a running or paused VM can be snapshotted",
                    state_name(s)
                )))
            }
        };
        if let Some(i) = entry.spec().nics.iter().position(|n| n.network.is_empty()) {
            return Err(AgentError::FailedPrecondition(format!(
                "VM {vm_id}'s nic {i} is on a TAP its spec names: a clone would share it"
            )));
        }
        if entry.snapshot_busy {
            return Err(AgentError::FailedPrecondition(format!(
                "a snapshot of VM {vm_id} is being taken"
            )));
        }
        let runtime = entry.runtime();
        let disks = (!runtime.root_disk_path.is_empty())
            .then(|| PathBuf::from(&runtime.root_disk_path))
            .into_iter()
            .chain(runtime.disk_paths.iter().map(PathBuf::from))
            .collect();
        let parent = Parent {
            record: entry.record.clone(),
            process,
            running: entry.state() == VmState::Running,
            disks,
            image_digest: runtime.image_digest.clone(),
        };
        entry.snapshot_busy = true;
        Ok(parent)
    }

    /// Writes the snapshot's files (the VM paused meanwhile; the caller
    /// resumes it) and returns its record; on failure removes them.
    fn take_snapshot(
        &self,
        parent: &Parent,
        name: &str,
    ) -> Result<(SnapshotRecord, Option<VmImage>)> {
        let spec = parent.record.spec.as_ref().unwrap_or(&DEFAULT_SPEC);
        let disk_bytes: u64 = parent.disks.iter().map(|d| allocated(d)).sum();
        let memory = spec.memory_mib.saturating_mul(stratum_pool::MIB);
        self.shared
            .config
            .disk_floor()
            .check_room("the snapshot", memory.saturating_add(disk_bytes))?;
        let image = match parent.image_digest.as_str() {
            "" => None,
            digest => Some(self.lease_again(&parent.record.id, digest).ok_or_else(|| {
                AgentError::FailedPrecondition(format!(
                    "VM {}'s image is no longer in the store",
                    parent.record.id
                ))
            })?),
        };
        let namespace = self.pools.namespace_of(&pool_id_or_root(&spec.pool_id))?;
        let id = format!("snap-{}", self.shared.next_id()?);
        let gid = self.free_snapshot_gid()?;
        let dir = self.shared.config.data_dir.join("snapshots").join(&id);
        let run_dir = stratum_vm::RunDir::new(self.shared.config.vm_run_dir(&parent.record.id));
        let written = (|| {
            make_private_dir(&dir, gid)?;
            if parent.running {
                parent
                    .process
                    .pause()
                    .map_err(|e| AgentError::Internal(format!("pausing the VM: {e}")))?;
            }
            let jail_run = Path::new(stratum_jail::spec::JAIL_RUN_DIR);
            let body = stratum_vm::SnapshotCreate {
                snapshot_path: jail_run.join(STATE_FILE),
                mem_file_path: jail_run.join(MEMORY_FILE),
            };
            parent
                .process
                .api()
                .create_snapshot(&body)
                .map_err(|e| AgentError::Internal(format!("vmm's snapshot: {e}")))?;
            let mut memory_bytes = 0;
            for file in [STATE_FILE, MEMORY_FILE] {
                let size = take_file(&run_dir.path().join(file), &dir.join(file), gid)?;
                if file == MEMORY_FILE {
                    memory_bytes = size;
                }
            }
            let mut disk_paths = Vec::new();
            for (i, disk) in parent.disks.iter().enumerate() {
                let copy = dir.join(format!("disk{i}.img"));
                stratum_vm::clone_disk(disk, &copy)
                    .map_err(|e| AgentError::Internal(format!("copying disk {i}: {e}")))?;
                disk_paths.push(copy.to_string_lossy().into_owned());
            }
            Ok(SnapshotRecord {
                id: id.clone(),
                name: name.to_string(),
                vm_id: parent.record.id.clone(),
                vm: Some(parent.record.clone()),
                created_at: Some(now()),
                gid,
                disk_bytes: disk_paths.iter().map(|d| allocated(Path::new(d))).sum(),
                disk_paths,
                memory_bytes,
                dir: dir.to_string_lossy().into_owned(),
                namespace: namespace.clone(),
            })
        })();
        for file in [STATE_FILE, MEMORY_FILE] {
            let _ = std::fs::remove_file(run_dir.path().join(file));
        }
        match written {
            Ok(record) => Ok((record, image)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The lowest group of the snapshot range no snapshot holds: right
    /// above the VM jail's ids, so no VM's own gid is one.
    fn free_snapshot_gid(&self) -> Result<u32> {
        let Some(jail) = &self.shared.config.vm_jail else {
            return Err(AgentError::FailedPrecondition("no VM jail".into()));
        };
        let used: std::collections::BTreeSet<u32> = self
            .read_state()
            .snapshots
            .values()
            .map(|s| s.record.gid)
            .collect();
        let first = jail.ids.end().saturating_add(1);
        (first..=first.saturating_add(65_535))
            .find(|gid| !used.contains(gid))
            .ok_or_else(|| AgentError::ResourceExhausted("every snapshot group is in use".into()))
    }

    pub fn get_snapshot(&self, id: &str) -> Result<proto::VmSnapshot> {
        let state = self.read_state();
        let snapshot = state
            .snapshots
            .get(id)
            .ok_or_else(|| AgentError::NotFound(format!("snapshot {id} not found")))?;
        Ok(snapshot_to_proto(&state, snapshot))
    }

    /// The snapshots of VM `vm_id` (every one when empty), by name.
    pub fn list_snapshots(&self, vm_id: &str) -> Vec<proto::VmSnapshot> {
        let state = self.read_state();
        let mut list: Vec<proto::VmSnapshot> = state
            .snapshots
            .values()
            .filter(|s| vm_id.is_empty() || s.record.vm_id == vm_id)
            .map(|s| snapshot_to_proto(&state, s))
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The pool of snapshot `id` (its VM's), where its clones go.
    pub fn snapshot_pool(&self, id: &str) -> Option<String> {
        let state = self.read_state();
        state.snapshots.get(id).map(|s| s.spec().pool_id.clone())
    }

    /// The namespace snapshot `id` belongs to, for access checks.
    pub fn snapshot_namespace(&self, id: &str) -> Option<String> {
        let state = self.read_state();
        state.snapshots.get(id).map(|s| s.record.namespace.clone())
    }

    pub fn delete_snapshot(&self, id: &str) -> Result<()> {
        let (ticket, dir) = {
            let mut state = self.write_state();
            let snapshot = state
                .snapshots
                .get(id)
                .ok_or_else(|| AgentError::NotFound(format!("snapshot {id} not found")))?;
            let holding = state.vms.values().find(|vm| {
                vm.runtime().cloned_from == id
                    && (vm.process.is_some() || vm.runtime().restore_pending)
            });
            if let Some(vm) = holding {
                return Err(AgentError::FailedPrecondition(format!(
                    "snapshot {id}: its clone {} runs or has yet to restore it",
                    vm.record.id
                )));
            }
            let dir = PathBuf::from(&snapshot.record.dir);
            let ticket = self
                .shared
                .stage([Change::DeleteSnapshot(id.to_string())])?;
            state.snapshots.remove(id);
            (ticket, dir)
        };
        self.shared.settle(ticket)?;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(snapshot = %id, "cannot remove {}: {e}", dir.display());
        }
        Ok(())
    }

    /// Makes and starts `count` clones of snapshot `snapshot_id` (see the
    /// module doc). A clone that cannot be made or started leaves nothing;
    /// the ones before it stay, and the error names them.
    pub fn clone_vm(
        self: &Arc<Self>,
        snapshot_id: &str,
        name: &str,
        count: u32,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<proto::VirtualMachine>> {
        self.require_jail("clones")?;
        let names = clone_names(name, count)?;
        {
            let state = self.read_state();
            if !state.snapshots.contains_key(snapshot_id) {
                return Err(AgentError::NotFound(format!(
                    "snapshot {snapshot_id} not found"
                )));
            }
            for name in &names {
                check_name_free(&state, name)?;
            }
        }
        let mut made = Vec::new();
        for name in &names {
            let cloned = self.create_clone(snapshot_id, name, labels).and_then(|id| {
                match self.start(&id) {
                    Ok(vm) => Ok(vm),
                    Err(e) => {
                        if let Err(d) = self.delete(&id) {
                            tracing::warn!(vm = %id, "cannot delete the clone that failed: {d}");
                        }
                        Err(e)
                    }
                }
            });
            match cloned {
                Ok(vm) => made.push(vm),
                Err(e) if made.is_empty() => return Err(e),
                Err(e) => return Err(after_clones(e, name, &made)),
            }
        }
        Ok(made)
    }

    /// Defines clone `name` of snapshot `snapshot_id` (state CREATED, its
    /// restore pending) and returns its id.
    fn create_clone(
        &self,
        snapshot_id: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String> {
        let (parent, snapshot) = {
            let state = self.read_state();
            let snapshot = state
                .snapshots
                .get(snapshot_id)
                .ok_or_else(|| AgentError::NotFound(format!("snapshot {snapshot_id} not found")))?;
            (snapshot.parent().clone(), snapshot.record.clone())
        };
        let mut spec = parent.spec.clone().unwrap_or_default();
        spec.name = name.to_string();
        spec.labels.extend(labels.clone());
        for nic in &mut spec.nics {
            // Chosen anew on the same network.
            nic.mac.clear();
            nic.addresses.clear();
        }
        let sizing = check_spec(&spec, self.pools.host_memory())?;
        let vm = self.define(&spec, &sizing, "VM clone", |id, image, nics| {
            self.make_clone_files(id, &spec, &parent, &snapshot, image, nics)
        })?;
        Ok(vm.id)
    }

    /// The clone's directory: copies of the snapshot's disks named as the
    /// parent's were, and a seed of its own where the parent had one.
    fn make_clone_files(
        &self,
        id: &str,
        spec: &proto::VmSpec,
        parent: &VmRecord,
        snapshot: &SnapshotRecord,
        image: Option<&VmImage>,
        nics: &[NetworkNic],
    ) -> Result<VmRecord> {
        let dir = self.shared.config.vm_dir(id);
        let parent_runtime = parent.runtime.clone().unwrap_or_default();
        let made = (|| {
            std::fs::create_dir_all(&dir)
                .map_err(|e| AgentError::Internal(format!("{}: {e}", dir.display())))?;
            let mut copies = snapshot.disk_paths.iter().map(PathBuf::from);
            let mut copy = |dest: PathBuf| -> Result<String> {
                let src = copies.next().ok_or_else(|| {
                    AgentError::Internal(format!("snapshot {} lacks a disk", snapshot.id))
                })?;
                stratum_vm::clone_disk(&src, &dest)
                    .map_err(|e| AgentError::Internal(format!("disk copy: {e}")))?;
                Ok(dest.to_string_lossy().into_owned())
            };
            let root_disk_path = match parent_runtime.root_disk_path.is_empty() {
                true => String::new(),
                false => copy(dir.join("root.img"))?,
            };
            let disk_paths = (0..parent_runtime.disk_paths.len())
                .map(|i| copy(dir.join(format!("disk{i}.img"))))
                .collect::<Result<Vec<_>>>()?;
            let seed = seed_of(id, spec, nics);
            let parent_had_seed = !parent_runtime.seed_path.is_empty();
            if seed.is_some() != parent_had_seed {
                return Err(AgentError::Internal(
                    "the clone's seed does not match the snapshot's drives".into(),
                ));
            }
            let seed_path = write_seed(&dir, spec, seed)?;
            let parent_macs = nics
                .iter()
                .map(|nic| {
                    parent_runtime
                        .nics
                        .iter()
                        .find(|p| p.index == nic.status.index)
                        .map(|p| p.mac.clone())
                        .unwrap_or_default()
                })
                .collect();
            Ok(self.created_record(
                id,
                spec,
                image,
                nics,
                VmRuntime {
                    disk_paths,
                    seed_path,
                    root_disk_path,
                    cloned_from: snapshot.id.clone(),
                    restore_pending: true,
                    parent_macs,
                    ..VmRuntime::default()
                },
            ))
        })();
        if made.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        made
    }

    /// Takes the stored snapshots at startup, leasing their images again.
    pub(super) fn restore_snapshots(&self, records: Vec<SnapshotRecord>) {
        let mut state = self.write_state();
        for record in records {
            let digest = record
                .vm
                .as_ref()
                .and_then(|vm| vm.runtime.as_ref())
                .map(|rt| rt.image_digest.clone())
                .unwrap_or_default();
            let image = (!digest.is_empty())
                .then(|| self.lease_again(&record.id, &digest))
                .flatten();
            state.snapshots.insert(
                record.id.clone(),
                SnapshotEntry {
                    record,
                    _image: image,
                },
            );
        }
    }
}

/// The error of clone `name` after `made` were made: its code, and which
/// clones stay.
fn after_clones(e: AgentError, name: &str, made: &[proto::VirtualMachine]) -> AgentError {
    let ids: Vec<&str> = made.iter().map(|vm| vm.id.as_str()).collect();
    let message = format!("clone {name}: {e} (made before it: {})", ids.join(", "));
    match e.code() {
        tonic::Code::InvalidArgument => AgentError::InvalidArgument(message),
        tonic::Code::NotFound => AgentError::NotFound(message),
        tonic::Code::AlreadyExists => AgentError::AlreadyExists(message),
        tonic::Code::FailedPrecondition => AgentError::FailedPrecondition(message),
        tonic::Code::PermissionDenied => AgentError::PermissionDenied(message),
        tonic::Code::ResourceExhausted => AgentError::ResourceExhausted(message),
        tonic::Code::Unavailable => AgentError::Unavailable(message),
        _ => AgentError::Internal(message),
    }
}

fn name_taken(name: &str) -> AgentError {
    AgentError::AlreadyExists(format!("a snapshot named {name:?} already exists"))
}

fn snapshot_to_proto(state: &State, snapshot: &SnapshotEntry) -> proto::VmSnapshot {
    let record = &snapshot.record;
    proto::VmSnapshot {
        id: record.id.clone(),
        name: record.name.clone(),
        vm_id: record.vm_id.clone(),
        spec: Some(snapshot.spec().clone()),
        created_at: record.created_at,
        memory_bytes: record.memory_bytes,
        disk_bytes: record.disk_bytes,
        clones: state
            .vms
            .values()
            .filter(|vm| vm.runtime().cloned_from == record.id)
            .map(|vm| vm.record.id.clone())
            .collect(),
    }
}

/// Disk space a file takes (a sparse file: what it holds).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.blocks().saturating_mul(512))
}

/// The snapshot's directory: root's, readable by its group.
fn make_private_dir(dir: &Path, gid: u32) -> Result<()> {
    let err = |e: std::io::Error| AgentError::Internal(format!("{}: {e}", dir.display()));
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::create_dir(dir).map_err(err)?;
    std::os::unix::fs::chown(dir, Some(0), Some(gid)).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(err)
}

/// Moves a file the jailed vmm wrote into the snapshot's directory, made
/// root's and its group's (0640); returns the space it takes. What the
/// vmm left must be a plain file of its own: a link would lead the moves
/// and chowns elsewhere.
fn take_file(from: &Path, to: &Path, gid: u32) -> Result<u64> {
    let err = |e: std::io::Error| AgentError::Internal(format!("{}: {e}", from.display()));
    let meta = std::fs::symlink_metadata(from).map_err(err)?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(AgentError::Internal(format!(
            "{} is not a plain file of its own",
            from.display()
        )));
    }
    std::fs::rename(from, to).map_err(err)?;
    std::os::unix::fs::lchown(to, Some(0), Some(gid)).map_err(err)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o640)).map_err(err)?;
    Ok(meta.blocks().saturating_mul(512))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_are_numbered_when_there_are_several() {
        assert_eq!(clone_names("web", 0).unwrap(), ["web"]);
        assert_eq!(clone_names("web", 1).unwrap(), ["web"]);
        assert_eq!(clone_names("web", 3).unwrap(), ["web-1", "web-2", "web-3"]);
        assert!(clone_names("web", MAX_CLONES + 1).is_err());
        assert!(clone_names("Web", 1).is_err());
        let long = "a".repeat(62);
        assert!(clone_names(&long, 1).is_ok());
        assert!(clone_names(&long, 2).is_err(), "{long}-1 is too long");
    }

    #[test]
    fn a_file_the_vmm_linked_elsewhere_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(take_file(&link, &dir.path().join("to"), 0).is_err());
        let hard = dir.path().join("hard");
        std::fs::hard_link(&target, &hard).unwrap();
        assert!(take_file(&hard, &dir.path().join("to"), 0).is_err());
        assert!(!dir.path().join("to").exists());
    }
}
