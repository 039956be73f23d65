//! [`Slots`]: a worker's run slots, which a run that only waits for another run lends.
//!
//! A worker runs at most `concurrency` runs at once, one slot each. A run that calls another
//! run through Redis (a served workflow whose step is another served workflow) would hold its
//! slot while the run it called waits in the queue for one: with such callers in every slot,
//! the runs they called could only wait, until the pickup timeout ended them `worker_lost`.
//! So a caller lends its slot while it waits ([`Slots::lend`]): the worker has one slot more
//! for as long as the loan lasts. A run lends one slot however many runs it waits for at once
//! (a workflow's parallel group): loans are counted per task, and a worker runs each run in a
//! task of its own. When the last loan of a run ends, the worker takes a slot back — a free one,
//! before it reads more requests, or the next one a run gives back. So runs that call runs
//! never hold every slot while waiting, and the runs doing work stay within `concurrency`
//! (plus, for a moment, a caller that resumed before its slot came back).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, Semaphore};
use tokio::task::Id;

/// A worker's run slots (see the module docs). Cloning gives another handle on the same slots.
#[derive(Debug, Clone)]
pub struct Slots(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Its permits are the free slots.
    semaphore: Arc<Semaphore>,
    /// The loans of each task that lends, counted.
    lent: Mutex<HashMap<Id, usize>>,
    /// Slots lent and given back that the worker has not taken back yet.
    owed: AtomicUsize,
    /// Slots lent now.
    out: AtomicUsize,
    /// Told each time a slot is lent.
    lending: Notify,
}

impl Slots {
    /// `n` slots.
    pub(crate) fn new(n: usize) -> Self {
        Self(Arc::new(Inner {
            semaphore: Arc::new(Semaphore::new(n)),
            lent: Mutex::new(HashMap::new()),
            owed: AtomicUsize::new(0),
            out: AtomicUsize::new(0),
            lending: Notify::new(),
        }))
    }

    /// The semaphore whose permits are the free slots.
    pub(crate) fn semaphore(&self) -> &Arc<Semaphore> {
        &self.0.semaphore
    }

    /// Takes back the slots given back since the last call, as far as free ones allow (the
    /// rest on a later call, as runs end). The worker calls this before it reads requests for
    /// its free slots, and after it has started those it read.
    pub(crate) fn take_back(&self) {
        let owed = &self.0.owed;
        let mut due = owed.load(Ordering::Acquire);
        while due > 0 {
            let taken = self.0.semaphore.forget_permits(due);
            if taken == 0 {
                return;
            }
            due = owed.fetch_sub(taken, Ordering::AcqRel) - taken;
        }
    }

    /// How many slots are lent now: runs that wait for runs they called, from the call until
    /// they have read the called run (which may be queued, or running anywhere).
    pub(crate) fn lent(&self) -> usize {
        self.0.out.load(Ordering::Acquire)
    }

    /// Resolves once a slot is lent (at once if one was lent since the last time): how a
    /// stopping worker, which reads no requests but into lent slots, learns of one.
    pub(crate) async fn lent_one(&self) {
        self.0.lending.notified().await;
    }

    /// Lends the calling task's slot until the returned loan is dropped: what a run that waits
    /// for a run it called does (hold the loan as long as the called run's stream:
    /// `ChunkStream::hold`). A task with a loan already lends no second slot; outside a task,
    /// every call lends one.
    pub fn lend(&self) -> SlotLoan {
        let task = tokio::task::try_id();
        let first = match task {
            Some(id) => {
                let mut lent = self.loans();
                let count = lent.entry(id).or_insert(0);
                *count += 1;
                *count == 1
            }
            None => true,
        };
        if first {
            self.0.out.fetch_add(1, Ordering::AcqRel);
            self.0.semaphore.add_permits(1);
            self.0.lending.notify_one();
        }
        SlotLoan {
            slots: self.clone(),
            task,
        }
    }

    fn loans(&self) -> MutexGuard<'_, HashMap<Id, usize>> {
        // The map holds counts only: one left by a panic elsewhere is still right.
        self.0
            .lent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A slot lent by [`Slots::lend`]; dropping the last of a task's loans gives the slot back.
#[derive(Debug)]
#[must_use = "the slot is given back when the loan is dropped"]
pub struct SlotLoan {
    slots: Slots,
    task: Option<Id>,
}

impl Drop for SlotLoan {
    fn drop(&mut self) {
        let last = match self.task {
            Some(id) => {
                let mut lent = self.slots.loans();
                match lent.get_mut(&id) {
                    Some(count) if *count > 1 => {
                        *count -= 1;
                        false
                    }
                    _ => {
                        lent.remove(&id);
                        true
                    }
                }
            }
            None => true,
        };
        if last {
            self.slots.0.out.fetch_sub(1, Ordering::AcqRel);
            self.slots.0.owed.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free(slots: &Slots) -> usize {
        slots.semaphore().available_permits()
    }

    #[tokio::test]
    async fn a_loan_adds_a_slot_that_the_worker_takes_back_once_it_is_free() {
        let slots = Slots::new(1);
        let held = Arc::clone(slots.semaphore())
            .try_acquire_owned()
            .expect("the slot");
        let loan = slots.lend();
        assert_eq!(slots.lent(), 1);
        let lent = Arc::clone(slots.semaphore())
            .try_acquire_owned()
            .expect("the lent slot");
        drop(loan);
        assert_eq!(slots.lent(), 0);
        // Both slots are in use: nothing to take back yet.
        slots.take_back();
        assert_eq!(free(&slots), 0);
        drop(lent);
        assert_eq!(free(&slots), 1, "the lent slot is free until taken back");
        slots.take_back();
        assert_eq!(free(&slots), 0, "taken back");
        drop(held);
        slots.take_back();
        assert_eq!(free(&slots), 1, "one slot again, and nothing more owed");
    }

    #[tokio::test]
    async fn a_task_lends_one_slot_however_many_runs_it_waits_for() {
        let slots = Slots::new(1);
        let task = {
            let slots = slots.clone();
            tokio::spawn(async move {
                let loans: Vec<SlotLoan> = (0..3).map(|_| slots.lend()).collect();
                let lent = free(&slots);
                drop(loans);
                lent
            })
        };
        assert_eq!(task.await.expect("task"), 2, "one slot lent by the task");
        slots.take_back();
        assert_eq!(free(&slots), 1);
        // Outside a task, each loan is one.
        let (a, b) = (slots.lend(), slots.lend());
        assert_eq!(free(&slots), 3);
        drop((a, b));
        slots.take_back();
        assert_eq!(free(&slots), 1);
    }
}
