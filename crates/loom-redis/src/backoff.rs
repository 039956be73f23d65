//! [`Backoff`]: the waits between reconnect attempts of the long-lived loops (reader, worker).

use std::time::Duration;

/// The first wait after a failure.
const FIRST: Duration = Duration::from_millis(50);

/// The longest wait: short enough that a Redis coming back is noticed within seconds.
const MAX: Duration = Duration::from_secs(2);

/// Doubling waits from 50 ms up to 2 s, reset after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST }
    }
}

impl Backoff {
    /// Waits before the next attempt, and lengthens the wait after it.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(MAX);
    }

    /// Back to the shortest wait, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = FIRST;
    }
}
