//! Channels: namespaces, user channels and who may do what on them.
//!
//! A leaf beside `config` and `auth`. `session` asks [`Rules`] before it lets
//! a client subscribe or emit; `node` asks it for each channel's history
//! size and TTL. A channel's namespace is the part of its name before the
//! first `:` (`news:sport` → `news`); a name ending in `#ids` (`inbox#42`,
//! `dm#42,43`) is a user channel only those users may subscribe to.

use crate::auth::Identity;
use crate::config::{ChannelRuleConfig, Config, HistoryConfig, SubscribeRule};
use std::collections::HashMap;

/// The effective rule for a set of channels.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) subscribe: SubscribeRule,
    pub(crate) client_emit: bool,
    pub(crate) history: HistoryConfig,
    /// The backend's subscribe hook decides instead of `subscribe`.
    pub(crate) subscribe_hook: bool,
    /// Client emits go through the backend's publish hook.
    pub(crate) publish_hook: bool,
    /// Subscribers are listed in the channel's presence.
    pub(crate) presence: bool,
    /// Subscribers get `join`/`leave` notices.
    pub(crate) join_leave: bool,
}

/// Every channel rule of the node, resolved once at start-up.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    default: Rule,
    namespaces: HashMap<String, Rule>,
}

/// Why a client may not do something on a channel; shown to that client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// A user channel, and the client is not one of its users.
    NotYourChannel,
    /// The namespace needs a `channels` claim or subscribe token that covers it.
    NotGranted,
    /// Clients may not emit here.
    EmitDisabled,
}

impl Denied {
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::NotYourChannel => "this user channel belongs to other users",
            Self::NotGranted => {
                "subscribing needs a connection token whose \"channels\" claim covers this channel, or a subscribe token"
            }
            Self::EmitDisabled => "clients may not emit on this channel; publish through the API",
        }
    }

    /// The metric label.
    pub(crate) fn reason(self) -> crate::metrics::DenialReason {
        use crate::metrics::DenialReason;
        match self {
            Self::NotYourChannel => DenialReason::UserChannel,
            Self::NotGranted => DenialReason::NotGranted,
            Self::EmitDisabled => DenialReason::EmitDisabled,
        }
    }
}

/// The namespace of `channel`, if it has one.
pub(crate) fn namespace(channel: &str) -> Option<&str> {
    channel.split_once(':').map(|(ns, _)| ns)
}

/// The users of a user channel (`name#1,2`), or `None` for other channels.
pub(crate) fn users(channel: &str) -> Option<impl Iterator<Item = &str>> {
    let (_, ids) = channel.rsplit_once('#')?;
    Some(ids.split(',').filter(|u| !u.is_empty()))
}

