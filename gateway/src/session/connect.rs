//! `connect`: authentication, the per-user limit, and the `connected` reply.
//!
//! Part of the session core. A connect with `resume` continues in
//! [`super::resume`].

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
        let entered = span.enter();
        if !self.authenticate(id, cmd.token.as_deref()) {
            return;
        }
        span.record("user", self.identity.user.as_str());
        self.shared.connected.store(true, Ordering::Release);
        drop(entered);
        match cmd.resume.as_deref() {
            Some(t) => {
                self.resume(id, t, cmd.positions.as_ref())
                    .instrument(span)
                    .await
            }
            None => self.reply_connected(id, None, None),
        }
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
            m.refused(RefuseReason::PerUser);
            tracing::info!(user = %identity.user, "user is at the per-node connection limit");
            self.error(
                id,
                ErrorCode::TooManyConnections,
                "this user already has the most connections allowed on this node",
                None,
            );
            self.link.close(CloseCode::TooManyConnections);
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
