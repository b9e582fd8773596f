//! `refresh`: a new connection token for the same user extends the connection.
//!
//! Part of the session core; the expiry itself is enforced by [`super::timers`].
//! A `refresh` without a token (or on a node without JWTs) asks the
//! backend's refresh hook for the new expiry, when one is configured.

use super::Session;
use crate::auth::AuthError;
use crate::metrics::{AuthKind, metrics};
use herald_proto::{ErrorCode, Reply};
use std::sync::atomic::Ordering;
use tracing::Instrument;

impl Session {
    pub(super) async fn refresh(&mut self, id: Option<u64>, token: Option<&str>) {
        if let Some(hooks) = self.ctx.hooks.clone().filter(|h| h.refreshes()) {
            if token.is_none() || self.ctx.auth.is_none() {
                let span = tracing::info_span!("refresh", session = %self.session);
                let answer = hooks.refresh(&self.caller()).instrument(span).await;
                return match answer {
                    Ok(a) => {
                        self.shared.expires_at.store(a.expire_at, Ordering::Release);
                        self.identity.expires = Some(a.expire_at);
                        self.reply(&Reply::Refreshed {
                            id,
                            expires_at: a.expire_at,
                        });
                    }
                    Err(e) => {
                        // The connection keeps its current expiry.
                        let code = e.error_code(ErrorCode::Unauthorized);
                        self.error(id, code, &e.to_string(), None);
                    }
                };
            }
        }
        let Some(auth) = self.ctx.auth.clone() else {
            return self.error(
                id,
                ErrorCode::BadRequest,
                "authentication is not configured; nothing to refresh",
                None,
            );
        };
        let Some(token) = token else {
            return self.error(id, ErrorCode::BadRequest, "missing \"token\"", None);
        };
        let m = metrics();
        let identity = auth.connect(token).and_then(|i| {
            if i.user == self.identity.user {
                Ok(i)
            } else {
                Err(AuthError::WrongUser)
            }
        });
        match identity {
            Ok(i) => {
                m.auth(AuthKind::Refresh, Ok(()));
                let expires_at = i.expires.unwrap_or(0);
                self.set_identity(i);
                self.reply(&Reply::Refreshed { id, expires_at });
            }
            Err(e) => {
                // The connection keeps its current token until that expires.
                m.auth(AuthKind::Refresh, Err(e.failure()));
                self.error(id, ErrorCode::Unauthorized, &e.to_string(), None);
            }
        }
    }
}
