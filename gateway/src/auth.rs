//! Auth: who a connection belongs to, from the JWTs a backend signs.
//!
//! A leaf beside `config`: `session` asks it to verify the connect token
//! (→ [`Identity`]), subscribe tokens (one channel for one user) and refresh
//! tokens, and to count each user's connections on this node. The algorithm
//! is pinned by configuration, never read from the token: an HS256 node
//! rejects RS256 tokens and the reverse, and `none` does not exist here.
//! A JWKS file is re-read when its modification time or size changes.

use crate::config::{AuthConfig, JwtAlgorithm};
use crate::metrics::AuthFailure;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Why a token was refused. The text is safe to show its bearer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required: send {{\"op\":\"connect\",\"token\":\"JWT\"}}")]
    Missing,
    #[error("token is not a valid JWT: {0}")]
    Malformed(String),
    #[error("token algorithm is not the one this server accepts")]
    WrongAlgorithm,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token key id is unknown")]
    UnknownKey,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer is not accepted")]
    WrongIssuer,
    #[error("token audience is not accepted")]
    WrongAudience,
    #[error("token lacks the {0:?} claim")]
    MissingClaim(&'static str),
    #[error("this is a subscribe token; connect needs a connection token")]
    SubscribeTokenAtConnect,
    #[error("token is for another channel")]
    WrongChannel,
    #[error("token is for another user")]
    WrongUser,
    #[error("no key to verify tokens with (authentication is not configured)")]
    NotConfigured,
}

impl AuthError {
    /// Low-cardinality metric label.
    pub(crate) fn failure(&self) -> AuthFailure {
        match self {
            Self::Missing => AuthFailure::Missing,
            Self::Malformed(_) => AuthFailure::Malformed,
            Self::WrongAlgorithm => AuthFailure::WrongAlgorithm,
            Self::BadSignature => AuthFailure::BadSignature,
            Self::UnknownKey => AuthFailure::UnknownKey,
            Self::Expired => AuthFailure::Expired,
            Self::NotYetValid => AuthFailure::NotYetValid,
            Self::WrongIssuer => AuthFailure::WrongIssuer,
            Self::WrongAudience => AuthFailure::WrongAudience,
            Self::MissingClaim(_) => AuthFailure::MissingClaim,
            Self::SubscribeTokenAtConnect | Self::WrongChannel | Self::WrongUser => {
                AuthFailure::WrongClaims
            }
            Self::NotConfigured => AuthFailure::NotConfigured,
        }
    }
}

/// Why auth could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
}

/// A verified connection: the user and what their token grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Identity {
    /// `sub`; empty for anonymous connections in open mode.
    pub(crate) user: String,
    /// Channel names or `*` patterns from the `channels` claim.
    pub(crate) channels: Vec<String>,
    /// `exp`, seconds since the UNIX epoch; `None` in open mode.
    pub(crate) expires: Option<u64>,
    /// What the token's `info` claim (or the connect hook) says about the
    /// user: shown to others in presence answers and join/leave.
    pub(crate) info: Option<serde_json::Value>,
}

/// The claims Herald reads; others are ignored.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// A NumericDate: integer or fractional seconds.
    #[serde(deserialize_with = "numeric_date")]
    pub exp: u64,
    /// Connect tokens: channels (or patterns) the user may subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Subscribe tokens: the one channel granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience or several (checked by the JWT library, only carried here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Connect tokens: public details of the user (a display name, an
    /// avatar), shown in presence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    n.as_u64()
        .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .ok_or_else(|| serde::de::Error::custom("exp must be a non-negative number"))
}

/// Verifies tokens against the configured key.
pub(crate) struct Auth {
    keys: Keys,
    validation: Validation,
}

enum Keys {
    Static(Algorithm, DecodingKey),
    Jwks(JwksFile),
}

