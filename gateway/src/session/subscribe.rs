//! `subscribe` (with recovery from `since`) and `unsubscribe`.
//!
//! Part of the session core. Subscribing joins the channel *held* through
//! `node`, reads what the client missed from history (all or nothing, see
//! `recovery`), queues the `subscribed` reply, then releases the join: the
//! replay, then what arrived meanwhile, then live publications. In
//! namespaces with `subscribe_hook`, the backend's subscribe hook decides
//! who may subscribe.

use super::Session;
use crate::broker::Position;
use crate::hooks::HookError;
use crate::metrics::{AuthKind, DenialAction, DenialReason, metrics};
use crate::publication::Publication;
use crate::recovery::{self, Refusal};
use herald_proto::{Command, ErrorCode, Reply, Since};
use std::sync::Arc;

impl Session {
    pub(super) async fn subscribe(&mut self, cmd: &Command<'_>) {
        let id = cmd.id;
        let Some(ch) = self.channel(id, cmd.channel.as_deref()) else {
            return;
        };
        // In a namespace with `subscribe_hook`, the backend decides instead
        // of the rules; what it allows is kept like a subscribe token's grant.
        let hooked = self.ctx.rules.rule(ch).subscribe_hook;
        let by_token = match hooked {
            true => true,
            false => match self.may_subscribe(ch, cmd.token.as_deref()) {
                Ok(by_token) => by_token,
                Err(msg) => return self.error(id, ErrorCode::Forbidden, &msg, Some(ch)),
            },
        };
        let already = self.subs.contains(ch);
        if !already && self.subs.len() >= self.ctx.cfg.max_subscriptions {
            let msg = format!(
                "this connection already has {} subscriptions, the limit",
                self.subs.len()
            );
            return self.error(id, ErrorCode::TooManySubscriptions, &msg, Some(ch));
        }
        if hooked && !already {
            let allowed = match self.ctx.hooks.clone() {
                Some(h) => h.subscribe(&self.caller(), ch, cmd.data).await,
                None => Err(HookError::Unreachable),
            };
            if let Err(e) = allowed {
                let code = e.error_code(ErrorCode::Forbidden);
                return self.error(id, code, &e.to_string(), Some(ch));
            }
        }
        match self.presence_join(ch).await {
            Ok(()) => {}
            Err(e @ crate::presence::JoinError::Full(_)) => {
                return self.error(
                    id,
                    ErrorCode::TooManySubscriptions,
                    &e.to_string(),
                    Some(ch),
                );
            }
            Err(e) => return self.error(id, ErrorCode::Unavailable, &e.to_string(), Some(ch)),
        }
        let joined = match self.ctx.node.subscribe(ch, &self.link).await {
            Ok(j) => j,
            Err(e) => {
                if !already {
                    self.presence_leave(ch).await;
                }
                return self.error(id, ErrorCode::Unavailable, &e.to_string(), Some(ch));
            }
        };
        self.subs.insert(ch.into());
        if by_token {
            self.granted.insert(ch.into());
        }
        // Recovery only makes sense for a new subscription: a live one has
        // already been given everything since it started.
        let since = cmd.since.as_ref().filter(|_| !already);
        let (recovered, replay) = match since {
            None => (None, Vec::new()),
            Some(s) => {
                let outcome = self.recover(ch, s, &joined.start).await;
                metrics().recovery(outcome.as_ref().map(Vec::len).map_err(|r| *r));
                (Some(outcome.is_ok()), outcome.unwrap_or_default())
            }
        };
        let token = self.token();
        self.reply(&Reply::Subscribed {
            id,
            channel: ch,
            epoch: &joined.start.epoch,
            offset: joined.start.offset,
            recovered,
            reconnect_token: token.as_deref(),
        });
        joined.release(replay);
    }

    /// Channel rules first; a subscribe token can grant what they refuse.
    /// Ok(true) when only the subscribe token allowed it.
    fn may_subscribe(&self, ch: &str, token: Option<&str>) -> Result<bool, String> {
        let denied = match self.ctx.rules.may_subscribe(&self.identity, ch) {
            Ok(()) => return Ok(false),
            Err(d) => d,
        };
        let m = metrics();
        let (Some(token), Some(auth)) = (token, self.ctx.auth.as_deref()) else {
            m.denial(DenialAction::Subscribe, denied.reason());
            return Err(denied.message().to_owned());
        };
        match auth.subscribe(token, &self.identity.user, ch) {
            Ok(()) => {
                m.auth(AuthKind::Subscribe, Ok(()));
                Ok(true)
            }
            Err(e) => {
                m.auth(AuthKind::Subscribe, Err(e.failure()));
                m.denial(DenialAction::Subscribe, DenialReason::BadToken);
                Err(format!("subscribe token refused: {e}"))
            }
        }
    }

    /// The publications a client at `since` missed before `start`, all or none.
    pub(super) async fn recover(
        &self,
        ch: &str,
        since: &Since<'_>,
        start: &Position,
    ) -> Result<Vec<Arc<Publication>>, Refusal> {
        let need = recovery::missed(&since.epoch, since.offset, start, self.ctx.cfg.recovery_max)?;
        if need == 0 {
            return Ok(Vec::new());
        }
        let history = self
            .ctx
            .node
            .history(ch, since.offset, need as usize)
            .await
            .map_err(|_| Refusal::Unavailable)?;
        recovery::plan(since.offset, start, history)
    }

    pub(super) async fn unsubscribe(&mut self, id: Option<u64>, channel: Option<&str>) {
        let Some(ch) = self.channel(id, channel) else {
            return;
        };
        self.granted.remove(ch);
        if self.subs.remove(ch) {
            self.ctx.node.unsubscribe(ch, self.link.id).await;
            self.presence_leave(ch).await;
        }
        let token = self.token();
        self.reply(&Reply::Unsubscribed {
            id,
            channel: ch,
            reconnect_token: token.as_deref(),
        });
    }
}
