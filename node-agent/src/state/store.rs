//! The agent's state database: one redb file in the agent's data dir with
//! a table of pools, a table of VMs and a small table of metadata (schema
//! version and the id sequence), and a quarantine for records that could
//! not be read.
//!
//! Every mutation is one write transaction committed with redb's default
//! `Durability::Immediate`: when the call returns the data has been
//! fsynced, so an API call that acknowledges after it has survived a
//! `kill -9` of the agent or a crash of the host. Several changes that must
//! happen together go through [`Store::commit`], one transaction for all
//! of them; the agent's journal ([`super::Journal`]) uses it to commit many
//! callers' changes at once. Reads take a
//! read transaction, so [`Store::load`] sees one consistent snapshot.

use std::path::{Path, PathBuf};

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::error::StoreError;
use super::record::{decode, encode, Record};
use crate::records::{ImageOwnersRecord, PodRecord, PoolRecord, SnapshotRecord, VmRecord};

/// The schema this agent writes: the set of tables and what they hold.
///
/// 1. pools, VMs, pods, the id sequence, quarantine.
/// 2. and the pod network's tables (`podnet_*`, `ipam_*`, owned by
///    `stratum-net`) and the image index (`images`, owned by
///    `stratum-image`), which version 1 kept in `podnet.redb` and
///    `images/index.json` beside this file: opening a version 1 file moves
///    them in, in the same transaction as the new version.
///
/// Version 2 files gained `image_owners` and then `snapshots` later:
/// tables only added, which an older file gets, empty, at open (no image
/// had owners then, no VM a snapshot).
pub const SCHEMA_VERSION: u64 = 2;

/// Where a version 1 agent kept the pod network's state (relative to the
/// directory of this file).
pub const PODNET_FILE_V1: &str = "podnet.redb";
/// Where a version 1 agent kept the image index.
pub const IMAGE_INDEX_V1: &str = "images/index.json";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Records that could not be decoded, moved aside at load: key
/// `<table>/<id>`, value the bytes as they were.
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");
const META_SCHEMA: &str = "schema_version";
const META_NEXT_ID: &str = "next_id";

/// One change in a [`Store::commit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert or replace a pool.
    PutPool(PoolRecord),
    /// Remove the pool with this id (no error if absent).
    DeletePool(String),
    /// Insert or replace a VM (boxed: a VM record is several times the
    /// size of the other changes).
    PutVm(Box<VmRecord>),
    /// Remove the VM with this id (no error if absent).
    DeleteVm(String),
    /// Insert or replace a pod.
    PutPod(Box<PodRecord>),
    /// Remove the pod with this id (no error if absent).
    DeletePod(String),
    /// Ids below this one have been handed out (it only ever grows).
    ReserveIdsBelow(u64),
    /// Insert or replace who an image was pulled for.
    PutImageOwners(ImageOwnersRecord),
    /// Forget an image's owners (no error if absent).
    DeleteImageOwners(String),
    /// Insert or replace a VM snapshot (boxed: it holds a VM record).
    PutSnapshot(Box<SnapshotRecord>),
    /// Remove the snapshot with this id (no error if absent).
    DeleteSnapshot(String),
}

impl Change {
    /// Refuses a record the store could not write (no id, a required
    /// field missing), before it is queued with other callers' changes.
    pub fn check(&self) -> Result<(), StoreError> {
        fn complete<R: Record>(record: &R) -> Result<(), StoreError> {
            match record.missing() {
                Some(reason) => Err(StoreError::InvalidRecord {
                    table: R::TABLE_NAME,
                    reason: reason.to_string(),
                }),
                None => Ok(()),
            }
        }
        match self {
            Change::PutPool(r) => complete(r),
            Change::PutVm(r) => complete(r.as_ref()),
            Change::PutPod(r) => complete(r.as_ref()),
            Change::PutImageOwners(r) => complete(r),
            Change::PutSnapshot(r) => complete(r.as_ref()),
            Change::DeletePool(_)
            | Change::DeleteSnapshot(_)
            | Change::DeleteVm(_)
            | Change::DeletePod(_)
            | Change::DeleteImageOwners(_)
            | Change::ReserveIdsBelow(_) => Ok(()),
        }
    }
}

/// Everything stored, read in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Every pool, in id order.
    pub pools: Vec<PoolRecord>,
    /// Every VM, in id order.
    pub vms: Vec<VmRecord>,
    /// Every pod, in id order.
    pub pods: Vec<PodRecord>,
    /// Who each image with owners was pulled for, in id order.
    pub image_owners: Vec<ImageOwnersRecord>,
    /// Every VM snapshot, in id order.
    pub snapshots: Vec<SnapshotRecord>,
    /// The first id not handed out yet (see [`Change::ReserveIdsBelow`]).
    pub next_id: u64,
    /// Records this load found unreadable and moved to quarantine.
    pub quarantined: Vec<Quarantined>,
}

/// A record moved aside because it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Its table.
    pub table: &'static str,
    /// Its key there.
    pub key: String,
    /// Why it could not be read.
    pub reason: String,
}

