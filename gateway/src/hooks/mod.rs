//! Hooks: the backend takes part over HTTP (`docs/hooks.md`).
//!
//! Called by the session core only, a leaf otherwise (it uses `config` and
//! `metrics`). At `connect` (connections without a JWT, or all of them),
//! `subscribe` and `emit` (in namespaces that opt in) and a token-less
//! `refresh`, the core asks [`Hooks`], which POSTs a JSON description of the
//! client and the command to the configured URL ([`proxy`]) and reads the
//! backend's verdict: allow (maybe with a user, an expiry, a rewritten
//! publication), or refuse. Every call has a timeout, a span whose context
//! travels to the backend as W3C `traceparent`, and outcome and latency
//! metrics; a backend that is slow, down or answers nonsense fails the call
//! closed ([`HookError`]).
//!
//! The client's request headers the backend should see are captured by the
//! server at upgrade time ([`Hooks::capture`]) and carried by the session as
//! [`ClientHeaders`]: the transport passes them on, the logic stays here.

mod proxy;
pub(crate) mod webhooks;

use herald_proto::{CloseCode, ErrorCode};
use hyper::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::Duration;

pub(crate) use proxy::Hooks;

/// Longest header value forwarded; longer ones are left out.
const MAX_HEADER_VALUE: usize = 4096;

/// The client request headers forwarded to the backend (names lower-case,
/// repeated headers joined), captured once at upgrade. Empty without hooks.
#[derive(Debug, Default, Clone)]
pub(crate) struct ClientHeaders(Option<Box<[Header]>>);

/// One forwarded header: its lower-case name and its value.
type Header = (Box<str>, Box<str>);

impl ClientHeaders {
    /// The configured `names` found in `headers`.
    fn capture(headers: &HeaderMap, names: &[String]) -> Self {
        let mut out = Vec::new();
        for name in names {
            let mut value = String::new();
            let sep = if name == "cookie" { "; " } else { ", " };
            for v in headers.get_all(name.as_str()) {
                let Ok(v) = v.to_str() else { continue };
                if !value.is_empty() {
                    value.push_str(sep);
                }
                value.push_str(v);
            }
            if !value.is_empty() && value.len() <= MAX_HEADER_VALUE {
                out.push((name.as_str().into(), value.into_boxed_str()));
            }
        }
        Self((!out.is_empty()).then(|| out.into_boxed_slice()))
    }
}

impl Serialize for ClientHeaders {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let pairs = self.0.as_deref().unwrap_or_default();
        let mut m = s.serialize_map(Some(pairs.len()))?;
        for (k, v) in pairs {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Who the hook call is about: the fields every request carries.
pub(crate) struct Caller<'a> {
    pub(crate) session: &'a str,
    /// `websocket` (Herald v1) or `socketio`.
    pub(crate) transport: &'static str,
    pub(crate) headers: &'a ClientHeaders,
    /// `None` before connect, or for an anonymous connection.
    pub(crate) user: Option<&'a str>,
}

/// Why a hook call did not allow the command. The text is safe to show
/// the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HookError {
    /// The backend refused, with its code (if any) and message.
    #[error("{message}")]
    Denied {
        code: Option<DenyCode>,
        message: String,
    },
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the backend is unreachable")]
    Unreachable,
    #[error("backend error: HTTP {0}")]
    Status(u16),
    #[error("backend error: {0}")]
    Invalid(String),
}

impl HookError {
    /// For a refused `connect`: the close code (the backend's when Herald
    /// knows it and it is in 4500–4999, else 4501) and the error code of
    /// the reply sent before the close. `None` for failures, which close
    /// with a reconnect code.
    pub(crate) fn connect_refusal(&self) -> Option<(CloseCode, ErrorCode)> {
        let Self::Denied { code, .. } = self else {
            return None;
        };
        let close = match code {
            Some(DenyCode::Number(n)) => CloseCode::from_code(*n)
                .filter(|c| !c.reconnect())
                .unwrap_or(CloseCode::Forbidden),
            Some(DenyCode::Name(name)) => match name.as_str() {
                "unauthorized" => CloseCode::Unauthorized,
                "too_many_connections" => CloseCode::TooManyConnections,
                _ => CloseCode::Forbidden,
            },
            None => CloseCode::Forbidden,
        };
        let error = match close {
            CloseCode::Unauthorized => ErrorCode::Unauthorized,
            CloseCode::TooManyConnections => ErrorCode::TooManyConnections,
            _ => ErrorCode::Forbidden,
        };
        Some((close, error))
    }

