//! [`Turns`]: several streams polled in turn on one task — how a [`Team`](crate::Team) merges
//! its members and a workflow a parallel group's steps.

use std::task::Poll;

/// Streams (or anything polled) taking turns on one task.
///
/// Each poll tries every stream still in at most once, starting after the one that gave the
/// last item, so one that is always ready cannot starve the others. The item stays where the
/// caller's poll put it (nothing is moved through here on every chunk); the index of the
/// stream it came from is [`last`](Self::last).
#[derive(Debug)]
pub struct Turns<T> {
    /// Each stream while it is in, in the order given; `None` once removed.
    slots: Vec<Option<T>>,
    /// Streams still in.
    live: usize,
    /// The slot tried first next time.
    next: usize,
    /// The slot the last item came from.
    last: usize,
}

impl<T> Turns<T> {
    /// Takes turns over `streams`, in this order.
    pub fn new(streams: impl IntoIterator<Item = T>) -> Self {
        let slots: Vec<Option<T>> = streams.into_iter().map(Some).collect();
        Self {
            live: slots.len(),
            slots,
            next: 0,
            last: 0,
        }
    }

    /// How many streams are still in.
    pub fn live(&self) -> usize {
        self.live
    }

    /// The index (in the order given to [`new`](Self::new)) of the stream the last item came
    /// from.
    pub fn last(&self) -> usize {
        self.last
    }

    /// Takes out the stream the last item came from, e.g. because it ended.
    pub fn remove_last(&mut self) -> Option<T> {
        let removed = self.slots.get_mut(self.last)?.take();
        if removed.is_some() {
            self.live -= 1;
        }
        removed
    }

    /// Drops every stream.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.live = 0;
    }

    /// Tries each stream still in with `poll`, once, from the one after the last that was
    /// ready. `poll` polls a stream, keeps what it got where the caller reads it (so an item
    /// is not moved through here), and says whether the stream was ready. Returns
    /// `Ready(true)` when one was (its index is [`last`](Self::last)), `Pending` when none
    /// was, and with no stream left `Ready(false)` rather than a `Pending` nothing would wake.
    #[inline(always)]
    pub fn poll(&mut self, mut poll: impl FnMut(&mut T) -> bool) -> Poll<bool> {
        if self.live == 0 {
            return Poll::Ready(false);
        }
        let count = self.slots.len();
        let mut i = self.next;
        for _ in 0..count {
            if i >= count {
                i = 0;
            }
            if let Some(stream) = &mut self.slots[i] {
                if poll(stream) {
                    self.last = i;
                    self.next = i + 1;
                    return Poll::Ready(true);
                }
            }
            i += 1;
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_ready_stream_gets_its_turn_and_removed_ones_are_skipped() {
        let mut turns = Turns::new(["a", "b", "c"]);
        let mut got = "";
        let mut order = Vec::new();
        for _ in 0..4 {
            let turn = turns.poll(|s| {
                got = *s;
                true
            });
            order.push((turn, got, turns.last()));
        }
        assert_eq!(
            order,
            [
                (Poll::Ready(true), "a", 0),
                (Poll::Ready(true), "b", 1),
                (Poll::Ready(true), "c", 2),
                (Poll::Ready(true), "a", 0)
            ]
        );
        assert_eq!(turns.remove_last(), Some("a"));
        assert_eq!(turns.remove_last(), None, "already out");
        assert_eq!(turns.live(), 2);
        let turn = turns.poll(|s| {
            got = *s;
            true
        });
        assert_eq!((turn, got, turns.last()), (Poll::Ready(true), "b", 1));
        let mut tried = 0;
        let pending = turns.poll(|_| {
            tried += 1;
            false
        });
        assert_eq!(
            (pending, tried),
            (Poll::Pending, 2),
            "each live stream tried once"
        );
        turns.clear();
        assert_eq!(
            turns.poll(|_| true),
            Poll::Ready(false),
            "nothing left is not Pending"
        );
    }
}