/// The state database.
#[derive(Debug)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl Store {
    /// Open the database at `path`, creating it (and its tables) if it does
    /// not exist. Refuses a file written with a newer schema.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let store = Store {
            db: Arc::new(db),
            path,
        };
        store.init()?;
        // Moved in by a migration (now, or by a start that stopped before
        // renaming them): nothing reads them again.
        for v1_file in [PODNET_FILE_V1, IMAGE_INDEX_V1] {
            let path = store.path.with_file_name(v1_file);
            if path.exists() {
                store.set_aside(&path);
            }
        }
        Ok(store)
    }

    /// The database, for the crates that keep their own tables in it (the
    /// pod network).
    pub fn database(&self) -> Arc<Database> {
        Arc::clone(&self.db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create missing tables and check or write the schema version,
    /// migrating an older file in the same transaction.
    fn init(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(PoolRecord::TABLE)?;
            tx.open_table(VmRecord::TABLE)?;
            tx.open_table(PodRecord::TABLE)?;
            tx.open_table(ImageOwnersRecord::TABLE)?;
            tx.open_table(SnapshotRecord::TABLE)?;
            tx.open_table(QUARANTINE)?;
            let mut meta = tx.open_table(META)?;
            let found = meta.get(META_SCHEMA)?.map(|v| v.value());
            match found {
                Some(found) if found > SCHEMA_VERSION => Err(StoreError::UnknownSchema {
                    found,
                    supported: SCHEMA_VERSION,
                }),
                Some(SCHEMA_VERSION) => Ok(()),
                Some(found) => {
                    self.migrate(tx, found)?;
                    meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
                    tracing::info!(from = found, to = SCHEMA_VERSION, "state database migrated");
                    Ok(())
                }
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
                    Ok(())
                }
            }
        })
    }

    /// Brings a file of schema `found` up to [`SCHEMA_VERSION`] inside
    /// `tx`: all of it commits with the new version, or none of it.
    fn migrate(&self, tx: &WriteTransaction, found: u64) -> Result<(), StoreError> {
        if found != 1 {
            return Err(StoreError::UnknownSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        // 1 → 2: the pod network's own file and the image index move in.
        let failed = |path: &Path, e: &dyn std::fmt::Display| StoreError::Migration {
            from: found,
            reason: format!("{}: {e}", path.display()),
        };
        let podnet = self.path.with_file_name(PODNET_FILE_V1);
        if podnet.exists() {
            stratum_net::store::import_file(&podnet, tx).map_err(|e| failed(&podnet, &e))?;
        }
        let index = self.path.with_file_name(IMAGE_INDEX_V1);
        stratum_image::import_index_file(&index, tx).map_err(|e| failed(&index, &e))?;
        Ok(())
    }

    /// Renames a file whose contents a migration moved into this one, so
    /// nothing reads it again; it stays for the operator to look at.
    fn set_aside(&self, moved: &Path) {
        let mut aside = moved.as_os_str().to_owned();
        aside.push(".migrated");
        match std::fs::rename(moved, &aside) {
            Ok(()) => tracing::info!(
                "{} was moved into {}; the old file is now {}",
                moved.display(),
                self.path.display(),
                Path::new(&aside).display()
            ),
            Err(e) => tracing::warn!("{} was migrated but stays in place: {e}", moved.display()),
        }
    }

    /// Run `f` in one write transaction and commit it durably, or abort it
    /// (writing nothing) if `f` fails.
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_write()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Apply `changes` atomically, in order: all of them or none. The
    /// agent goes through its [`super::Journal`], which batches many
    /// callers' changes into one call of this.
    pub fn commit(&self, changes: &[Change]) -> Result<(), StoreError> {
        self.write(|tx| {
            for change in changes {
                match change {
                    Change::PutPool(r) => put_in(tx, r)?,
                    Change::DeletePool(id) => delete_in::<PoolRecord>(tx, id).map(drop)?,
                    Change::PutVm(r) => put_in(tx, r.as_ref())?,
                    Change::DeleteVm(id) => delete_in::<VmRecord>(tx, id).map(drop)?,
                    Change::PutPod(r) => put_in(tx, r.as_ref())?,
                    Change::DeletePod(id) => delete_in::<PodRecord>(tx, id).map(drop)?,
                    Change::PutImageOwners(r) => put_in(tx, r)?,
                    Change::DeleteImageOwners(id) => {
                        delete_in::<ImageOwnersRecord>(tx, id).map(drop)?
                    }
                    Change::PutSnapshot(r) => put_in(tx, r.as_ref())?,
                    Change::DeleteSnapshot(id) => delete_in::<SnapshotRecord>(tx, id).map(drop)?,
                    Change::ReserveIdsBelow(end) => {
                        let mut meta = tx.open_table(META)?;
                        let next = meta.get(META_NEXT_ID)?.map_or(1, |v| v.value());
                        meta.insert(META_NEXT_ID, next.max(*end))?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Insert or replace `record`.
    pub fn put<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        self.write(|tx| put_in(tx, record))
    }

    /// The record `id`, if stored.
    pub fn get<R: Record>(&self, id: &str) -> Result<Option<R>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(R::TABLE)?;
        let value = table.get(id)?;
        value.map(|v| decode(id, v.value())).transpose()
    }

    /// Remove the record `id`; whether it was there.
    pub fn delete<R: Record>(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| delete_in::<R>(tx, id))
    }

    /// Every record of a kind, in id order.
    pub fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        let tx = self.db.begin_read()?;
        list_in(&tx.open_table(R::TABLE)?)
    }

    /// Insert or replace a pool.
    pub fn put_pool(&self, record: &PoolRecord) -> Result<(), StoreError> {
        self.put(record)
    }

    /// The pool `id`, if stored.
    pub fn get_pool(&self, id: &str) -> Result<Option<PoolRecord>, StoreError> {
        self.get(id)
    }

    /// Remove the pool `id`; whether it was there.
    pub fn delete_pool(&self, id: &str) -> Result<bool, StoreError> {
        self.delete::<PoolRecord>(id)
    }

    /// Every pool, in id order.
    pub fn list_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        self.list()
    }

    /// Insert or replace a VM.
    pub fn put_vm(&self, record: &VmRecord) -> Result<(), StoreError> {
        self.put(record)
    }

    /// The VM `id`, if stored.
    pub fn get_vm(&self, id: &str) -> Result<Option<VmRecord>, StoreError> {
        self.get(id)
    }

    /// Remove the VM `id`; whether it was there.
    pub fn delete_vm(&self, id: &str) -> Result<bool, StoreError> {
        self.delete::<VmRecord>(id)
    }

    /// Every VM, in id order.
    pub fn list_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        self.list()
    }

    /// Everything, from one consistent snapshot: what the agent rebuilds
    /// its pools, VMs and pods from at startup. A record that cannot be
    /// read (a foreign format version, undecodable bytes, required fields
    /// missing) does not stop the agent: it is moved, bytes unchanged, to
    /// the `quarantine` table (key `<table>/<id>`) in the same transaction,
    /// and reported in [`Snapshot::quarantined`] for the operator.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        self.write(|tx| {
            let next_id = tx
                .open_table(META)?
                .get(META_NEXT_ID)?
                .map_or(1, |v| v.value());
            let mut quarantined = Vec::new();
            let pools = load_in::<PoolRecord>(tx, &mut quarantined)?;
            let vms = load_in::<VmRecord>(tx, &mut quarantined)?;
            let pods = load_in::<PodRecord>(tx, &mut quarantined)?;
            let image_owners = load_in::<ImageOwnersRecord>(tx, &mut quarantined)?;
            let snapshots = load_in::<SnapshotRecord>(tx, &mut quarantined)?;
            Ok(Snapshot {
                pools,
                vms,
                pods,
                image_owners,
                snapshots,
                next_id,
                quarantined,
            })
        })
    }

    /// The records in quarantine: (`<table>/<id>`, size in bytes).
    pub fn quarantine(&self) -> Result<Vec<(String, usize)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(QUARANTINE)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push((key.value().to_string(), value.value().len()));
        }
        Ok(out)
    }

    /// Store raw bytes under `key` in `R`'s table, bypassing encoding: lets
    /// tests plant unreadable records.
    #[cfg(test)]
    pub(crate) fn put_raw<R: Record>(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(R::TABLE)?.insert(key, bytes)?;
            Ok(())
        })
    }
}

