//! Outbox: one session's outbound queue, from the hub to its writer.
//!
//! Sits between `hub` (which pushes through [`crate::hub::SessionLink`],
//! many producers) and the transport's writer (the one consumer, an
//! [`Outbox`]). A mutex-guarded deque rather than `tokio::sync::mpsc`:
//! a push is one uncontended lock, and the writer takes everything queued
//! in one swap per wake. Profiled in fan-out, mpsc's semaphore and block
//! list cost about 7% of a node's CPU, and its first block and channel
//! state about 1.1 KiB per idle session; this costs one small deque.
//!
//! Bounded in items here; the link bounds it in bytes as well.

use crate::publication::Outbound;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// The shared half, held by the session's link.
pub(crate) struct Queue {
    inner: Mutex<Inner>,
    /// Items; the byte bound is the link's.
    cap: usize,
}

struct Inner {
    items: VecDeque<Outbound>,
    /// The writer waiting for items, if it is.
    waker: Option<Waker>,
    /// The writer is gone: nothing more is accepted.
    closed: bool,
}

/// Why an item was not queued (it is dropped).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue holds `cap` items: the session is not keeping up.
    Full,
    /// Nobody reads this queue any more.
    Closed,
}

impl Queue {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                waker: None,
                closed: false,
            }),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends an item and wakes the writer if it waits.
    pub(crate) fn push(&self, item: Outbound) -> Result<(), Refused> {
        let mut q = self.lock();
        if q.closed {
            return Err(Refused::Closed);
        }
        if q.items.len() >= self.cap {
            return Err(Refused::Full);
        }
        q.items.push_back(item);
        let waker = q.waker.take();
        drop(q);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Wakes the writer without an item: something it checks by flag
    /// (its session closing, a pong to send) changed.
    pub(crate) fn wake(&self) {
        let waker = self.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The consuming half: the session's writer. Dropping it closes the queue
/// and frees what is still in it.
pub(crate) struct Outbox {
    queue: Arc<dyn AsRef<Queue> + Send + Sync>,
    /// Items already taken from the queue, in order. Swapped with the
    /// queue's deque when empty, so a batch costs one lock.
    local: VecDeque<Outbound>,
}

impl Outbox {
    /// The consumer of the queue `owner` holds (the session's link).
    pub(crate) fn new(owner: Arc<dyn AsRef<Queue> + Send + Sync>) -> Self {
        Self {
            queue: owner,
            local: VecDeque::new(),
        }
    }

    fn queue(&self) -> &Queue {
        (*self.queue).as_ref()
    }

    /// Moves the queue's items here if none are left here; registers
    /// `waker` when there are none at all. True when an item is ready.
    fn refill(&mut self, waker: Option<&Waker>) -> bool {
        let Self { queue, local } = self;
        if !local.is_empty() {
            return true;
        }
        let mut q = (**queue).as_ref().lock();
        if q.items.is_empty() {
            if let Some(w) = waker {
                match &q.waker {
                    Some(old) if old.will_wake(w) => {}
                    _ => q.waker = Some(w.clone()),
                }
            }
            return false;
        }
        std::mem::swap(&mut q.items, local);
        true
    }

    /// The next item, or `Pending` (with the waker registered). Cancel-safe:
    /// an item is only taken when `Ready` is returned.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Outbound> {
        if self.refill(Some(cx.waker())) {
            if let Some(item) = self.local.pop_front() {
                return Poll::Ready(item);
            }
        }
        Poll::Pending
    }

    /// Has [`Queue::wake`] (and pushes) wake `cx` from now on, also while
    /// the writer waits on something else, such as a write.
    pub(crate) fn register(&self, cx: &Context<'_>) {
        let mut q = self.queue().lock();
        match &q.waker {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => q.waker = Some(cx.waker().clone()),
        }
    }

    /// Waits for the next item. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Outbound {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        if self.refill(None) {
            self.local.pop_front()
        } else {
            None
        }
    }

    /// Items queued and not yet taken.
    pub(crate) fn len(&self) -> usize {
        self.local.len() + self.queue().lock().items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.local.is_empty() && self.queue().lock().items.is_empty()
    }

    /// Frees the spare deque once everything is taken: an idle session
    /// then holds one small deque, not two.
    pub(crate) fn shrink(&mut self) {
        if self.local.is_empty() && self.local.capacity() > 0 {
            self.local = VecDeque::new();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let mut q = self.queue().lock();
        q.closed = true;
        q.waker = None;
        // Released outside the lock: publications are shared.
        let items = std::mem::take(&mut q.items);
        drop(q);
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Owner(Queue);
    impl AsRef<Queue> for Owner {
        fn as_ref(&self) -> &Queue {
            &self.0
        }
    }

    fn frame(n: u8) -> Outbound {
        Outbound::Frame(vec![n].into_boxed_slice())
    }

    fn byte(o: &Outbound) -> u8 {
        match o {
            Outbound::Frame(b) => b[0],
            _ => unreachable!(),
        }
    }

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn items_come_out_in_order_across_swaps_and_the_bound_refuses() {
        let owner = Arc::new(Owner(Queue::new(3)));
        let mut rx = Outbox::new(owner.clone());
        for i in 0..3 {
            owner.0.push(frame(i)).unwrap();
        }
        assert_eq!(owner.0.push(frame(9)), Err(Refused::Full));
        assert_eq!(rx.len(), 3);
        assert_eq!(rx.try_recv().map(|o| byte(&o)), Some(0));
        // Taken into the writer's side: the queue has room again.
        owner.0.push(frame(3)).unwrap();
        let got: Vec<u8> = std::iter::from_fn(|| rx.try_recv().map(|o| byte(&o))).collect();
        assert_eq!(got, [1, 2, 3]);
        assert!(rx.is_empty());
    }

    #[test]
    fn a_waiting_writer_is_woken_once_per_wait_and_a_dropped_one_refuses() {
        let owner = Arc::new(Owner(Queue::new(8)));
        let mut rx = Outbox::new(owner.clone());
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        owner.0.push(frame(1)).unwrap();
        owner.0.push(frame(2)).unwrap();
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "one wake per wait");
        assert!(matches!(rx.poll_recv(&mut cx), Poll::Ready(ref o) if byte(o) == 1));
        drop(rx);
        assert_eq!(owner.0.push(frame(3)), Err(Refused::Closed));
    }
}
