//! [`Slots`]: a worker's run slots, which a run that only waits for another run lends.
//!
//! A worker runs at most `concurrency` runs at once, one slot each. A run that calls another
//! run through Redis (a served workflow whose step is another served workflow) would hold its
//! slot while the run it called waits in the queue for one: with such callers in every slot,
//! the runs they called could only wait, until the pickup timeout ended them `worker_lost`.
//! So a caller lends its slot while it waits ([`Slots::lend`]): the worker has one slot more
//! for as long as the loan lasts, and takes it back when the loan ends — at once when a slot
//! is free, else when the next run ends. Runs that call runs thus never hold every slot while
//! waiting, and the runs doing work stay within `concurrency` (plus, for a moment, a caller
//! that resumed before its slot came back).

use std::sync::Arc;

use tokio::sync::Semaphore;

/// A worker's run slots (see the module docs). Cloning gives another handle on the same slots.
#[derive(Debug, Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    /// `n` slots.
    pub(crate) fn new(n: usize) -> Self {
        Self(Arc::new(Semaphore::new(n)))
    }

    /// The semaphore whose permits are the slots.
    pub(crate) fn semaphore(&self) -> &Arc<Semaphore> {
        &self.0
    }

    /// One slot more until the returned loan is dropped: what a run that waits for a run it
    /// called lends (hold it as long as the called run's stream: `ChunkStream::hold`).
    pub fn lend(&self) -> SlotLoan {
        self.0.add_permits(1);
        SlotLoan(Arc::clone(&self.0))
    }
}

/// A slot lent by [`Slots::lend`]; dropping it takes the slot back.
#[derive(Debug)]
#[must_use = "the slot is taken back when the loan is dropped"]
pub struct SlotLoan(Arc<Semaphore>);

impl Drop for SlotLoan {
    fn drop(&mut self) {
        if self.0.forget_permits(1) == 1 {
            return;
        }
        // Every slot is in use: the next one to come free is not given back to the worker.
        // Outside a runtime (the worker is gone) there is nothing left to take back from.
        let slots = Arc::clone(&self.0);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(slot) = slots.acquire_owned().await {
                    slot.forget();
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_loan_adds_a_slot_and_its_end_takes_one_back_at_once_or_when_one_frees() {
        let slots = Slots::new(1);
        let held = Arc::clone(slots.semaphore())
            .try_acquire_owned()
            .expect("the slot");
        let loan = slots.lend();
        let lent = Arc::clone(slots.semaphore())
            .try_acquire_owned()
            .expect("the lent slot");
        drop(loan);
        // Both slots are in use: the next one to free up goes back.
        assert_eq!(slots.semaphore().available_permits(), 0);
        drop(lent);
        tokio::task::yield_now().await;
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while slots.semaphore().available_permits() != 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("settled");
        drop(held);
        assert_eq!(slots.semaphore().available_permits(), 1, "one slot again");

        // A loan that ends while its slot is free takes it back at once.
        drop(slots.lend());
        assert_eq!(slots.semaphore().available_permits(), 1);
    }
}
