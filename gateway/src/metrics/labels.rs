//! Metric labels: every label value is a variant of an enum that can list
//! all its values, so the pre-creation in `Metrics::preinit` loops over
//! them and no code path can record a value that is not pre-created (the
//! recording methods take these enums, never strings).

/// A metric label value.
pub(crate) trait Label: Copy + 'static {
    /// Every value a code path can record.
    fn all() -> Vec<Self>;
    /// The label text.
    fn label(self) -> &'static str;
}

/// Declares a unit enum whose variants are label values: its `Label` impl
/// (`all` and `label`) comes from the same list as the variants.
macro_rules! labels {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal,)+ }) => {
        $(#[$m])*
        $vis enum $name {
            $($(#[$vm])* $var,)+
        }

        impl $crate::metrics::Label for $name {
            fn all() -> Vec<Self> {
                vec![$(Self::$var),+]
            }

            fn label(self) -> &'static str {
                match self {
                    $(Self::$var => $s,)+
                }
            }
        }
    };
}
pub(crate) use labels;

use herald_proto::{CloseCode, ErrorCode};

impl Label for CloseCode {
    fn all() -> Vec<Self> {
        Self::ALL.to_vec()
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

impl Label for ErrorCode {
    fn all() -> Vec<Self> {
        Self::ALL.to_vec()
    }
    fn label(self) -> &'static str {
        self.as_str()
    }
}

labels! {
    /// What the node asked of the broker when it failed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum BrokerOp {
        Publish => "publish",
        Subscribe => "subscribe",
        Unsubscribe => "unsubscribe",
        History => "history",
        /// The pub/sub connection failed or was lost.
        Pubsub => "pubsub",
        /// (Re)connecting the pub/sub connection failed.
        Connect => "connect",
        /// A pub/sub message that is not a Herald publication.
        Decode => "decode",
        /// Refreshing the TTL of subscribed channels' state.
        Refresh => "refresh",
        /// Presence: entries, notices, heartbeats.
        Presence => "presence",
        /// Webhooks' cluster-wide channel occupancy.
        Occupancy => "occupancy",
    }
}

labels! {
    /// Redis commands and scripts the node runs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum RedisCommand {
        Publish => "publish",
        History => "history",
        Position => "position",
        Ping => "ping",
        Expire => "expire",
        EpochBump => "epoch_bump",
        Subscribe => "subscribe",
        Forget => "forget",
        Presence => "presence",
        Heartbeat => "heartbeat",
        Occupancy => "occupancy",
    }
}

impl RedisCommand {
    /// Lua scripts are timed in `herald_redis_script_duration_seconds`.
    pub(crate) fn is_script(self) -> bool {
        matches!(
            self,
            Self::Publish | Self::History | Self::Position | Self::EpochBump
        )
    }

    /// Slot of the hot (pre-resolved) children, for the per-publication scripts.
    pub(crate) fn hot_slot(self) -> Option<usize> {
        match self {
            Self::Publish => Some(0),
            Self::History => Some(1),
            Self::Position => Some(2),
            Self::Ping
            | Self::Expire
            | Self::EpochBump
            | Self::Subscribe
            | Self::Forget
            | Self::Presence
            | Self::Heartbeat
            | Self::Occupancy => None,
        }
    }
}

labels! {
    /// How a Redis round trip ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum RedisResult {
        Ok => "ok",
        Error => "error",
        Timeout => "timeout",
    }
}

labels! {
    /// Why a channel's local subscribers were closed with 4004.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum ResetReason {
        Gap => "gap",
        EpochChanged => "epoch_changed",
        MissedWhileDisconnected => "missed_while_disconnected",
        OffsetRegressed => "offset_regressed",
    }
}

labels! {
    /// Why a publication was not delivered to a subscriber.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum DropReason {
        SlowConsumer => "slow_consumer",
        Duplicate => "duplicate",
        NoSubscribers => "no_subscribers",
    }
}

labels! {
    /// Why a connection was refused before or at `connect`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum RefuseReason {
        MaxConnections => "max_connections",
        Origin => "origin",
        Draining => "draining",
        PerUser => "per_user",
        NotWebsocket => "not_websocket",
        /// The client address is at `max_connections_per_ip`.
        PerIp => "per_ip",
        /// The client address opens connections faster than `connection_rate_per_ip`.
        PerIpRate => "per_ip_rate",
        /// The process is near its file-descriptor limit (`fd_reserve`).
        FdReserve => "fd_reserve",
        /// A PROXY protocol header was expected and is missing, malformed,
        /// or came from a peer that is not a trusted proxy.
        ProxyHeader => "proxy_header",
    }
}

labels! {
    /// Where a connection was when it ran out of time.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum TimeoutStage {
        /// Before its PROXY protocol header was complete.
        ProxyHeader => "proxy_header",
        /// Before its first HTTP request head was complete.
        RequestHead => "request_head",
        /// Idle (or slow) between keep-alive requests.
        KeepAlive => "keepalive",
        /// A WebSocket that never sent `connect` (`connect_timeout`).
        Connect => "connect",
    }
}