fn put_in<R: Record>(tx: &WriteTransaction, record: &R) -> Result<(), StoreError> {
    let bytes = encode(record)?;
    tx.open_table(R::TABLE)?
        .insert(record.id(), bytes.as_slice())?;
    Ok(())
}

fn delete_in<R: Record>(tx: &WriteTransaction, id: &str) -> Result<bool, StoreError> {
    Ok(tx.open_table(R::TABLE)?.remove(id)?.is_some())
}

/// Every readable record of `R`'s table; unreadable ones are moved to
/// quarantine and listed in `quarantined`.
fn load_in<R: Record>(
    tx: &WriteTransaction,
    quarantined: &mut Vec<Quarantined>,
) -> Result<Vec<R>, StoreError> {
    let mut records = Vec::new();
    let mut bad: Vec<(String, Vec<u8>, String)> = Vec::new();
    {
        let table = tx.open_table(R::TABLE)?;
        for entry in table.iter()? {
            let (key, value) = entry?;
            match decode::<R>(key.value(), value.value()) {
                Ok(record) => records.push(record),
                Err(e) => bad.push((
                    key.value().to_string(),
                    value.value().to_vec(),
                    e.to_string(),
                )),
            }
        }
    }
    if !bad.is_empty() {
        let mut table = tx.open_table(R::TABLE)?;
        let mut quarantine = tx.open_table(QUARANTINE)?;
        for (key, bytes, reason) in bad {
            quarantine.insert(
                format!("{}/{key}", R::TABLE_NAME).as_str(),
                bytes.as_slice(),
            )?;
            table.remove(key.as_str())?;
            quarantined.push(Quarantined {
                table: R::TABLE_NAME,
                key,
                reason,
            });
        }
    }
    Ok(records)
}

fn list_in<R: Record>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<R>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        out.push(decode(key.value(), value.value())?);
    }
    Ok(out)
}
