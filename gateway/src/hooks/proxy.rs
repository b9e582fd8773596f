//! The HTTP side of the hooks: one shared HTTP/1.1 client, the request
//! body, the `traceparent` header, the timeout, and reading the answer.

use super::{
    Caller, ClientHeaders, ConnectAnswer, DenyCode, HookError, PublishAnswer, RefreshAnswer,
};
use crate::config::HooksConfig;
use crate::metrics::{Hook, HookOutcome, metrics};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::{HeaderMap, HeaderValue, Request, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::time::{Duration, Instant};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Largest answer read from the backend.
const MAX_ANSWER: usize = 1024 * 1024;

/// The node's hooks: their URLs, and the client that calls them.
pub(crate) struct Hooks {
    cfg: HooksConfig,
    node: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The request body: the common fields, then the hook's own.
#[derive(serde::Serialize)]
struct Body<'a> {
    node: &'a str,
    session: &'a str,
    transport: &'a str,
    headers: &'a ClientHeaders,
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

/// `{"result": {...}}` or `{"error": {"code", "message"}}`.
#[derive(Deserialize)]
struct Answer<T> {
    result: Option<T>,
    error: Option<Refusal>,
}

#[derive(Deserialize)]
struct Refusal {
    #[serde(default)]
    code: Option<DenyCode>,
    #[serde(default)]
    message: Option<String>,
}

/// An allowed subscribe: nothing to read.
#[derive(Deserialize)]
struct Empty {}

impl Hooks {
    /// `None` when no hook URL is configured.
    pub(crate) fn from_config(cfg: &HooksConfig, node: &str) -> Option<Self> {
        cfg.urls().next()?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(http);
        Some(Self {
            cfg: cfg.clone(),
            node: node.to_owned(),
            client,
        })
    }

    /// The forwarded headers of a client's upgrade request.
    pub(crate) fn capture(&self, headers: &HeaderMap) -> ClientHeaders {
        ClientHeaders::capture(headers, &self.cfg.forward_headers)
    }

    /// Whether a `connect` (with or without a JWT) goes to the connect hook.
    /// `jwt`: the node checks JWTs itself.
    pub(crate) fn connect_applies(&self, has_token: bool, jwt: bool) -> bool {
        self.cfg.connect_url.is_some() && (self.cfg.connect_always || !has_token || !jwt)
    }

    /// Whether a token-less `refresh` goes to the refresh hook.
    pub(crate) fn refreshes(&self) -> bool {
        self.cfg.refresh_url.is_some()
    }

    pub(crate) async fn connect(
        &self,
        who: &Caller<'_>,
        token: Option<&str>,
    ) -> Result<ConnectAnswer, HookError> {
        let span = tracing::info_span!("hook.connect", session = who.session);
        let body = Body {
            token,
            ..self.body(who)
        };
        let a: ConnectAnswer = self
            .call(Hook::Connect, &self.cfg.connect_url, &body)
            .instrument(span)
            .await?;
        Ok(a)
    }

    pub(crate) async fn subscribe(
        &self,
        who: &Caller<'_>,
        channel: &str,
        data: Option<&RawValue>,
    ) -> Result<(), HookError> {
        let span = tracing::info_span!("hook.subscribe", session = who.session, channel);
        let body = Body {
            channel: Some(channel),
            data,
            ..self.body(who)
        };
        let _: Empty = self
            .call(Hook::Subscribe, &self.cfg.subscribe_url, &body)
            .instrument(span)
            .await?;
        Ok(())
    }

    pub(crate) async fn publish(
        &self,
        who: &Caller<'_>,
        channel: &str,
        event: &str,
        data: &RawValue,
    ) -> Result<PublishAnswer, HookError> {
        let span = tracing::info_span!("hook.publish", session = who.session, channel, event);
        let body = Body {
            channel: Some(channel),
            event: Some(event),
            data: Some(data),
            ..self.body(who)
        };
        let a: PublishAnswer = self
            .call(Hook::Publish, &self.cfg.publish_url, &body)
            .instrument(span)
            .await?;
        if let Some(e) = &a.event {
            herald_proto::validate_event(e)
                .map_err(|e| HookError::Invalid(format!("rewritten event: {e}")))?;
        }
        Ok(a)
    }

    pub(crate) async fn refresh(&self, who: &Caller<'_>) -> Result<RefreshAnswer, HookError> {
        let span = tracing::info_span!("hook.refresh", session = who.session);
        self.call(Hook::Refresh, &self.cfg.refresh_url, &self.body(who))
            .instrument(span)
            .await
    }

    fn body<'a>(&'a self, who: &'a Caller<'a>) -> Body<'a> {
        Body {
            node: &self.node,
            session: who.session,
            transport: who.transport,
            headers: who.headers,
            user: who.user,
            token: None,
            channel: None,
            event: None,
            data: None,
        }
    }

    /// POSTs `body` to `url` within the timeout; counts and times the outcome.
    async fn call<T: DeserializeOwned + Rewrites>(
        &self,
        hook: Hook,
        url: &Option<String>,
        body: &Body<'_>,
    ) -> Result<T, HookError> {
        let started = Instant::now();
        let outcome = match url {
            Some(url) => {
                match tokio::time::timeout(self.cfg.timeout, self.post::<T>(url, body)).await {
                    Ok(r) => r,
                    Err(_) => Err(HookError::Timeout(self.cfg.timeout)),
                }
            }
            // The session only calls configured hooks; config validation sees to it.
            None => Err(HookError::Invalid("hook not configured".to_owned())),
        };
        let label = match &outcome {
            Ok(a) if a.rewrites() => HookOutcome::Rewrite,
            Ok(_) => HookOutcome::Allow,
            Err(HookError::Denied { .. }) => HookOutcome::Deny,
            Err(HookError::Timeout(_)) => HookOutcome::Timeout,
            Err(_) => HookOutcome::Error,
        };
        metrics().hook(hook, label, started.elapsed());
        match &outcome {
            Ok(_) | Err(HookError::Denied { .. }) => {
                tracing::debug!(hook = hook.name(), outcome = ?label, "hook answered")
            }
            Err(e) => tracing::warn!(hook = hook.name(), error = %e, "hook failed; refusing"),
        }
        outcome
    }

    async fn post<T: DeserializeOwned>(&self, url: &str, body: &Body<'_>) -> Result<T, HookError> {
        let json = serde_json::to_vec(body).map_err(|e| HookError::Invalid(e.to_string()))?;
        let mut req = Request::post(url)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| HookError::Invalid(e.to_string()))?;
        // The hook's span continues in the backend.
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(
                &cx,
                &mut opentelemetry_http::HeaderInjector(req.headers_mut()),
            )
        });
        let resp = self.client.request(req).await.map_err(|e| {
            tracing::debug!(error = %e, "hook request failed");
            HookError::Unreachable
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(HookError::Status(status.as_u16()));
        }
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| HookError::Invalid(format!("reading the answer: {e}")))?
            .to_bytes();
        let answer: Answer<T> = serde_json::from_slice(&bytes)
            .map_err(|e| HookError::Invalid(format!("answer is not valid: {e}")))?;
        match (answer.result, answer.error) {
            (_, Some(r)) => Err(HookError::Denied {
                code: r.code,
                message: r
                    .message
                    .unwrap_or_else(|| "refused by the backend".to_owned()),
            }),
            (Some(t), None) => Ok(t),
            (None, None) => Err(HookError::Invalid(
                "answer has neither \"result\" nor \"error\"".to_owned(),
            )),
        }
    }
}

/// Whether an allowed answer changes what the client sent (the `rewrite` outcome).
trait Rewrites {
    fn rewrites(&self) -> bool {
        false
    }
}

impl Rewrites for ConnectAnswer {}
impl Rewrites for Empty {}
impl Rewrites for RefreshAnswer {}

impl Rewrites for PublishAnswer {
    fn rewrites(&self) -> bool {
        PublishAnswer::rewrites(self)
    }
}
