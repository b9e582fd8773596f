//! `refresh`: a new connection token for the same user extends the connection.
//!
//! Part of the session core; the expiry itself is enforced by [`super::timers`].

use super::Session;
use crate::auth::AuthError;
use crate::metrics::{AuthKind, metrics};
use herald_proto::{ErrorCode, Reply};

impl Session {
    pub(super) fn refresh(&mut self, id: Option<u64>, token: Option<&str>) {
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
