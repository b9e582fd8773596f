//! `connect`: authentication, the per-user limit, and the `connected` reply.
//!
//! Part of the session core. A connect with `resume` continues in
//! [`super::resume`]. A connection without a JWT (or every connection, with
//! `hooks.connect_always`) is authenticated by the backend's connect hook
//! instead, which may also name channels to subscribe it to.

use super::Session;
use crate::auth::{AuthError, Identity};
use crate::metrics::{AuthKind, RefuseReason, metrics};
use herald_proto::{CloseCode, Command, ErrorCode, Reply, ResumedChannels};
use std::sync::atomic::Ordering;
use tracing::Instrument;

impl Session {
    pub(super) async fn connect(&mut self, cmd: &Command<'_>) {
        let id = cmd.id;
        let span = tracing::info_span!(
            "connect",
            session = %self.session,
            user = tracing::field::Empty,
            resume = cmd.resume.is_some()
        );
        let token = cmd.token.as_deref();
        let hooked = self
            .ctx
            .hooks
            .as_ref()
            .is_some_and(|h| h.connect_applies(token.is_some(), self.ctx.auth.is_some()));
        let channels = if hooked {
            match self.connect_hook(id, token).instrument(span.clone()).await {
                Some(channels) => channels,
                None => return,
            }
        } else {
            if !span.in_scope(|| self.authenticate(id, token)) {
                return;
            }
            Vec::new()
        };
        span.record("user", self.identity.user.as_str());
        self.shared.connected.store(true, Ordering::Release);
        match cmd.resume.as_deref() {
            Some(t) => {
                self.resume(id, t, cmd.positions.as_ref())
                    .instrument(span.clone())
                    .await
            }
            None => self.reply_connected(id, None, None),
        }
        if !channels.is_empty() {
            self.subscribe_granted(channels).instrument(span).await;
        }
    }

    /// Asks the connect hook who this is. On refusal or failure answers,
    /// closes, and returns `None`; else the channels the backend wants the
    /// connection subscribed to.
    async fn connect_hook(&mut self, id: Option<u64>, token: Option<&str>) -> Option<Vec<String>> {
        let hooks = self.ctx.hooks.clone()?;
        let answer = match hooks.connect(&self.caller(), token).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(reason = %e, "connect hook refused");
                match e.connect_refusal() {
                    Some((close, code)) => {
                        self.error(id, code, &e.to_string(), None);
                        self.link.close(close);
                    }
                    // Fail closed, but tell the client to come back.
                    None => {
                        self.error(id, ErrorCode::Unavailable, &e.to_string(), None);
                        self.link
                            .close_with(CloseCode::Shutdown, "backend unavailable");
                    }
                }
                return None;
            }
        };
        if !answer.user.is_empty() {
            let Some(slot) = self.ctx.users.admit(&answer.user) else {
                self.refuse_per_user(id, &answer.user);
                return None;
            };
            self._slot = Some(slot);
        }
        self.set_identity(Identity {
            user: answer.user,
            channels: Vec::new(),
            expires: answer.expire_at,
            info: answer.info,
        });
        Some(answer.channels)
    }

    /// Subscribes to channels the backend granted at connect, each answered
    /// with a `subscribed` frame without an `id`.
    async fn subscribe_granted(&mut self, channels: Vec<String>) {
        for ch in channels {
            if herald_proto::validate_channel(&ch).is_err() {
                tracing::warn!(channel = %ch, "connect hook named an invalid channel; skipped");
                continue;
            }
            if self.subs.contains(ch.as_str()) {
                continue;
            }
            if self.subs.len() >= self.ctx.cfg.max_subscriptions {
                tracing::warn!("connect hook named more channels than max_subscriptions");
                break;
            }
            let joined = match self.ctx.node.subscribe(&ch, &self.link).await {
                Ok(j) => j,
                Err(e) => {
                    self.error(None, ErrorCode::Unavailable, &e.to_string(), Some(&ch));
                    continue;
                }
            };
            self.subs.insert(ch.as_str().into());
            // Granted like a subscribe token: a resume keeps it.
            self.granted.insert(ch.as_str().into());
            let token = self.token();
            self.reply(&Reply::Subscribed {
                id: None,
                channel: &ch,
                epoch: &joined.start.epoch,
                offset: joined.start.offset,
                recovered: None,
                reconnect_token: token.as_deref(),
            });
            joined.release(Vec::new());
        }
    }

    /// Refuses a user at the per-node connection limit, and closes.
    fn refuse_per_user(&self, id: Option<u64>, user: &str) {
        metrics().refused(RefuseReason::PerUser);
        tracing::info!(user = %user, "user is at the per-node connection limit");
        self.error(
            id,
            ErrorCode::TooManyConnections,
            "this user already has the most connections allowed on this node",
            None,
        );
        self.link.close(CloseCode::TooManyConnections);
    }

    /// Checks the connection token (when auth is configured) and the user's
    /// connection limit. On refusal answers, closes, and returns false.
    fn authenticate(&mut self, id: Option<u64>, token: Option<&str>) -> bool {
        let Some(auth) = self.ctx.auth.clone() else {
            return true;
        };
        let m = metrics();
        let verified = match token {
            Some(t) => auth.connect(t),
            None => Err(AuthError::Missing),
        };
        let identity = match verified {
            Ok(i) => i,
            Err(e) => {
                m.auth(AuthKind::Connect, Err(e.failure()));
                tracing::debug!(reason = %e, "connect refused");
                self.error(id, ErrorCode::Unauthorized, &e.to_string(), None);
                let code = if e == AuthError::Expired {
                    CloseCode::TokenExpired
                } else {
                    CloseCode::Unauthorized
                };
                self.link.close(code);
                return false;
            }
        };
        m.auth(AuthKind::Connect, Ok(()));
        let Some(slot) = self.ctx.users.admit(&identity.user) else {
            self.refuse_per_user(id, &identity.user);
            return false;
        };
        self._slot = Some(slot);
        self.set_identity(identity);
        true
    }

    /// Adopts a verified identity; its `exp` becomes the connection's expiry.
    pub(super) fn set_identity(&mut self, identity: Identity) {
        self.shared
            .expires_at
            .store(identity.expires.unwrap_or(0), Ordering::Release);
        self.identity = identity;
    }

    pub(super) fn reply_connected(
        &self,
        id: Option<u64>,
        resumed: Option<bool>,
        channels: Option<&ResumedChannels>,
    ) {
        let token = self.token();
        let user = Some(self.identity.user.as_str()).filter(|u| !u.is_empty());
        if let Some(w) = &self.ctx.node.webhooks {
            w.user(true, &self.identity.user, &self.session);
        }
        self.reply(&Reply::Connected {
            id,
            session: &self.session,
            node: &self.ctx.node.id,
            ping_interval_ms: self.ctx.cfg.ping_interval.as_millis() as u64,
            resumed,
            channels,
            user,
            expires_at: self.identity.expires,
            reconnect_token: token.as_deref(),
        });
    }
}