impl Auth {
    /// `None` in open mode (no key source configured).
    pub(crate) fn from_config(cfg: &AuthConfig) -> Result<Option<Self>, AuthSetupError> {
        let keys = if let Some(secret) = &cfg.jwt_secret {
            Keys::Static(
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            )
        } else if let Some(path) = &cfg.jwt_public_key {
            let (alg, key) = read_pem(path, cfg.jwt_algorithm)?;
            Keys::Static(alg, key)
        } else if let Some(path) = &cfg.jwks_file {
            let pin = cfg.jwt_algorithm.map(algorithm);
            let file = JwksFile::open(path, pin)?;
            Keys::Jwks(file)
        } else {
            return Ok(None);
        };
        // The accepted algorithm list is set per key at verification time.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = cfg.leeway.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = cfg.audience.is_some();
        let mut required = vec!["exp"];
        if let Some(aud) = &cfg.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &cfg.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Self { keys, validation }))
    }

    /// Clock skew allowed on `exp`; a connection is closed this long after its token's `exp`.
    pub(crate) fn leeway(&self) -> Duration {
        Duration::from_secs(self.validation.leeway)
    }

    /// Checks a connect token and returns who it is for.
    pub(crate) fn connect(&self, token: &str) -> Result<Identity, AuthError> {
        let c = self.verify(token)?;
        if c.channel.is_some() {
            return Err(AuthError::SubscribeTokenAtConnect);
        }
        let user = c
            .sub
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingClaim("sub"))?;
        Ok(Identity {
            user,
            channels: c.channels.unwrap_or_default(),
            expires: Some(c.exp),
            info: c.info,
        })
    }

    /// Checks a subscribe token: it must name `channel` and `user`.
    pub(crate) fn subscribe(
        &self,
        token: &str,
        user: &str,
        channel: &str,
    ) -> Result<(), AuthError> {
        let c = self.verify(token)?;
        match c.channel.as_deref() {
            None => Err(AuthError::MissingClaim("channel")),
            Some(ch) if ch != channel => Err(AuthError::WrongChannel),
            Some(_) if c.sub.as_deref().unwrap_or("") != user => Err(AuthError::WrongUser),
            Some(_) => Ok(()),
        }
    }

    fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(map_err)?;
        let (alg, key) = match &self.keys {
            Keys::Static(alg, key) => (*alg, key.clone()),
            Keys::Jwks(file) => file.key(header.kid.as_deref())?,
        };
        if header.alg != alg {
            return Err(AuthError::WrongAlgorithm);
        }
        let mut v = self.validation.clone();
        v.algorithms = vec![alg];
        jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(map_err)
    }
}

fn map_err(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::WrongAlgorithm,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(match c.as_str() {
            "exp" => "exp",
            "iss" => "iss",
            "aud" => "aud",
            _ => "sub",
        }),
        _ => AuthError::Malformed(e.to_string()),
    }
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

