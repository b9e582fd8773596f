//! Server publish API: backends emit events over HTTP.
//!
//! Beside `session` at the top of the data flow: requests publish through
//! `node` → `broker` (never straight into the hub), so API publications get
//! positions and reach every node exactly like client emits. Errors are JSON
//! `{"error":{"code","message"}}` via [`ApiError`].

use crate::broker::BrokerError;
use crate::metrics::{ApiRoute, metrics};
use crate::node::{Node, Source};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_proto::{ErrorCode, validate_channel, validate_event};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::Arc;
use tracing::Instrument;

/// Most channels one broadcast may name.
pub(crate) const MAX_BROADCAST_CHANNELS: usize = 1000;

#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) node: Arc<Node>,
    pub(crate) max_payload: usize,
    /// SHA-256 of every accepted API key; empty = no API auth (development).
    pub(crate) keys: Arc<[[u8; 32]]>,
    pub(crate) presence: Arc<crate::presence::Presence>,
}

impl ApiState {
    pub(crate) fn hash_keys(keys: &[String]) -> Arc<[[u8; 32]]> {
        keys.iter()
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect()
    }

    /// Checks `Authorization: Bearer KEY` in constant time (every key is
    /// compared in full, digests hide the length).
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing \"Authorization: Bearer <api key>\" header".to_owned(),
                )
            })?;
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let mut ok = 0u8;
        for k in self.keys.iter() {
            let diff = k
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            ok |= u8::from(diff == 0);
        }
        if ok == 1 {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("unknown API key".to_owned()))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Self::Unavailable(_) => ErrorCode::Unavailable,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        Self::Unavailable(format!("{e}; nothing was published"))
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: ErrorCode,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let msg = self.to_string();
        let body = serde_json::json!({ "error": ErrorBody { code: self.code(), message: &msg } });
        (self.status(), Json(body)).into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastReq<'a> {
    #[serde(borrow)]
    channels: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Serialize)]
pub(crate) struct Published {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
}

async fn read_body(body: Body, max_payload: usize) -> Result<bytes::Bytes, ApiError> {
    // The envelope (channel names, event) is allowed on top of the payload limit.
    let limit = max_payload + 64 * 1024;
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"))
        } else {
            ApiError::BadRequest(format!("cannot read request body: {inner}"))
        }
    })
}

fn check_data(data: &RawValue, max: usize) -> Result<(), ApiError> {
    let n = data.get().len();
    if n > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "\"data\" is {n} bytes, the limit is {max}"
        )));
    }
    herald_proto::validate_data_depth(data.get()).map_err(ApiError::BadRequest)
}

fn record(route: ApiRoute, status: StatusCode, started: std::time::Instant) {
    metrics().api(route, status.as_u16(), started.elapsed());
}

/// A span for one API request, continuing the caller's W3C trace if any.
fn request_span(name: &'static str, headers: &HeaderMap) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let span = match name {
        "api_broadcast" => tracing::info_span!("api_broadcast", status = tracing::field::Empty),
        "api_presence" => tracing::info_span!("api_presence", status = tracing::field::Empty),
        _ => tracing::info_span!("api_publish", status = tracing::field::Empty),
    };
    // Fails only when no OpenTelemetry layer is installed; nothing to continue then.
    let _ = span.set_parent(crate::telemetry::remote_context(headers));
    span
}

/// `POST /api/v1/publish` `{"channel","event","data"}` → `{"epoch","offset"}`.
pub(crate) async fn publish(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let span = request_span("api_publish", &headers);
    let res = match st.authorize(&headers) {
        Ok(()) => publish_inner(&st, body).instrument(span.clone()).await,
        Err(e) => Err(e),
    };
    let resp = match res {
        Ok(p) => Json(p).into_response(),
        Err(e) => e.into_response(),
    };
    record(ApiRoute::Publish, resp.status(), started);
    span.record("status", resp.status().as_u16());
    resp
}

async fn publish_inner(st: &ApiState, body: Body) -> Result<Published, ApiError> {
    let bytes = read_body(body, st.max_payload).await?;
    let req: PublishReq<'_> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    validate_channel(&req.channel).map_err(ApiError::BadRequest)?;
    validate_event(&req.event).map_err(ApiError::BadRequest)?;
    let data = req.data.unwrap_or(RawValue::NULL);
    check_data(data, st.max_payload)?;
    let pos = st
        .node
        .publish(&req.channel, &req.event, data, Source::Api)
        .await?;
    Ok(Published {
        epoch: pos.epoch.to_string(),
        offset: pos.offset,
    })
}

