//! Group commit: many callers' changes made durable by one write
//! transaction and one fsync, with no caller's lock held across it.
//!
//! A mutation has two halves. Under its manager's lock it changes memory
//! and *stages* its records here ([`Journal::stage`]), which costs a mutex
//! and a queue push and hands back a [`Ticket`]; staging under that lock
//! is what makes the store's order the memory's order. With the
//! lock released it *settles* the ticket ([`Journal::settle`], or
//! [`Journal::settled`] on the async side), waiting until a committer
//! thread has written everything staged up to it in one redb transaction
//! with `Durability::Immediate`. Only then does it answer: acknowledged
//! still means fsynced. Calls that arrive while a commit is in flight
//! queue up and share the next one, so under load the fsync cost is paid
//! once per batch, not once per call, and readers are never blocked
//! behind a disk.
//!
//! Readers use the same queue for the opposite guarantee: a reader that
//! saw memory which was staged but not yet durable waits for it
//! ([`Journal::last_staged`] then [`Journal::settled`]), so nothing is
//! shown that a crash could take back.
//!
//! A failed commit is sticky. Memory has already run ahead of the store
//! (the failed changes, and any staged on top of them), so the journal
//! refuses everything after it: every waiter and every later stage gets
//! [`StoreError::Stopped`] naming the first failure, and the agent exits
//! ([`Journal::failed`]) for its service manager to restart it, as etcd
//! and PostgreSQL do after a failed write: the restart reloads the last
//! durable state (a full disk makes it wait until space returns).
//! Nothing acknowledged is lost and nothing unacknowledged is shown.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::error::StoreError;
use super::store::{Change, Store};

/// A staged batch of changes, to be settled once the lock is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "a staged change is not durable until its ticket is settled"]
pub struct Ticket(u64);

impl Ticket {
    /// A ticket with nothing to wait for (a call that staged no change).
    pub const NONE: Ticket = Ticket(0);

    /// The later of two tickets: settling it settles both.
    pub fn max(self, other: Ticket) -> Ticket {
        Ticket(self.0.max(other.0))
    }
}

