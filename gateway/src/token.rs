//! Reconnect tokens: signed, self-contained session state.
//!
//! A leaf like `config` and `metrics`: `session` issues a token with every
//! `connected`, `subscribed` and `unsubscribed` reply and verifies one on
//! `connect` with `resume`. The token carries the session id, user id,
//! subscribed channels and an expiry, signed with HMAC-SHA256 by a secret
//! all nodes of a cluster share, so any node can resume any session without
//! server-side storage, including one whose node crashed.
//!
//! Format: `<key id>.<base64url(JSON claims)>.<base64url(HMAC of the first two parts)>`.
//! The key id (first 8 hex digits of SHA-256 of the secret) lets nodes verify
//! tokens signed with an older secret during a rotation.

use crate::clock::now_secs;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::RwLock;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

crate::metrics::labels! {
    /// Why a reconnect token was refused; also the metric label.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub(crate) enum TokenError {
        #[error("malformed token")]
        Malformed => "malformed",
        #[error("signed with an unknown key")]
        UnknownKey => "unknown_key",
        #[error("bad signature")]
        BadSignature => "bad_signature",
        #[error("expired")]
        Expired => "expired",
        #[error("no signing key yet")]
        NoKey => "no_key",
    }
}

/// What a token vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) sid: String,
    /// User id; empty for anonymous sessions (open mode).
    pub(crate) uid: String,
    pub(crate) ch: Vec<String>,
    /// The channels of `ch` a subscribe token granted: channel rules cannot
    /// re-derive them on resume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) gr: Vec<String>,
    /// Expiry, seconds since the UNIX epoch.
    pub(crate) exp: u64,
}

struct Key {
    id: String,
    secret: Vec<u8>,
}

impl Key {
    fn new(secret: &str) -> Self {
        let digest = Sha256::digest(secret.as_bytes());
        let id = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            id,
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self, signed: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(signed.as_bytes());
        mac
    }
}

/// Issues and verifies tokens. The first key signs; every key verifies.
pub(crate) struct Tokens {
    keys: RwLock<Vec<Key>>,
    ttl: Duration,
}

impl Tokens {
    /// `secrets` may be empty until one is agreed on (see [`Tokens::set_secret`]).
    pub(crate) fn new(secrets: &[String], ttl: Duration) -> Self {
        Self {
            keys: RwLock::new(secrets.iter().map(|s| Key::new(s)).collect()),
            ttl,
        }
    }

    /// Installs the signing secret when none was configured.
    pub(crate) fn set_secret(&self, secret: &str) {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if keys.is_empty() {
            keys.push(Key::new(secret));
        }
    }

    pub(crate) fn ready(&self) -> bool {
        !self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// A token for this session state, valid for the configured TTL.
    pub(crate) fn issue(
        &self,
        sid: &str,
        uid: &str,
        channels: impl Iterator<Item = String>,
        granted: Vec<String>,
    ) -> Option<String> {
        let claims = Claims {
            sid: sid.to_owned(),
            uid: uid.to_owned(),
            ch: channels.collect(),
            gr: granted,
            exp: now_secs() + self.ttl.as_secs(),
        };
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = keys.first()?;
        let payload = B64.encode(serde_json::to_vec(&claims).ok()?);
        let signed = format!("{}.{payload}", key.id);
        let sig = B64.encode(key.mac(&signed).finalize().into_bytes());
        Some(format!("{signed}.{sig}"))
    }

    /// Checks signature (constant time) and expiry; returns the claims.
    pub(crate) fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (kid, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        if keys.is_empty() {
            return Err(TokenError::NoKey);
        }
        let key = keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or(TokenError::UnknownKey)?;
        key.mac(signed)
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let raw = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// A fresh random secret (for a single node, or for Redis to agree on).
pub(crate) fn random_secret() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(43)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secrets: &[&str]) -> Tokens {
        let s: Vec<String> = secrets.iter().map(|s| (*s).to_owned()).collect();
        Tokens::new(&s, Duration::from_secs(300))
    }

    #[test]
    fn round_trip_and_rotation() {
        let old = tokens(&["old-secret"]);
        let t = old
            .issue(
                "s1",
                "u1",
                ["a".to_owned(), "b".to_owned()].into_iter(),
                vec!["b".to_owned()],
            )
            .expect("key");
        let c = old.verify(&t, now_secs()).expect("valid");
        assert_eq!(
            (c.sid.as_str(), c.uid.as_str(), c.ch.len()),
            ("s1", "u1", 2)
        );
        // A node that signs with a new secret still accepts the old one's tokens.
        let rotated = tokens(&["new-secret", "old-secret"]);
        assert!(rotated.verify(&t, now_secs()).is_ok());
        let stranger = tokens(&["other"]);
        assert_eq!(stranger.verify(&t, now_secs()), Err(TokenError::UnknownKey));
    }

    #[test]
    fn tampering_and_expiry_are_caught() {
        let k = tokens(&["s"]);
        let t = k
            .issue("s1", "", std::iter::empty(), Vec::new())
            .expect("key");
        assert_eq!(k.verify(&t, now_secs() + 301), Err(TokenError::Expired));
        let (kid, rest) = t.split_once('.').expect("parts");
        let (_, sig) = rest.split_once('.').expect("parts");
        let forged_claims = B64.encode(br#"{"sid":"s1","uid":"admin","ch":[],"exp":99999999999}"#);
        let forged = format!("{kid}.{forged_claims}.{sig}");
        assert_eq!(k.verify(&forged, now_secs()), Err(TokenError::BadSignature));
        assert_eq!(k.verify("garbage", now_secs()), Err(TokenError::Malformed));
        assert_eq!(tokens(&[]).verify(&t, now_secs()), Err(TokenError::NoKey));
    }
}