/// `GET /api/v1/presence?channel=CH` → `{"channel","clients":[...],"users"}`
/// (the cluster-wide list; `&stats` leaves the list out, for the counts only).
pub(crate) async fn presence(
    State(st): State<ApiState>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let started = std::time::Instant::now();
    let span = request_span("api_presence", &headers);
    let res = match st.authorize(&headers) {
        Ok(()) => {
            presence_inner(&st, query.as_deref().unwrap_or(""))
                .instrument(span.clone())
                .await
        }
        Err(e) => Err(e),
    };
    let resp = match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    record(ApiRoute::Presence, resp.status(), started);
    span.record("status", resp.status().as_u16());
    resp
}

async fn presence_inner(st: &ApiState, query: &str) -> Result<serde_json::Value, ApiError> {
    let mut channel = None;
    let mut stats = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "channel" => {
                let v = crate::query::decode(v, true).ok_or_else(|| {
                    ApiError::BadRequest("channel is not valid percent-encoded UTF-8".into())
                })?;
                channel = Some(v);
            }
            "stats" => stats = true,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: expected channel (and stats)"
                )));
            }
        }
    }
    let channel = channel.ok_or_else(|| ApiError::BadRequest("missing ?channel=".into()))?;
    validate_channel(&channel).map_err(ApiError::BadRequest)?;
    if !st.presence.enabled(&channel) {
        return Err(ApiError::BadRequest(
            "this channel's namespace keeps no presence (presence = true in its rules)".into(),
        ));
    }
    let clients = st.presence.list(&channel).await?;
    let users: std::collections::HashSet<&str> = clients.iter().map(|c| c.user.as_str()).collect();
    let mut out = serde_json::json!({
        "channel": channel,
        "clients": clients.len(),
        "users": users.len(),
    });
    if !stats {
        out["list"] = serde_json::to_value(&clients).unwrap_or_default();
    }
    Ok(out)
}

/// `POST /api/v1/broadcast` `{"channels":[...],"event","data"}` →
/// `{"results":[{"channel","epoch","offset"} | {"channel","error"}]}`.
pub(crate) async fn broadcast(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let span = request_span("api_broadcast", &headers);
    let res = match st.authorize(&headers) {
        Ok(()) => broadcast_inner(&st, body).instrument(span.clone()).await,
        Err(e) => Err(e),
    };
    let resp = match res {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    };
    record(ApiRoute::Broadcast, resp.status(), started);
    span.record("status", resp.status().as_u16());
    resp
}

async fn broadcast_inner(st: &ApiState, body: Body) -> Result<serde_json::Value, ApiError> {
    let bytes = read_body(body, st.max_payload).await?;
    let req: BroadcastReq<'_> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))?;
    if req.channels.is_empty() || req.channels.len() > MAX_BROADCAST_CHANNELS {
        return Err(ApiError::BadRequest(format!(
            "\"channels\" must list 1 to {MAX_BROADCAST_CHANNELS} channels, got {}",
            req.channels.len()
        )));
    }
    validate_event(&req.event).map_err(ApiError::BadRequest)?;
    let data = req.data.unwrap_or(RawValue::NULL);
    check_data(data, st.max_payload)?;
    // Refuse the whole batch up front rather than answer 200 with every channel failed.
    if !st.node.is_ready() {
        return Err(ApiError::Unavailable(
            "broker unavailable; nothing was published".to_owned(),
        ));
    }
    let event = &req.event;
    let results = futures_util::future::join_all(req.channels.iter().map(|ch| async move {
        if let Err(e) = validate_channel(ch) {
            let err = ErrorBody {
                code: ErrorCode::BadRequest,
                message: &e,
            };
            return serde_json::json!({ "channel": ch, "error": err });
        }
        match st.node.publish(ch, event, data, Source::Api).await {
            Ok(p) => serde_json::json!({ "channel": ch, "epoch": &*p.epoch, "offset": p.offset }),
            Err(e) => {
                let msg = e.to_string();
                let err = ErrorBody {
                    code: ErrorCode::Unavailable,
                    message: &msg,
                };
                serde_json::json!({ "channel": ch, "error": err })
            }
        }
    }))
    .await;
    Ok(serde_json::json!({ "results": results }))
}
