//! Short-lived tokens (`POST /v1/tokens`) for clients that cannot set an `Authorization`
//! header: they pass one as `?token=`, which [`crate::auth`] accepts in place of the key.
//!
//! A token carries its own expiry and is signed with a key derived from the API key
//! (HMAC-SHA256): nothing is stored, so every server that has the same API key — the others
//! in front of one Redis, this one after a restart — takes it, as a browser's `EventSource`
//! reconnecting through a load balancer needs; a token outlives neither its 5 minutes (by the
//! clock of the server that checks it) nor a change of the key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loom_core::new_run_id;
use ring::hmac;

/// How long a token from `POST /v1/tokens` is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);

/// Hex digits of a token's expiry (Unix seconds) and of its random part.
const EXPIRY_LEN: usize = 16;
const NONCE_LEN: usize = 32;

/// Issues and checks tokens for one API key.
#[derive(Debug)]
pub(crate) struct Tokens {
    key: hmac::Key,
}

impl Tokens {
    /// Tokens signed for `api_key`; without one (no key is asked for, and a token is never
    /// needed), for a random key of this process's own.
    pub(crate) fn new(api_key: Option<&str>) -> Self {
        let secret = match api_key {
            Some(key) => format!("loom token v1:{key}"),
            None => format!("loom token v1, no key:{}", new_run_id()),
        };
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    /// A new token valid for [`TOKEN_TTL`]: its expiry, 122 random bits and their signature,
    /// in hex (no escaping in a URL).
    pub(crate) fn issue(&self) -> String {
        self.issue_until(unix_now() + TOKEN_TTL.as_secs())
    }

    fn issue_until(&self, expiry: u64) -> String {
        let nonce = new_run_id().replace('-', "");
        let payload = format!("{expiry:0EXPIRY_LEN$x}{nonce}");
        let tag = hmac::sign(&self.key, payload.as_bytes());
        let mut token = payload;
        for byte in tag.as_ref() {
            token.push_str(&format!("{byte:02x}"));
        }
        token
    }

    /// Whether `token` was signed with this key and has not expired (the signature is
    /// checked in constant time).
    pub(crate) fn is_valid(&self, token: &str) -> bool {
        let Some((payload, tag)) = token.split_at_checked(EXPIRY_LEN + NONCE_LEN) else {
            return false;
        };
        let Some(tag) = from_hex(tag) else {
            return false;
        };
        if hmac::verify(&self.key, payload.as_bytes(), &tag).is_err() {
            return false;
        }
        u64::from_str_radix(&payload[..EXPIRY_LEN], 16).is_ok_and(|expiry| expiry > unix_now())
    }
}

/// Seconds since the Unix epoch, by this machine's clock.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The bytes of lowercase or uppercase hex `text`; `None` for anything else.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_valid_for_every_holder_of_the_key_until_it_expires() {
        let here = Tokens::new(Some("k1"));
        let token = here.issue();
        assert!(here.is_valid(&token));
        // Another server, or this one restarted, with the same key.
        assert!(Tokens::new(Some("k1")).is_valid(&token));
        // Not with another key, nor without one.
        assert!(!Tokens::new(Some("k2")).is_valid(&token));
        assert!(!Tokens::new(None).is_valid(&token));
        // Expired.
        assert!(!here.is_valid(&here.issue_until(unix_now() - 1)));
        // Tampered with: a later expiry, a changed nonce or tag, cut short, not hex.
        let later = format!("{:016x}{}", unix_now() + 10_000, &token[EXPIRY_LEN..]);
        assert!(!here.is_valid(&later));
        for at in [EXPIRY_LEN + 1, token.len() - 1] {
            let mut bytes = token.clone().into_bytes();
            bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
            assert!(!here.is_valid(&String::from_utf8(bytes).unwrap()));
        }
        assert!(!here.is_valid(&token[..token.len() - 2]));
        assert!(!here.is_valid(""));
        assert!(!here.is_valid(&format!("{}zz", &token[..token.len() - 2])));
        assert!(!here.is_valid("é"));
        // Two tokens differ.
        assert_ne!(here.issue(), token);
    }
}