labels! {
    /// Why `accept` failed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum AcceptError {
        /// The process or system is out of file descriptors.
        FdLimit => "fd_limit",
        Other => "other",
    }
}

labels! {
    /// Which token was checked.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum AuthKind {
        Connect => "connect",
        Subscribe => "subscribe",
        Refresh => "refresh",
    }
}

labels! {
    /// Why a token was refused (see `AuthError`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum AuthFailure {
        Missing => "missing",
        Malformed => "malformed",
        WrongAlgorithm => "wrong_algorithm",
        BadSignature => "bad_signature",
        UnknownKey => "unknown_key",
        Expired => "expired",
        NotYetValid => "not_yet_valid",
        WrongIssuer => "wrong_issuer",
        WrongAudience => "wrong_audience",
        MissingClaim => "missing_claim",
        WrongClaims => "wrong_claims",
        NotConfigured => "not_configured",
    }
}

labels! {
    /// What a channel rule refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum DenialAction {
        Subscribe => "subscribe",
        Emit => "emit",
        Resume => "resume",
    }
}

labels! {
    /// Why a channel rule refused it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum DenialReason {
        UserChannel => "user_channel",
        NotGranted => "not_granted",
        EmitDisabled => "emit_disabled",
        /// A subscribe token was presented and refused.
        BadToken => "bad_token",
    }
}

labels! {
    /// HTTP API routes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum ApiRoute {
        Publish => "publish",
        Broadcast => "broadcast",
        Presence => "presence",
    }
}

labels! {
    /// HTTP API answers (the statuses the API gives; anything else is `other`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum ApiStatus {
        Ok => "200",
        BadRequest => "400",
        Unauthorized => "401",
        PayloadTooLarge => "413",
        Unavailable => "503",
        Other => "other",
    }
}

impl ApiStatus {
    pub(crate) fn of(status: u16) -> Self {
        match status {
            200 => Self::Ok,
            400 => Self::BadRequest,
            401 => Self::Unauthorized,
            413 => Self::PayloadTooLarge,
            503 => Self::Unavailable,
            _ => Self::Other,
        }
    }
}

labels! {
    /// Whether a JWKS reload took.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Reload {
        Ok => "ok",
        Failed => "failed",
    }
}

labels! {
    /// How a session ended when the server did not close it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Ended {
        /// The client sent a close frame.
        Client => "client",
        /// The socket failed or went away.
        Gone => "gone",
    }
}

labels! {
    /// Who published.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Source {
        Api => "api",
        Client => "client",
    }
}

labels! {
    /// A Socket.IO long-polling request: a handshake, a GET or a POST.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum PollMethod {
        Open => "open",
        Get => "get",
        Post => "post",
    }
}

labels! {
    /// How a long-polling request ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum PollOutcome {
        Ok => "ok",
        /// No such session on this node (Engine.IO code 1).
        UnknownSid => "unknown_sid",
        /// A second GET (or POST) while one was in flight: the session closes.
        Overlap => "overlap",
        /// An unreadable payload: the session closes.
        BadRequest => "bad_request",
        /// A POST body over the cap (413): the session closes.
        TooLarge => "too_large",
        /// A handshake refused (drain, origin, max_connections).
        Refused => "refused",
    }
}

labels! {
    /// Whether an Engine.IO upgrade from polling to WebSocket completed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum UpgradeOutcome {
        Ok => "ok",
        Failed => "failed",
    }
}

labels! {
    /// The protocol a connection speaks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Protocol {
        /// Herald protocol v1 (`/ws`).
        Herald => "herald",
        /// Socket.IO over Engine.IO (`/socket.io/`), polling or WebSocket.
        Socketio => "socketio",
        /// Server-Sent Events (`/sse`).
        Sse => "sse",
    }
}

labels! {
    /// Which proxy hook was called.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Hook {
        Connect => "connect",
        Subscribe => "subscribe",
        Publish => "publish",
        Refresh => "refresh",
    }
}

impl Hook {
    /// The hook's name, for logs.
    pub(crate) fn name(self) -> &'static str {
        self.label()
    }
}

labels! {
    /// How a proxy hook call ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum HookOutcome {
        /// The backend allowed the command as sent.
        Allow => "allow",
        /// The backend refused.
        Deny => "deny",
        /// The backend allowed a publication with other data or event.
        Rewrite => "rewrite",
        /// No answer within `hooks.timeout`.
        Timeout => "timeout",
        /// Unreachable, a non-2xx status or an answer that does not decode.
        Error => "error",
    }
}

labels! {
    /// What became of one webhook POST.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum WebhookOutcome {
        /// The backend answered 2xx.
        Delivered => "delivered",
        /// Failed (timeout, error, non-2xx); tried again later.
        Retried => "retried",
        /// Failed on the last attempt: the event is lost.
        Failed => "failed",
        /// The queue was full: never sent.
        Dropped => "dropped",
    }
}
