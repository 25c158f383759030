//! Who each image was pulled for: the namespaces whose users pulled it,
//! and whether it is a host image every caller sees.
//!
//! This module owns the `image_owners` records (in the agent's store, one
//! per image with owners); the images themselves, their blobs and layers
//! are the image store's, shared by everyone: an image two namespaces
//! pulled is stored once. An image without a record is a host image —
//! pulled by an admin, imported, or stored before images had owners — and
//! every caller sees it; one a user pulled is seen by that user's
//! namespace(s) only, until an admin pulls it for the host too. A user's
//! removal takes its namespaces' claims away; the image itself goes with
//! the last claim (an admin's removal takes it at once).
//!
//! What it refuses: nothing by itself — the API decides who may claim or
//! release what; this keeps the records and says what they mean.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use super::errors::Result;
use super::shared::Shared;
use crate::records::ImageOwnersRecord;
use crate::state::Change;

/// Whom a pull is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Every caller (an admin's pull).
    Host,
    /// The callers of one namespace.
    Namespace(String),
}

/// The records, in memory as in the store.
pub struct ImageOwners {
    shared: Arc<Shared>,
    records: RwLock<BTreeMap<String, ImageOwnersRecord>>,
}

impl ImageOwners {
    pub fn restore(shared: Arc<Shared>, records: Vec<ImageOwnersRecord>) -> Self {
        ImageOwners {
            shared,
            records: RwLock::new(records.into_iter().map(|r| (r.id.clone(), r)).collect()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ImageOwnersRecord>> {
        // Each record is replaced whole: a panic cannot leave one torn.
        self.records.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ImageOwnersRecord>> {
        self.records.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether callers of `namespaces` see image `id`.
    pub fn visible_to(&self, id: &str, namespaces: &BTreeSet<String>) -> bool {
        match self.read().get(id) {
            None => true,
            Some(r) => r.host || r.namespaces.iter().any(|ns| namespaces.contains(ns)),
        }
    }

    /// Whether image `id` is a host image or claimed by `namespace`: what
    /// a pod of that namespace may run.
    pub fn usable_in(&self, id: &str, namespace: &str) -> bool {
        self.visible_to(id, &BTreeSet::from([namespace.to_string()]))
    }

    /// Records that image `id` was pulled for `owner`. `was_stored`: the
    /// image was in the store before this pull, so if it has no owners
    /// yet it was a host image and stays one. Durable when it returns.
    pub fn claim(&self, id: &str, owner: Owner, was_stored: bool) -> Result<()> {
        let ticket = {
            let mut records = self.write();
            let current = records.get(id).cloned();
            let next = match (current, owner) {
                // Already a host image, and nobody's in particular.
                (None, Owner::Host) => return Ok(()),
                (Some(mut r), Owner::Host) => {
                    if r.host {
                        return Ok(());
                    }
                    r.host = true;
                    r
                }
                (current, Owner::Namespace(ns)) => {
                    let mut r = current.unwrap_or_else(|| ImageOwnersRecord {
                        id: id.to_string(),
                        namespaces: Vec::new(),
                        host: was_stored,
                    });
                    if r.namespaces.contains(&ns) {
                        return Ok(());
                    }
                    r.namespaces.push(ns);
                    r.namespaces.sort();
                    r
                }
            };
            let ticket = self.shared.stage([Change::PutImageOwners(next.clone())])?;
            records.insert(id.to_string(), next);
            ticket
        };
        self.shared.settle(ticket)
    }

    /// Whether `namespaces` hold a claim on image `id`.
    pub fn claimed_by(&self, id: &str, namespaces: &BTreeSet<String>) -> bool {
        self.read()
            .get(id)
            .is_some_and(|r| r.namespaces.iter().any(|ns| namespaces.contains(ns)))
    }

    /// Whether image `id` would be left without owners once `namespaces`
    /// release it: then the image itself goes.
    pub fn last_claims(&self, id: &str, namespaces: &BTreeSet<String>) -> bool {
        self.read()
            .get(id)
            .is_some_and(|r| !r.host && r.namespaces.iter().all(|ns| namespaces.contains(ns)))
    }

    /// Takes the claims of `namespaces` on image `id` away (forgetting the
    /// record when nothing is left). Durable when it returns.
    pub fn release(&self, id: &str, namespaces: &BTreeSet<String>) -> Result<()> {
        let ticket = {
            let mut records = self.write();
            let Some(mut r) = records.get(id).cloned() else {
                return Ok(());
            };
            r.namespaces.retain(|ns| !namespaces.contains(ns));
            if r.namespaces.is_empty() && !r.host {
                let ticket = self
                    .shared
                    .stage([Change::DeleteImageOwners(id.to_string())])?;
                records.remove(id);
                ticket
            } else {
                let ticket = self.shared.stage([Change::PutImageOwners(r.clone())])?;
                records.insert(id.to_string(), r);
                ticket
            }
        };
        self.shared.settle(ticket)
    }

    /// Forgets image `id`'s owners: the image was removed.
    pub fn forget(&self, id: &str) -> Result<()> {
        let ticket = {
            let mut records = self.write();
            if !records.contains_key(id) {
                return Ok(());
            }
            let ticket = self
                .shared
                .stage([Change::DeleteImageOwners(id.to_string())])?;
            records.remove(id);
            ticket
        };
        self.shared.settle(ticket)
    }
}