/// `*` matches any run of characters (including `:`), everything else itself.
pub(crate) fn matches(pattern: &str, channel: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = channel.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Rules {
    pub(crate) fn from_config(cfg: &Config) -> Self {
        let open = cfg.open_mode();
        let base = cfg.broker.history();
        let resolve = |r: &ChannelRuleConfig| Rule {
            subscribe: r.subscribe,
            client_emit: r.client_emit.unwrap_or(open),
            history: HistoryConfig {
                size: r.history_size.unwrap_or(base.size),
                ttl: r.history_ttl.unwrap_or(base.ttl),
            },
            subscribe_hook: r.subscribe_hook,
            publish_hook: r.publish_hook,
            presence: r.presence,
            join_leave: r.presence && r.join_leave,
        };
        Self {
            default: resolve(&cfg.channels),
            namespaces: cfg
                .namespaces
                .iter()
                .map(|(n, r)| (n.clone(), resolve(r)))
                .collect(),
        }
    }

    pub(crate) fn rule(&self, channel: &str) -> &Rule {
        namespace(channel)
            .and_then(|ns| self.namespaces.get(ns))
            .unwrap_or(&self.default)
    }

    /// Whether `who` may subscribe to `channel` on the strength of its
    /// connection alone (a subscribe token can grant what this refuses).
    pub(crate) fn may_subscribe(&self, who: &Identity, channel: &str) -> Result<(), Denied> {
        if let Some(mut ids) = users(channel) {
            return if !who.user.is_empty() && ids.any(|u| u == who.user) {
                Ok(())
            } else {
                Err(Denied::NotYourChannel)
            };
        }
        match self.rule(channel).subscribe {
            SubscribeRule::Any => Ok(()),
            SubscribeRule::Claim if who.channels.iter().any(|p| matches(p, channel)) => Ok(()),
            SubscribeRule::Claim => Err(Denied::NotGranted),
        }
    }

    /// Whether `who` may emit on `channel`: the namespace must allow client
    /// emit, and the client must be able to read the channel (`subscribed`
    /// covers channels granted by a subscribe token).
    pub(crate) fn may_emit(
        &self,
        who: &Identity,
        channel: &str,
        subscribed: bool,
    ) -> Result<(), Denied> {
        if !self.rule(channel).client_emit {
            return Err(Denied::EmitDisabled);
        }
        if subscribed {
            return Ok(());
        }
        self.may_subscribe(who, channel)
    }

    pub(crate) fn history(&self, channel: &str) -> HistoryConfig {
        self.rule(channel).history
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn who(user: &str, channels: &[&str]) -> Identity {
        Identity {
            user: user.to_owned(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            expires: None,
            info: None,
        }
    }

    fn rules(toml: &str) -> Rules {
        let cfg = Config::from_toml(toml, std::path::Path::new("t.toml")).expect("valid");
        cfg.validate().expect("valid");
        Rules::from_config(&cfg)
    }

    const AUTH: &str = "[auth]\njwt_secret = \"an-hs256-secret-of-at-least-32-bytes!!\"\n";

    #[test]
    fn patterns() {
        assert!(matches("news:*", "news:sport"));
        assert!(matches("*", "anything"));
        assert!(matches("a*c*e", "abcde"));
        assert!(matches("room-*-x", "room-1-x"));
        assert!(!matches("room-*-x", "room-1-y"));
        assert!(!matches("news:sport", "news:sports"));
        assert!(matches("news:sport", "news:sport"));
        assert!(!matches("a*a", "a"));
    }

    #[test]
    fn user_channels_admit_only_their_users() {
        let r = rules(AUTH);
        assert!(r.may_subscribe(&who("42", &[]), "inbox#42").is_ok());
        assert!(r.may_subscribe(&who("43", &[]), "dm#42,43").is_ok());
        assert_eq!(
            r.may_subscribe(&who("4", &[]), "inbox#42"),
            Err(Denied::NotYourChannel)
        );
        assert_eq!(
            r.may_subscribe(&who("", &[]), "inbox#"),
            Err(Denied::NotYourChannel)
        );
        // A claim cannot open someone else's user channel.
        assert_eq!(
            r.may_subscribe(&who("4", &["*"]), "inbox#42"),
            Err(Denied::NotYourChannel)
        );
    }

    #[test]
    fn namespace_rules_and_defaults() {
        let r = rules(&format!(
            "{AUTH}[channels]\nsubscribe = \"claim\"\n[namespaces.news]\nclient_emit = true\nhistory_size = 7\nhistory_ttl = \"1m\"\n"
        ));
        assert!(r.may_subscribe(&who("1", &[]), "news:sport").is_ok());
        assert_eq!(
            r.may_subscribe(&who("1", &[]), "private:x"),
            Err(Denied::NotGranted),
            "undeclared namespaces follow [channels]"
        );
        assert!(
            r.may_subscribe(&who("1", &["private:*"]), "private:x")
                .is_ok()
        );
        assert!(r.may_emit(&who("1", &[]), "news:sport", false).is_ok());
        assert_eq!(
            r.may_emit(&who("1", &["*"]), "private:x", true),
            Err(Denied::EmitDisabled),
            "with auth, client emit is off unless enabled"
        );
        assert_eq!(r.history("news:sport").size, 7);
        assert_eq!(r.history("news:sport").ttl, Duration::from_secs(60));
        assert_eq!(r.history("other").size, 100);
        // Open mode keeps client emit on by default.
        assert!(rules("").may_emit(&who("", &[]), "chat", false).is_ok());
    }
}
