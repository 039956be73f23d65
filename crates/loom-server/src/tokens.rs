//! Short-lived tokens (`POST /v1/tokens`) for clients that cannot set an `Authorization`
//! header: they pass one as `?token=`, which [`crate::auth`] accepts in place of the key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use loom_core::new_run_id;

/// How long a token from `POST /v1/tokens` is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);

/// The most live tokens kept; past it the one closest to expiry is dropped.
const MAX_TOKENS: usize = 100_000;

/// The live short-lived tokens.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    expiries: Mutex<HashMap<String, Instant>>,
}

impl Tokens {
    /// A new token valid for [`TOKEN_TTL`]: 244 random bits, unguessable.
    pub(crate) fn issue(&self) -> String {
        let token = format!("{}{}", new_run_id(), new_run_id()).replace('-', "");
        let now = Instant::now();
        let mut expiries = self.expiries.lock().unwrap_or_else(|e| e.into_inner());
        expiries.retain(|_, expiry| *expiry > now);
        if expiries.len() >= MAX_TOKENS {
            let oldest = expiries
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(t, _)| t.clone());
            if let Some(oldest) = oldest {
                expiries.remove(&oldest);
            }
        }
        expiries.insert(token.clone(), now + TOKEN_TTL);
        token
    }

    /// Whether `token` was issued and has not expired.
    pub(crate) fn is_valid(&self, token: &str) -> bool {
        let expiries = self.expiries.lock().unwrap_or_else(|e| e.into_inner());
        expiries.get(token).is_some_and(|e| *e > Instant::now())
    }
}
