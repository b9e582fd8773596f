//! Limits: the per-connection command rate.
//!
//! Part of the session core: every command passes [`Bucket::admit`] before
//! it is decoded. The outbound queue's bounds (frames and bytes) are
//! enforced where items are queued, on the hub's `SessionLink`.

use crate::config::SessionConfig;
use tokio::time::Instant;

/// Refusals without a pause answered with `rate_limited`; later ones are dropped unanswered.
pub(crate) const QUIET_AFTER: u32 = 100;

/// Refusals without a pause after which a flooding connection is closed (4502).
pub(crate) const ABUSE_LIMIT: u32 = 1000;

/// Token bucket for client commands: `command_rate` per second, up to
/// `command_burst` saved.
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
    /// Commands refused since the client last let its bucket refill to half;
    /// persistent flooding ends the connection.
    refused: u32,
}

/// What to do with one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Yes,
    /// Over the rate: answer `rate_limited`.
    Refuse,
    /// Over the rate for a while: drop it unanswered.
    Silent,
    /// Flooding without a pause: close the connection.
    Close,
}

impl Bucket {
    pub(crate) fn new(cfg: &SessionConfig) -> Self {
        Self {
            tokens: f64::from(cfg.command_burst),
            last: Instant::now(),
            refused: 0,
        }
    }

    /// Takes one command token at `now`.
    pub(crate) fn admit(&mut self, cfg: &SessionConfig, now: Instant) -> Admit {
        let refill = now.duration_since(self.last).as_secs_f64() * f64::from(cfg.command_rate);
        self.tokens = (self.tokens + refill).min(f64::from(cfg.command_burst));
        self.last = now;
        if self.tokens >= 1.0 {
            // Only a client that slowed down enough to refill half its burst
            // is forgiven: a sustained flood, admitted a trickle at a time,
            // keeps counting towards the close.
            if self.tokens >= f64::from(cfg.command_burst) / 2.0 {
                self.refused = 0;
            }
            self.tokens -= 1.0;
            return Admit::Yes;
        }
        self.refused += 1;
        if self.refused >= ABUSE_LIMIT {
            Admit::Close
        } else if self.refused > QUIET_AFTER {
            Admit::Silent
        } else {
            Admit::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(rate: u32, burst: u32) -> SessionConfig {
        SessionConfig {
            command_rate: rate,
            command_burst: burst,
            ..SessionConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate_then_refusals_escalate() {
        let cfg = cfg(10, 20);
        let mut b = Bucket::new(&cfg);
        let now = Instant::now();
        for _ in 0..20 {
            assert_eq!(b.admit(&cfg, now), Admit::Yes);
        }
        assert_eq!(b.admit(&cfg, now), Admit::Refuse);
        // A tenth of a second refills one token at 10/s.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::Yes);
        let now = Instant::now();
        let got: Vec<Admit> = (0..ABUSE_LIMIT).map(|_| b.admit(&cfg, now)).collect();
        assert!(
            got[..QUIET_AFTER as usize - 1]
                .iter()
                .all(|a| *a == Admit::Refuse)
        );
        assert_eq!(got[QUIET_AFTER as usize], Admit::Silent);
        assert_eq!(got.last(), Some(&Admit::Close));
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_real_pause_forgives_refusals() {
        let cfg = cfg(10, 20);
        let mut b = Bucket::new(&cfg);
        for _ in 0..20 + 50 {
            b.admit(&cfg, Instant::now());
        }
        // A trickle (one token's worth) is admitted but does not reset the count.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::Yes);
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::Refuse);
        assert_eq!(b.refused, 51);
        // Refilling half the burst (1 s at 10/s) does.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit(&cfg, Instant::now()), Admit::Yes);
        assert_eq!(b.refused, 0);
    }
}
