//! Timers: the session rules that run on time rather than on commands.
//!
//! Part of the session core, polled by the transport's writer (the task
//! that is awake whenever anything must be sent). One sleep serves every
//! deadline: a socket that never sends `connect` is closed with 4502 after
//! `connect_timeout`; a ping left unanswered for `pong_timeout` closes with
//! 4002; a connection token closes the session with 4003 at `exp` plus the
//! auth leeway unless `refresh` moved it; a drain tells the client to
//! reconnect (4000) at a random moment in the first 80% of the drain window.
//! Pings come every `ping_interval`, each preceded by a fresh reconnect
//! token once the last one is half way through its life.

use super::{SessionCtx, Shared};
use crate::clock::now_secs;
use crate::hub::SessionLink;
use herald_proto::CloseCode;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep, sleep_until};

/// The session's deadlines and ping clock.
pub(crate) struct Timers {
    ctx: Arc<SessionCtx>,
    shared: Arc<Shared>,
    link: Arc<SessionLink>,
    /// Until the client has connected.
    connect_deadline: Option<Instant>,
    pong_deadline: Option<Instant>,
    drain_at: Option<Instant>,
    draining: bool,
    /// Connection token expiry, and the `exp` it was computed from.
    expiry: Option<Instant>,
    exp_seen: u64,
    leeway: Duration,
    /// One sleep for all deadlines and the next ping, reset only when the
    /// earliest one moves (one timer per session, not two).
    sleep: Pin<Box<Sleep>>,
    sleep_at: Option<Instant>,
    /// When the next ping is due, once connected.
    next_ping: Instant,
}

/// Time to ping the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PingDue {
    /// A fresh reconnect token to push before the ping, when one is due.
    pub(crate) token: Option<String>,
}

impl Timers {
    pub(crate) fn new(ctx: Arc<SessionCtx>, shared: Arc<Shared>, link: Arc<SessionLink>) -> Self {
        let now = Instant::now();
        let connect_deadline = now + ctx.cfg.connect_timeout;
        let next_ping = now + ctx.cfg.ping_interval;
        let leeway = ctx.auth.as_ref().map(|a| a.leeway()).unwrap_or_default();
        Self {
            ctx,
            shared,
            link,
            connect_deadline: Some(connect_deadline),
            pong_deadline: None,
            drain_at: None,
            draining: false,
            expiry: None,
            exp_seen: 0,
            leeway,
            sleep: Box::pin(sleep_until(connect_deadline)),
            sleep_at: Some(connect_deadline),
            next_ping,
        }
    }

    /// Starts the drain: the client will be told to reconnect at a random
    /// moment within 80% of the drain window, spreading the reconnects.
    pub(crate) fn drain(&mut self) {
        if !self.draining {
            self.draining = true;
            let window = self.ctx.drain.mul_f64(0.8);
            self.drain_at = Some(Instant::now() + window.mul_f64(fastrand::f64()));
        }
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining
    }

    /// Completes when a ping is due; deadlines passing meanwhile close the
    /// link. Cancel-safe: all state lives in `self`.
    pub(crate) fn ping_due(&mut self) -> impl Future<Output = PingDue> + '_ {
        std::future::poll_fn(move |cx| self.poll_ping(cx))
    }

    fn poll_ping(&mut self, cx: &mut Context<'_>) -> Poll<PingDue> {
        let connected = self.shared.is_connected();
        if connected {
            self.connect_deadline = None;
        }
        loop {
            let exp = self.shared.expires_at.load(Ordering::Acquire);
            if exp != self.exp_seen {
                self.exp_seen = exp;
                let left = Duration::from_secs(exp.saturating_sub(now_secs()));
                self.expiry = (exp > 0).then(|| Instant::now() + left + self.leeway);
            }
            let next = [
                self.connect_deadline,
                self.pong_deadline,
                self.drain_at,
                self.expiry,
                connected.then_some(self.next_ping),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(at) = next else { break };
            if self.sleep_at != Some(at) {
                self.sleep.as_mut().reset(at);
                self.sleep_at = Some(at);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            let now = Instant::now();
            self.fire(now);
            if connected && self.next_ping <= now {
                // Counted from now: a late ping does not bring the next closer.
                self.next_ping = now + self.ctx.cfg.ping_interval;
                if self.pong_deadline.is_none() {
                    self.shared.pong_seen.store(false, Ordering::Release);
                    self.pong_deadline = Some(now + self.ctx.cfg.pong_timeout);
                }
                return Poll::Ready(PingDue {
                    token: self.fresh_token(),
                });
            }
        }
        Poll::Pending
    }

    /// Acts on every deadline at or before `now`, and forgets it.
    fn fire(&mut self, now: Instant) {
        let due = |d: &mut Option<Instant>| d.take_if(|d| *d <= now).is_some();
        if due(&mut self.connect_deadline) {
            crate::metrics::metrics().timeout(crate::metrics::TimeoutStage::Connect);
            self.link.close_with(
                CloseCode::ProtocolError,
                "no connect frame within connect_timeout",
            );
        }
        if due(&mut self.pong_deadline) && !self.shared.pong_seen.load(Ordering::Acquire) {
            self.link.close(CloseCode::PingTimeout);
        }
        if due(&mut self.drain_at) {
            self.link.close(CloseCode::Shutdown);
        }
        // Unless a `refresh` moved it meanwhile (then it is recomputed).
        if due(&mut self.expiry) && self.shared.expires_at.load(Ordering::Acquire) == self.exp_seen
        {
            self.link.close(CloseCode::TokenExpired);
        }
    }

    /// A fresh reconnect token once half the last one's life is gone, so a
    /// long quiet connection can still resume.
    fn fresh_token(&self) -> Option<String> {
        let mut slot = self.shared.token.lock().unwrap_or_else(|e| e.into_inner());
        let (claims, issued) = slot.as_mut()?;
        if issued.elapsed() < self.ctx.cfg.reconnect_ttl / 2 {
            return None;
        }
        let (sid, uid, channels, granted) = claims;
        let token = self
            .ctx
            .tokens
            .issue(sid, uid, channels.iter().cloned(), granted.clone())?;
        *issued = Instant::now();
        Some(token)
    }
}
