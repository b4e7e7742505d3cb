//! The events a node handed to its application and the application has not taken yet. The
//! node's loop counts what it hands over, the application's handle counts what it takes, and
//! the count, not a channel's capacity in batches, bounds what waits for a slow application
//! (see [`crate::node::EVENTS_HELD`]).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::node::EVENTS_HELD;

/// Events handed over and not taken, shared by a node's loop and its handle.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    events: AtomicUsize,
    room: Notify,
}

impl Backlog {
    /// Whether the application is [`EVENTS_HELD`] events behind.
    pub(crate) fn full(&self) -> bool {
        self.events.load(Ordering::Acquire) >= EVENTS_HELD
    }

    /// The events handed over and not taken.
    pub(crate) fn held(&self) -> usize {
        self.events.load(Ordering::Acquire)
    }

    /// Counts `n` events handed over.
    pub(crate) fn handed(&self, n: usize) {
        self.events.fetch_add(n, Ordering::AcqRel);
    }

    /// Counts `n` events taken; wakes the loop if that made room.
    pub(crate) fn taken(&self, n: usize) {
        let before = self.events.fetch_sub(n, Ordering::AcqRel);
        if before >= EVENTS_HELD && before - n < EVENTS_HELD {
            self.room.notify_one();
        }
    }

    /// Resolves once the application made room (at once if it did since the last call).
    pub(crate) async fn room(&self) {
        self.room.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn taking_below_the_bound_wakes_a_waiting_loop_even_before_it_waits() {
        let backlog = Backlog::default();
        backlog.handed(EVENTS_HELD);
        assert!(backlog.full());
        backlog.taken(1);
        assert!(!backlog.full());
        tokio::time::timeout(std::time::Duration::from_secs(1), backlog.room()).await.expect("woken");
        backlog.taken(1);
        let again = tokio::time::timeout(std::time::Duration::from_millis(10), backlog.room()).await;
        assert!(again.is_err(), "room that was already there wakes nobody twice");
    }
}