/// The queue and the committer thread over a [`Store`].
#[derive(Debug)]
pub struct Journal {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    store: Arc<Store>,
    queue: Mutex<Queue>,
    /// Signalled when work is staged or the journal closes.
    work: Condvar,
    /// Signalled after every commit (or failure).
    done: Condvar,
    /// The same, for async waiters.
    done_async: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Queue {
    staged: Vec<Change>,
    /// The last ticket handed out.
    last_staged: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// Transactions committed so far.
    commits: u64,
    /// The first commit failure; nothing commits after it.
    failed: Option<String>,
    closed: bool,
}

impl Journal {
    /// Starts the committer thread over `store`.
    pub fn start(store: Arc<Store>) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            store,
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            done_async: tokio::sync::Notify::new(),
        });
        let committer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("store-commit".into())
                .spawn(move || shared.run())
                .map_err(|e| StoreError::Stopped(format!("cannot start the committer: {e}")))?
        };
        Ok(Journal {
            shared,
            committer: Some(committer),
        })
    }

    /// Queues `changes` for the next commit. Call it under the lock that
    /// guards the memory these changes describe; settle the ticket after
    /// releasing that lock. A record the store could not write is refused
    /// here, so it cannot fail the batch it would have joined.
    pub fn stage(&self, changes: impl IntoIterator<Item = Change>) -> Result<Ticket, StoreError> {
        let changes: Vec<Change> = changes.into_iter().collect();
        for change in &changes {
            change.check()?;
        }
        let mut queue = self.shared.lock();
        if let Some(failed) = &queue.failed {
            return Err(StoreError::Stopped(failed.clone()));
        }
        let before = queue.staged.len();
        queue.staged.extend(changes);
        if queue.staged.len() == before {
            // Nothing to write: durable once what came before it is.
            return Ok(Ticket(queue.last_staged));
        }
        queue.last_staged += 1;
        let ticket = Ticket(queue.last_staged);
        drop(queue);
        self.shared.work.notify_one();
        Ok(ticket)
    }

    /// The last ticket handed out: a reader settles it to be sure that
    /// what it saw is durable.
    pub fn last_staged(&self) -> Ticket {
        Ticket(self.shared.lock().last_staged)
    }

    /// The store it commits to.
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// How many transactions the committer has made: fewer than the
    /// tickets settled when calls shared commits.
    pub fn commits(&self) -> u64 {
        self.shared.lock().commits
    }

    /// Blocks until `ticket` is durable. Never call it holding a lock
    /// that other calls need.
    pub fn settle(&self, ticket: Ticket) -> Result<(), StoreError> {
        let mut queue = self.shared.lock();
        loop {
            if let Some(result) = queue.outcome(ticket) {
                return result;
            }
            queue = self
                .shared
                .done
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// [`Journal::settle`] for async callers.
    pub async fn settled(&self, ticket: Ticket) -> Result<(), StoreError> {
        loop {
            let notified = self.shared.done_async.notified();
            tokio::pin!(notified);
            // Registered before looking, so a commit between the look and
            // the await still wakes this waiter.
            notified.as_mut().enable();
            if let Some(result) = self.shared.lock().outcome(ticket) {
                return result;
            }
            notified.await;
        }
    }

    /// Waits until a commit fails, and says why. The agent exits then:
    /// memory has run ahead of the store, and only a restart (which
    /// reloads what is durable) makes them agree again.
    pub async fn failed(&self) -> String {
        loop {
            let notified = self.shared.done_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(failed) = &self.shared.lock().failed {
                return failed.clone();
            }
            notified.await;
        }
    }

    /// Stage and settle in one call: for callers that hold no lock others
    /// need (the id sequence, start-up).
    pub fn commit(&self, changes: impl IntoIterator<Item = Change>) -> Result<(), StoreError> {
        let ticket = self.stage(changes)?;
        self.settle(ticket)
    }
}

impl Drop for Journal {
    /// Commits what is staged, then stops the committer.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl Queue {
    /// `Some` once `ticket` is durable or can no longer become so.
    fn outcome(&self, ticket: Ticket) -> Option<Result<(), StoreError>> {
        if ticket.0 <= self.durable {
            Some(Ok(()))
        } else {
            self.failed
                .as_ref()
                .map(|failed| Err(StoreError::Stopped(failed.clone())))
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue's fields are each written in one step: a panic
        // elsewhere cannot leave them half-changed.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committer: takes everything staged, commits it in one
    /// transaction, wakes the waiters; until closed with nothing staged.
    fn run(&self) {
        loop {
            let (batch, up_to) = {
                let mut queue = self.lock();
                while queue.staged.is_empty() {
                    if queue.closed {
                        return;
                    }
                    queue = self.work.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                (std::mem::take(&mut queue.staged), queue.last_staged)
            };
            let result = self.store.commit(&batch);
            {
                let mut queue = self.lock();
                match result {
                    Ok(()) => {
                        queue.durable = up_to;
                        queue.commits += 1;
                    }
                    Err(e) => {
                        tracing::error!(
                            "the state store failed to commit; the agent refuses changes \
                             and restarts: {e}"
                        );
                        queue.failed = Some(e.to_string());
                        queue.staged.clear();
                    }
                }
            }
            self.done.notify_all();
            self.done_async.notify_waiters();
            if self.lock().failed.is_some() {
                self.wait_for_close();
                return;
            }
        }
    }

    /// After a failure: nothing more is committed; stage refuses.
    fn wait_for_close(&self) {
        let mut queue = self.lock();
        while !queue.closed {
            queue = self.work.wait(queue).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::records::PoolRecord;

    fn pool(id: String) -> Change {
        Change::PutPool(PoolRecord {
            id,
            parent_id: "root".into(),
            spec: Some(Default::default()),
            created_at: None,
        })
    }

    #[test]
    fn concurrent_callers_share_commits_and_all_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let journal = Arc::new(Journal::start(Arc::new(Store::open(&path).unwrap())).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let journal = Arc::clone(&journal);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let ticket = journal.stage([pool(format!("pool-{t}-{i}"))]).unwrap();
                        journal.settle(ticket).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let commits = journal.commits();
        assert!(commits <= 400, "{commits} commits for 400 changes");
        drop(journal);
        let stored = Store::open(&path).unwrap().list_pools().unwrap();
        assert_eq!(stored.len(), 400);
    }

    #[test]
    fn a_ticket_is_settled_only_once_durable_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = Arc::new(Store::open(&path).unwrap());
        let journal = Journal::start(Arc::clone(&store)).unwrap();
        let first = journal.stage([pool("pool-1".into())]).unwrap();
        let second = journal.stage([pool("pool-2".into())]).unwrap();
        assert!(second > first);
        journal.settle(second).unwrap();
        // Settling the later ticket settled the earlier one too.
        assert_eq!(store.list_pools().unwrap().len(), 2);
        journal.settle(first).unwrap();
        assert_eq!(
            journal.stage([]).unwrap(),
            second,
            "nothing staged, nothing to wait for"
        );
    }

    #[test]
    fn an_unwritable_record_is_refused_without_stopping_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("state.redb")).unwrap());
        let journal = Journal::start(Arc::clone(&store)).unwrap();
        let err = journal.stage([pool(String::new())]).unwrap_err();
        assert!(matches!(err, StoreError::InvalidRecord { .. }), "{err}");
        let ticket = journal.stage([pool("pool-1".into())]).unwrap();
        journal.settle(ticket).unwrap();
        assert_eq!(store.list_pools().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn async_waiters_are_woken_by_the_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("state.redb")).unwrap());
        let journal = Arc::new(Journal::start(Arc::clone(&store)).unwrap());
        let waiters: Vec<_> = (0..16)
            .map(|i| {
                let journal = Arc::clone(&journal);
                tokio::spawn(async move {
                    let ticket = journal.stage([pool(format!("pool-{i}"))]).unwrap();
                    journal.settled(ticket).await
                })
            })
            .collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(store.list_pools().unwrap().len(), 16);
    }

    /// A full disk (a 1 MiB tmpfs) fails a real commit: the waiter gets
    /// the error, later changes are refused, and what was durable before
    /// stays readable.
    #[test]
    fn a_failed_commit_stops_the_store() {
        stratum_testkit::root::require_root("mounting a small tmpfs");
        let dir = tempfile::tempdir().unwrap();
        let mount = |args: &[&str]| {
            let status = std::process::Command::new("mount")
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "mount {args:?}");
        };
        let target = dir.path().to_str().unwrap();
        mount(&["-t", "tmpfs", "-o", "size=1m", "tmpfs", target]);
        let outcome = std::panic::catch_unwind(|| {
            let path = dir.path().join("state.redb");
            let store = Arc::new(Store::open(&path).unwrap());
            let journal = Journal::start(Arc::clone(&store)).unwrap();
            journal.commit([pool("pool-1".into())]).unwrap();
            // Fill what is left of the file system.
            let _ = std::fs::write(dir.path().join("filler"), vec![1u8; 2 << 20]);
            let mut big = PoolRecord {
                id: "pool-2".into(),
                parent_id: "root".into(),
                spec: Some(Default::default()),
                created_at: None,
            };
            if let Some(spec) = big.spec.as_mut() {
                spec.name = "x".repeat(512 << 10);
            }
            let ticket = journal.stage([Change::PutPool(big)]).unwrap();
            let err = journal.settle(ticket).unwrap_err();
            assert!(matches!(err, StoreError::Stopped(_)), "{err}");
            let later = journal.stage([pool("pool-3".into())]).unwrap_err();
            assert!(matches!(later, StoreError::Stopped(_)), "{later}");
            drop(journal);
            drop(store);
            let _ = std::fs::remove_file(dir.path().join("filler"));
            let ids: Vec<String> = Store::open(&path)
                .unwrap()
                .list_pools()
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect();
            assert_eq!(ids, ["pool-1"]);
        });
        let _ = std::process::Command::new("umount").arg(target).status();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}