fn read_key_file(path: &Path) -> Result<Vec<u8>, AuthSetupError> {
    std::fs::read(path).map_err(|source| AuthSetupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Builds "this key file is unusable" errors for `path`.
fn key_error(path: &Path) -> impl Fn(String) -> AuthSetupError + '_ {
    move |message| AuthSetupError::Key {
        path: path.to_owned(),
        message,
    }
}

/// A PEM public key; its type decides the algorithm unless one is pinned.
fn read_pem(
    path: &Path,
    pin: Option<JwtAlgorithm>,
) -> Result<(Algorithm, DecodingKey), AuthSetupError> {
    let pem = read_key_file(path)?;
    let bad = key_error(path);
    let rsa = DecodingKey::from_rsa_pem(&pem);
    let ec = DecodingKey::from_ec_pem(&pem);
    match (pin, rsa, ec) {
        (None | Some(JwtAlgorithm::RS256), Ok(k), _) => Ok((Algorithm::RS256, k)),
        (None | Some(JwtAlgorithm::ES256), _, Ok(k)) => Ok((Algorithm::ES256, k)),
        (Some(alg), _, _) => Err(bad(format!("not a PEM public key usable for {alg:?}"))),
        (None, Err(e), Err(_)) => Err(bad(format!("not an RSA or EC (P-256) PEM public key: {e}"))),
    }
}

/// A JWKS document on disk, re-read when it changes.
struct JwksFile {
    path: PathBuf,
    pin: Option<Algorithm>,
    state: Mutex<JwksState>,
}

struct JwksState {
    keys: Arc<Vec<(Option<String>, Algorithm, DecodingKey)>>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// How often, at most, the JWKS file's metadata is looked at.
const JWKS_CHECK: Duration = Duration::from_secs(1);

impl JwksFile {
    fn open(path: &Path, pin: Option<Algorithm>) -> Result<Self, AuthSetupError> {
        let (keys, stamp) = load_jwks(path, pin)?;
        Ok(Self {
            path: path.to_owned(),
            pin,
            state: Mutex::new(JwksState {
                keys: Arc::new(keys),
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The key for `kid` (the only key when the token names none and the set has one).
    fn key(&self, kid: Option<&str>) -> Result<(Algorithm, DecodingKey), AuthError> {
        let keys = self.current();
        let found = match kid {
            Some(kid) => keys.iter().find(|(k, _, _)| k.as_deref() == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => None,
        };
        found
            .map(|(_, alg, key)| (*alg, key.clone()))
            .ok_or(AuthError::UnknownKey)
    }

    fn current(&self) -> Arc<Vec<(Option<String>, Algorithm, DecodingKey)>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.checked.elapsed() >= JWKS_CHECK {
            st.checked = Instant::now();
            if stamp(&self.path) != st.stamp {
                // Reading a small local file under the lock is brief and
                // keeps concurrent verifiers from reloading it twice.
                match load_jwks(&self.path, self.pin) {
                    Ok((keys, stamp)) => {
                        tracing::info!(path = %self.path.display(), keys = keys.len(), "JWKS reloaded");
                        crate::metrics::metrics().jwks_reload(crate::metrics::Reload::Ok);
                        st.keys = Arc::new(keys);
                        st.stamp = stamp;
                    }
                    Err(e) => {
                        // Keep the last good keys; a half-written file must not lock everyone out.
                        tracing::warn!(error = %e, "JWKS reload failed; keeping the previous keys");
                        crate::metrics::metrics().jwks_reload(crate::metrics::Reload::Failed);
                        st.stamp = stamp(&self.path);
                    }
                }
            }
        }
        Arc::clone(&st.keys)
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

type JwksKeys = Vec<(Option<String>, Algorithm, DecodingKey)>;

fn load_jwks(
    path: &Path,
    pin: Option<Algorithm>,
) -> Result<(JwksKeys, Option<(SystemTime, u64)>), AuthSetupError> {
    let stamp = stamp(path);
    let text = read_key_file(path)?;
    let bad = key_error(path);
    let set: JwkSet = serde_json::from_slice(&text).map_err(|e| bad(format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        // The key's type decides its algorithm; a stated `alg` must agree.
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        let stated = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        if stated.is_some_and(|s| s != alg) || pin.is_some_and(|p| p != alg) {
            continue;
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("bad key: {e}")))?;
        keys.push((jwk.common.key_id.clone(), alg, key));
    }
    if keys.is_empty() {
        return Err(bad(
            "no usable key (RSA or EC P-256, matching jwt_algorithm when set)".to_owned(),
        ));
    }
    Ok((keys, stamp))
}

/// Mints an HS256 token (for `herald token` and tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| AuthError::Malformed(e.to_string()))
}

/// Counts each user's connections on this node against a limit.
pub(crate) struct UserConnections {
    limit: usize,
    counts: Mutex<HashMap<Box<str>, usize>>,
}

/// Held for a connection's life; gives its slot back when dropped.
pub(crate) struct UserSlot {
    registry: Arc<UserConnections>,
    user: Box<str>,
}

impl UserConnections {
    pub(crate) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `user`, or `None` when they are at the limit.
    pub(crate) fn admit(self: &Arc<Self>, user: &str) -> Option<UserSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(user.into()).or_insert(0);
        if self.limit > 0 && *n >= self.limit {
            return None;
        }
        *n += 1;
        crate::metrics::metrics().users.set(counts.len() as i64);
        Some(UserSlot {
            registry: Arc::clone(self),
            user: user.into(),
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self
            .registry
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
        crate::metrics::metrics().users.set(counts.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!!";

    fn now() -> u64 {
        crate::clock::now_secs()
    }

    fn hs_auth() -> Auth {
        let cfg = AuthConfig {
            jwt_secret: Some(SECRET.to_owned()),
            ..AuthConfig::default()
        };
        Auth::from_config(&cfg).expect("valid").expect("enabled")
    }

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: Some(sub.to_owned()),
            exp,
            channels: None,
            channel: None,
            iss: None,
            aud: None,
            info: None,
        }
    }

    #[test]
    fn hs256_round_trip_and_expiry() {
        let auth = hs_auth();
        let t = mint_hs256(SECRET, &claims("42", now() + 60)).expect("mint");
        assert_eq!(auth.connect(&t).expect("valid").user, "42");
        let old = mint_hs256(SECRET, &claims("42", now() - 60)).expect("mint");
        assert_eq!(auth.connect(&old), Err(AuthError::Expired));
        // Within the leeway still passes.
        let just = mint_hs256(SECRET, &claims("42", now() - 2)).expect("mint");
        assert!(auth.connect(&just).is_ok());
        let other = mint_hs256(
            "another-secret-of-at-least-32-bytes!!",
            &claims("42", now() + 60),
        )
        .expect("mint");
        assert_eq!(auth.connect(&other), Err(AuthError::BadSignature));
    }

    #[test]
    fn fractional_exp_is_a_numeric_date() {
        let auth = hs_auth();
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub":"42","exp": now() as f64 + 60.5}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("mint");
        assert_eq!(auth.connect(&t).expect("valid").user, "42");
    }

    #[test]
    fn alg_none_and_garbage_are_rejected() {
        let auth = hs_auth();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let head = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64.encode(format!(r#"{{"sub":"42","exp":{}}}"#, now() + 60));
        let none = format!("{head}.{body}.");
        assert!(matches!(
            auth.connect(&none),
            Err(AuthError::Malformed(_) | AuthError::WrongAlgorithm)
        ));
        assert!(matches!(
            auth.connect("not.a.jwt"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(auth.connect(""), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn subscribe_tokens_are_bound_to_user_and_channel() {
        let auth = hs_auth();
        let mut c = claims("42", now() + 60);
        c.channel = Some("secret:room".to_owned());
        let t = mint_hs256(SECRET, &c).expect("mint");
        assert!(auth.subscribe(&t, "42", "secret:room").is_ok());
        assert_eq!(
            auth.subscribe(&t, "43", "secret:room"),
            Err(AuthError::WrongUser)
        );
        assert_eq!(
            auth.subscribe(&t, "42", "secret:other"),
            Err(AuthError::WrongChannel)
        );
        assert_eq!(auth.connect(&t), Err(AuthError::SubscribeTokenAtConnect));
        let plain = mint_hs256(SECRET, &claims("42", now() + 60)).expect("mint");
        assert_eq!(
            auth.subscribe(&plain, "42", "secret:room"),
            Err(AuthError::MissingClaim("channel"))
        );
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let cfg = AuthConfig {
            jwt_secret: Some(SECRET.to_owned()),
            issuer: Some("https://backend".to_owned()),
            audience: Some("herald".to_owned()),
            ..AuthConfig::default()
        };
        let auth = Auth::from_config(&cfg).expect("valid").expect("enabled");
        let mut c = claims("42", now() + 60);
        assert!(matches!(
            auth.connect(&mint_hs256(SECRET, &c).expect("mint")),
            Err(AuthError::MissingClaim("aud" | "iss"))
        ));
        c.aud = Some("herald".into());
        c.iss = Some("https://evil".to_owned());
        assert_eq!(
            auth.connect(&mint_hs256(SECRET, &c).expect("mint")),
            Err(AuthError::WrongIssuer)
        );
        c.iss = Some("https://backend".to_owned());
        assert!(auth.connect(&mint_hs256(SECRET, &c).expect("mint")).is_ok());
        c.aud = Some(serde_json::json!(["herald", "another-service"]));
        assert!(
            auth.connect(&mint_hs256(SECRET, &c).expect("mint")).is_ok(),
            "an audience array that names us"
        );
        c.aud = Some(serde_json::json!(["other", "more"]));
        assert_eq!(
            auth.connect(&mint_hs256(SECRET, &c).expect("mint")),
            Err(AuthError::WrongAudience)
        );
    }

    #[test]
    fn per_user_limit_frees_slots_on_drop() {
        let reg = UserConnections::new(2);
        let a = reg.admit("u").expect("first");
        let _b = reg.admit("u").expect("second");
        assert!(reg.admit("u").is_none(), "third is over the limit");
        assert!(reg.admit("v").is_some(), "other users unaffected");
        drop(a);
        assert!(reg.admit("u").is_some(), "a slot came back");
    }
}
