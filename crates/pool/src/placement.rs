//! Placing workloads in pools: add (define), admit (start), release (stop)
//! and remove (delete). Adding is checked against the quotas of the pool
//! and every ancestor; admitting against the reservations, by the rule in
//! [`super::admission`]. Each operation checks before it changes anything.

use super::error::PoolError;
use super::quota::Usage;
use super::resource::Resources;
use super::tree::{PoolId, PoolTree};
use super::workload::{Workload, WorkloadId};

impl PoolTree {
    /// The workload `id`, if it exists.
    pub fn workload(&self, id: &WorkloadId) -> Option<&Workload> {
        self.workloads.get(id)
    }

    /// Every workload, in id order.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    fn get_workload(&self, id: &WorkloadId) -> Result<&Workload, PoolError> {
        self.workloads
            .get(id)
            .ok_or_else(|| PoolError::WorkloadNotFound(id.clone()))
    }

    /// Define `workload` in its pool, not admitted. It must fit every quota
    /// on the way up.
    pub fn add_workload(&mut self, workload: Workload) -> Result<(), PoolError> {
        let id = workload.id().clone();
        if self.workloads.contains_key(&id) {
            return Err(PoolError::WorkloadExists(id));
        }
        let pool = workload.pool().clone();
        let mut workload = workload;
        workload.admitted = false;
        let usage = workload.usage();
        self.check_quotas(&pool, &usage)?;
        self.count_usage(&pool, &usage, true);
        if let Some(p) = self.pools.get_mut(&pool) {
            p.workloads.insert(id.clone());
        }
        self.workloads.insert(id, workload);
        Ok(())
    }

    /// Charge the workload's reservation to its pool: it is about to run.
    pub fn admit(&mut self, id: &WorkloadId) -> Result<(), PoolError> {
        let w = self.get_workload(id)?;
        if w.is_admitted() {
            return Err(PoolError::WorkloadRunning(id.clone()));
        }
        let plan = self.plan_charge(w.pool(), Resources::ZERO, w.reservation())?;
        let pool = w.pool().clone();
        self.apply(plan);
        self.set_admitted(id, &pool, true);
        Ok(())
    }

    /// Give the workload's reservation back: it stopped.
    pub fn release(&mut self, id: &WorkloadId) -> Result<(), PoolError> {
        let w = self.get_workload(id)?;
        if !w.is_admitted() {
            return Err(PoolError::WorkloadNotRunning(id.clone()));
        }
        let plan = self.plan_charge(w.pool(), w.reservation(), Resources::ZERO)?;
        let pool = w.pool().clone();
        self.apply(plan);
        self.set_admitted(id, &pool, false);
        Ok(())
    }

    /// Remove a workload that is not admitted.
    pub fn remove_workload(&mut self, id: &WorkloadId) -> Result<Workload, PoolError> {
        let w = self.get_workload(id)?;
        if w.is_admitted() {
            return Err(PoolError::WorkloadRunning(id.clone()));
        }
        let (pool, usage) = (w.pool().clone(), w.usage());
        self.count_usage(&pool, &usage, false);
        if let Some(p) = self.pools.get_mut(&pool) {
            p.workloads.remove(id);
        }
        self.workloads
            .remove(id)
            .ok_or_else(|| PoolError::WorkloadNotFound(id.clone()))
    }

    /// Record that pod `id` now has `containers` containers (a container
    /// was added to or removed from it). Nothing the pools account for
    /// changes: a pod's reservation and limits are fixed when it is
    /// defined, and no quota counts containers.
    pub fn set_pod_containers(
        &mut self,
        id: &WorkloadId,
        containers: u32,
    ) -> Result<(), PoolError> {
        let w = self
            .workloads
            .get_mut(id)
            .ok_or_else(|| PoolError::WorkloadNotFound(id.clone()))?;
        if w.set_containers(containers) {
            Ok(())
        } else {
            Err(PoolError::InvalidWorkload(format!("{id} is not a pod")))
        }
    }

    fn set_admitted(&mut self, id: &WorkloadId, pool: &PoolId, admitted: bool) {
        if let Some(w) = self.workloads.get_mut(id) {
            w.admitted = admitted;
        }
        let running = Usage {
            running: 1,
            ..Usage::default()
        };
        self.count_usage(pool, &running, admitted);
    }
}
