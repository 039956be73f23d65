//! The cancel listener: subscribes to `loom:cancel` and stops the held runs whose ids are
//! published there, as their cancel key says (see [`Active::stop_for`](crate::worker::state::Active::stop_for)). After each
//! (re)subscription it also reads the cancel keys of every held run, since pub/sub drops
//! messages while no one listens.

use std::sync::Arc;

use futures::StreamExt;
use loom_core::CancellationToken;

use crate::backoff::Backoff;
use crate::keys::CancelReason;
use crate::worker::state::Shared;

/// Cancels runs whose id is published on the cancel channel.
pub(crate) async fn listen_for_cancels(shared: Arc<Shared>, stop: CancellationToken) {
    let channel = shared.client.keys().cancel_channel();
    let mut backoff = Backoff::default();
    // On a cluster, each failed attempt tries the next node: every node hears every PUBLISH.
    let mut attempt = 0;
    loop {
        let node = shared.client.pubsub_node(attempt);
        attempt += 1;
        let subscribed = async {
            let mut pubsub = node.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            _ = stop.cancelled() => return,
            p = subscribed => p,
        };
        let pubsub = match pubsub {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(worker = %shared.name, error = %e, "cannot subscribe to cancels; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = backoff.wait() => continue,
                }
            }
        };
        backoff.reset();
        // Cancels published while we were not subscribed are still in the cancel keys: read
        // all at once, so thousands of held runs cost one round trip's time, not thousands.
        let held: Vec<String> = shared.active().keys().cloned().collect();
        futures::future::join_all(
            held.iter()
                .map(|run_id| cancel_run(&shared, run_id, Unreadable::LeaveRunning)),
        )
        .await;
        let mut messages = pubsub.into_on_message();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return,
                m = messages.next() => m,
            };
            let Some(message) = message else { break };
            let Ok(run_id) = message.get_payload::<String>() else {
                continue;
            };
            // Each in a task of its own: a slow read of one cancel key must not hold up the
            // cancels behind it (the target is a stop within 100 ms).
            if shared.active().contains_key(&run_id) {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    cancel_run(&shared, &run_id, Unreadable::Stop).await;
                });
            }
        }
        tracing::warn!(worker = %shared.name, "cancel subscription lost; resubscribing");
    }
}

/// What to do when a run's cancel key cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unreadable {
    /// A cancel message named the run: stopping it is the safe side.
    Stop,
    /// Only the sweep after a (re)subscription looked: nobody asked to stop the run, so it
    /// goes on (the heartbeat reads the key again within one refresh). Redis just came back
    /// is exactly when this read fails, and stopping then cancelled healthy runs.
    LeaveRunning,
}

/// Stops run `run_id` if its cancel key says so (see [`Active::stop_for`](crate::worker::state::Active::stop_for)).
async fn cancel_run(shared: &Shared, run_id: &str, unreadable: Unreadable) {
    let mut conn = shared.client.conn();
    let reason: Result<Option<String>, _> = redis::cmd("GET")
        .arg(shared.client.keys().cancel(run_id))
        .query_async(&mut conn)
        .await;
    let active = shared.active();
    let Some(run) = active.get(run_id) else {
        return;
    };
    match reason {
        Ok(Some(reason)) => run.stop_for(CancelReason::parse(&reason)),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(run_id, error = %e, "could not read the cancel key");
            if unreadable == Unreadable::Stop {
                run.token.cancel();
            }
        }
    }
}
