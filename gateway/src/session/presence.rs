//! `presence` and `presence_stats`, and the session's own presence entries.
//!
//! Part of the session core. A subscription in a namespace with `presence`
//! adds this session's entry through [`crate::presence::Presence`] before
//! the broker subscription (so a full channel refuses the subscribe), and
//! every way a subscription ends removes it.

use super::Session;
use crate::presence::JoinError;
use herald_proto::{ErrorCode, Reply};

impl Session {
    /// Joins `ch`'s presence when its namespace keeps one. Answers nothing:
    /// the caller turns an error into the command's refusal.
    pub(super) async fn presence_join(&mut self, ch: &str) -> Result<(), JoinError> {
        let presence = &self.ctx.presence;
        if !presence.enabled(ch) || self.present.contains_key(ch) {
            return Ok(());
        }
        let client = presence.client(&self.identity, &self.session);
        presence.join(ch, &client).await?;
        self.present.insert(ch.into(), client);
        Ok(())
    }

    /// Leaves `ch`'s presence if this session is in it.
    pub(super) async fn presence_leave(&mut self, ch: &str) {
        if let Some(client) = self.present.remove(ch) {
            self.ctx.presence.leave(ch, &client).await;
        }
    }

    /// Answers `presence` (the list) or `presence_stats` (the counts).
    pub(super) async fn presence(&self, id: Option<u64>, channel: Option<&str>, stats: bool) {
        let Some(ch) = self.channel(id, channel) else {
            return;
        };
        let presence = &self.ctx.presence;
        if !presence.enabled(ch) {
            let msg = "this channel's namespace keeps no presence (presence = true in its rules)";
            return self.error(id, ErrorCode::BadRequest, msg, Some(ch));
        }
        // Who is there is no secret only to those who may be there.
        if let Err(d) = self.ctx.rules.may_subscribe(&self.identity, ch) {
            if !self.subs.contains(ch) {
                return self.error(id, ErrorCode::Forbidden, d.message(), Some(ch));
            }
        }
        if stats {
            match presence.stats(ch).await {
                Ok((clients, users)) => self.reply(&Reply::PresenceStats {
                    id,
                    channel: ch,
                    clients,
                    users,
                }),
                Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string(), Some(ch)),
            }
        } else {
            match presence.list(ch).await {
                Ok(clients) => self.reply(&Reply::Presence {
                    id,
                    channel: ch,
                    clients: &clients,
                }),
                Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string(), Some(ch)),
            }
        }
    }
}
