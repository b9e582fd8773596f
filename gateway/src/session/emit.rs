//! `emit`: a client publishes to a channel, through `node` like the API.
//!
//! Part of the session core: checks the channel rules, the event name, the
//! payload's size and nesting, asks the backend's publish hook in
//! namespaces with `publish_hook` (it may refuse, or rewrite the event and
//! data), then answers with the assigned position.

use super::Session;
use crate::hooks::HookError;
use crate::node::Source;
use herald_proto::{Command, ErrorCode, Reply, validate_event};
use serde_json::value::RawValue;
use std::borrow::Cow;

impl Session {
    pub(super) async fn emit(&mut self, cmd: &Command<'_>) {
        let id = cmd.id;
        let Some(ch) = self.channel(id, cmd.channel.as_deref()) else {
            return;
        };
        let subscribed = self.subs.contains(ch);
        if let Err(d) = self.ctx.rules.may_emit(&self.identity, ch, subscribed) {
            crate::metrics::metrics().denial(crate::metrics::DenialAction::Emit, d.reason());
            return self.error(id, ErrorCode::Forbidden, d.message(), Some(ch));
        }
        let Some(event) = cmd.event.as_deref() else {
            return self.error(id, ErrorCode::BadRequest, "missing \"event\"", Some(ch));
        };
        if let Err(e) = validate_event(event) {
            return self.error(id, ErrorCode::BadRequest, &e, Some(ch));
        }
        let data = cmd.data.unwrap_or(RawValue::NULL);
        let max = self.ctx.cfg.max_payload;
        if data.get().len() > max {
            let msg = format!("\"data\" is {} bytes, the limit is {max}", data.get().len());
            return self.error(id, ErrorCode::PayloadTooLarge, &msg, Some(ch));
        }
        if let Err(e) = herald_proto::validate_data_depth(data.get()) {
            return self.error(id, ErrorCode::BadRequest, &e, Some(ch));
        }
        let mut rewritten = None;
        let event = if self.ctx.rules.rule(ch).publish_hook {
            let answer = match self.ctx.hooks.clone() {
                Some(h) => h.publish(&self.caller(), ch, event, data).await,
                None => Err(HookError::Unreachable),
            };
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    let code = e.error_code(ErrorCode::Forbidden);
                    return self.error(id, code, &e.to_string(), Some(ch));
                }
            };
            rewritten = answer.data;
            answer.event.map_or(Cow::Borrowed(event), Cow::Owned)
        } else {
            Cow::Borrowed(event)
        };
        let data = rewritten.as_deref().unwrap_or(data);
        match self
            .ctx
            .node
            .publish(ch, &event, data, Source::Client)
            .await
        {
            Ok(pos) => self.reply(&Reply::Emitted {
                id,
                channel: ch,
                epoch: &pos.epoch,
                offset: pos.offset,
            }),
            Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string(), Some(ch)),
        }
    }
}