    /// The error code a refused `subscribe`, `emit` or `refresh` answers with.
    pub(crate) fn error_code(&self, denied: ErrorCode) -> ErrorCode {
        match self {
            Self::Denied { .. } => denied,
            _ => ErrorCode::Unavailable,
        }
    }
}

/// The `code` of a backend's refusal: a close code or an error code name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(crate) enum DenyCode {
    Number(u16),
    Name(String),
}

/// What the connect hook allowed.
#[derive(Debug, Deserialize)]
pub(crate) struct ConnectAnswer {
    /// The connection's user; empty = anonymous.
    pub(crate) user: String,
    /// When the connection expires (UNIX seconds), unless refreshed.
    #[serde(default)]
    pub(crate) expire_at: Option<u64>,
    /// Channels to subscribe the connection to right away.
    #[serde(default)]
    pub(crate) channels: Vec<String>,
    /// Public details of the user, shown in presence.
    #[serde(default)]
    pub(crate) info: Option<serde_json::Value>,
}

/// What the publish hook decided about an emit it allowed.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PublishAnswer {
    /// Publish this event name instead of the client's.
    #[serde(default)]
    pub(crate) event: Option<String>,
    /// Publish this data instead of the client's.
    #[serde(default)]
    pub(crate) data: Option<Box<RawValue>>,
}

impl PublishAnswer {
    pub(crate) fn rewrites(&self) -> bool {
        self.event.is_some() || self.data.is_some()
    }
}

/// What the refresh hook allowed.
#[derive(Debug, Deserialize)]
pub(crate) struct RefreshAnswer {
    /// The connection's new expiry (UNIX seconds).
    pub(crate) expire_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_captured_by_configured_name_only() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1".parse().expect("value"));
        h.append("cookie", "b=2".parse().expect("value"));
        h.append("x-secret", "no".parse().expect("value"));
        h.append("origin", "http://app".parse().expect("value"));
        let names = ["cookie", "origin", "authorization"].map(str::to_owned);
        let c = ClientHeaders::capture(&h, &names);
        let json = serde_json::to_string(&c).expect("json");
        assert_eq!(json, r#"{"cookie":"a=1; b=2","origin":"http://app"}"#);
        let none = ClientHeaders::capture(&HeaderMap::new(), &names);
        assert_eq!(serde_json::to_string(&none).expect("json"), "{}");
    }

    #[test]
    fn connect_refusals_close_with_a_known_do_not_reconnect_code() {
        let denied = |code| HookError::Denied {
            code,
            message: "no".into(),
        };
        let close = |c| denied(c).connect_refusal().map(|(c, _)| c);
        assert_eq!(close(None), Some(CloseCode::Forbidden));
        assert_eq!(
            close(Some(DenyCode::Number(4500))),
            Some(CloseCode::Unauthorized)
        );
        assert_eq!(
            close(Some(DenyCode::Number(4000))),
            Some(CloseCode::Forbidden),
            "a reconnect code is clamped into 4500-4999"
        );
        assert_eq!(
            close(Some(DenyCode::Number(4999))),
            Some(CloseCode::Forbidden)
        );
        assert_eq!(
            close(Some(DenyCode::Name("unauthorized".into()))),
            Some(CloseCode::Unauthorized)
        );
        assert!(HookError::Unreachable.connect_refusal().is_none());
        assert_eq!(
            HookError::Status(500).error_code(ErrorCode::Forbidden),
            ErrorCode::Unavailable
        );
    }
}
