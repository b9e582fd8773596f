//! `connect` with `resume`: a reconnect token brings its session back.
//!
//! Part of the session core. The token's channels are subscribed again
//! (rules re-applied with the new connection token; only subscribe-token
//! grants are taken on trust), each recovered from the client's position
//! when one is given. The `connected` reply comes first, then every
//! channel's missed publications, then live ones.

use super::Session;
use crate::clock::now_secs;
use crate::metrics::{DenialAction, metrics};
use crate::recovery::Refusal;
use herald_proto::{ErrorBody, ErrorCode, ResumedChannel, ResumedChannels, Since};
use std::borrow::Cow;
use std::collections::HashMap;

impl Session {
    pub(super) async fn resume(
        &mut self,
        id: Option<u64>,
        token: &str,
        positions: Option<&HashMap<Cow<'_, str>, Since<'_>>>,
    ) {
        let m = metrics();
        let verified = self
            .ctx
            .tokens
            .verify(token, now_secs())
            .map_err(|e| (Some(e), e.to_string()))
            .and_then(|c| {
                // A reconnect token only resumes its own user's session.
                if c.uid == self.identity.user {
                    Ok(c)
                } else {
                    Err((None, "token belongs to another user".to_owned()))
                }
            });
        let claims = match verified {
            Ok(c) => c,
            Err((why, e)) => {
                // The reason is logged and counted, never told to the client.
                m.resume(Err(why));
                tracing::info!(reason = %e, "resume refused");
                return self.reply_connected(id, Some(false), None);
            }
        };
        self.session = claims.sid;
        let mut channels = ResumedChannels::new();
        let mut releases = Vec::new();
        let refused = |code, message: String| ResumedChannel::Refused {
            error: ErrorBody { code, message },
        };
        for ch in claims.ch.into_iter().take(self.ctx.cfg.max_subscriptions) {
            if herald_proto::validate_channel(&ch).is_err() {
                continue;
            }
            let by_token = claims.gr.contains(&ch);
            if let Err(d) = self.ctx.rules.may_subscribe(&self.identity, &ch) {
                if !by_token {
                    m.denial(DenialAction::Resume, d.reason());
                    channels.insert(ch, refused(ErrorCode::Forbidden, d.message().to_owned()));
                    continue;
                }
            }
            if let Err(e) = self.presence_join(&ch).await {
                channels.insert(ch, refused(ErrorCode::Unavailable, e.to_string()));
                continue;
            }
            let joined = match self.ctx.node.subscribe(&ch, &self.link).await {
                Ok(j) => j,
                Err(e) => {
                    self.presence_leave(&ch).await;
                    channels.insert(ch, refused(ErrorCode::Unavailable, e.to_string()));
                    continue;
                }
            };
            self.subs.insert(ch.as_str().into());
            if by_token {
                self.granted.insert(ch.as_str().into());
            }
            let replay = match positions.and_then(|p| p.get(ch.as_str())) {
                Some(s) => self.recover(&ch, s, &joined.start).await,
                None => Err(Refusal::NoPosition),
            };
            m.recovery(replay.as_ref().map(Vec::len).map_err(|r| *r));
            let restored = ResumedChannel::Restored {
                epoch: joined.start.epoch.to_string(),
                offset: joined.start.offset,
                recovered: replay.is_ok(),
            };
            channels.insert(ch, restored);
            releases.push((joined, replay.unwrap_or_default()));
        }
        m.resume(Ok(()));
        self.reply_connected(id, Some(true), Some(&channels));
        for (joined, replay) in releases {
            joined.release(replay);
        }
    }
}
