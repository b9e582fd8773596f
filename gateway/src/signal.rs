//! Signal: a one-way flag with an async wait.
//!
//! A leaf every layer may use: the server raises one to start the drain, and
//! each session's link raises one when the session should end. Polling a
//! pending wait is one atomic load, where a `CancellationToken` takes a
//! mutex on every poll; a session writer polls its signals on every batch.

use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    notify: Notify,
}

impl Signal {
    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Completes once raised (immediately if it already was).
    pub(crate) async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Register before checking, so a raise in between is not missed.
        notified.as_mut().enable();
        if self.is_raised() {
            return;
        }
        notified.await;
    }
}
