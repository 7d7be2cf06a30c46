//! The outgoing queue of a [`Socket`](crate::Socket): the packets waiting for the transport
//! (the WebSocket task, or the next polling request) to send them to the client.
//!
//! It replaces a tokio `mpsc` channel and a `watch` channel. Those allocate up front, whatever
//! the capacity: the mpsc a block of 32 slots and its shared state, the watch its shared
//! state, about 2.6 KB per socket even with nothing to send. This queue lives inline in the
//! socket and allocates only when a packet is queued; it gives that memory back as soon as
//! the transport has taken every packet out.
//!
//! One consumer at a time: whoever holds the socket's `internal_rx` lock (the WebSocket
//! task for the whole connection, or one polling request). Any number of producers.
use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard},
    task::{Context, Poll},
};

use engineioxide_core::PacketBuf;
use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, mpsc::error::TrySendError};

/// A bounded queue of [`PacketBuf`]s, plus a slot for the latest volatile one.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// Most packets queued (plus permits reserved) at once: the config's `max_buffer_size`.
    capacity: usize,
    /// The consumer, waiting for a packet. A producer wakes it after queueing one;
    /// waking takes the waker out, so a burst of packets costs one wake-up.
    consumer: AtomicWaker,
    /// Whoever waits in [`Queue::closed`].
    closed: Notify,
}

#[derive(Debug, Default)]
struct State {
    packets: VecDeque<PacketBuf>,
    /// Slots promised to [`Permit`](crate::socket::Permit)s that have not sent yet.
    reserved: usize,
    /// The latest volatile packet not yet sent: a new one replaces it.
    volatile: Option<PacketBuf>,
    closed: bool,
}

impl State {
    fn is_full(&self, capacity: usize) -> bool {
        self.packets.len() + self.reserved >= capacity
    }
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity,
            consumer: AtomicWaker::new(),
            closed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the state is still
        // consistent (every change is a single push, pop or assignment).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a packet unless the queue is full or closed.
    pub(crate) fn try_push(&self, packets: PacketBuf) -> Result<(), TrySendError<PacketBuf>> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(TrySendError::Closed(packets));
            }
            if state.is_full(self.capacity) {
                return Err(TrySendError::Full(packets));
            }
            state.packets.push_back(packets);
        }
        self.consumer.wake();
        Ok(())
    }

    /// Queues a packet even when the queue is full (the upgrade's noop packet, which must
    /// reach a waiting polling request). Fails only when the queue is closed.
    pub(crate) fn push_control(&self, packets: PacketBuf) -> Result<(), PacketBuf> {
        {
            let mut state = self.lock();
            if state.closed {
                return Err(packets);
            }
            state.packets.push_back(packets);
        }
        self.consumer.wake();
        Ok(())
    }

    /// Reserves a slot for a later [`Queue::push_reserved`] (or gives it back with
    /// [`Queue::release`]).
    pub(crate) fn try_reserve(&self) -> Result<(), TrySendError<()>> {
        let mut state = self.lock();
        if state.closed {
            return Err(TrySendError::Closed(()));
        }
        if state.is_full(self.capacity) {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(())
    }

    /// Queues a packet in a slot reserved by [`Queue::try_reserve`]. If the queue was closed
    /// meanwhile, the packet is dropped (as a tokio mpsc permit's value is).
    pub(crate) fn push_reserved(&self, packets: PacketBuf) {
        let rejected = {
            let mut state = self.lock();
            state.reserved -= 1;
            if state.closed {
                Some(packets)
            } else {
                state.packets.push_back(packets);
                None
            }
        };
        if rejected.is_none() {
            self.consumer.wake();
        }
    }

    /// Gives back a slot reserved by [`Queue::try_reserve`] and not used.
    pub(crate) fn release(&self) {
        self.lock().reserved -= 1;
    }

    /// Replaces the volatile packet waiting to be sent, if any. Returns `false` if the queue
    /// is closed.
    pub(crate) fn set_volatile(&self, packets: PacketBuf) -> bool {
        let _replaced = {
            let mut state = self.lock();
            if state.closed {
                return false;
            }
            state.volatile.replace(packets)
        };
        self.consumer.wake();
        true
    }

    /// Takes the next packet out: the queued ones first, in order, then the volatile one.
    /// `Ready(None)` once the queue is closed. When there is nothing to take, the task of `cx`
    /// is woken by the next push.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<PacketBuf>> {
        let mut state = self.lock();
        match Self::pop(&mut state) {
            Some(packets) => Poll::Ready(Some(packets)),
            None if state.closed => Poll::Ready(None),
            None => {
                // Registered under the lock: a producer pushes under it too, then wakes.
                self.consumer.register(cx.waker());
                Poll::Pending
            }
        }
    }

    /// Takes the next packet out, if there is one, without registering for a wake-up.
    #[cfg(test)]
    pub(crate) fn try_pop(&self) -> Option<PacketBuf> {
        Self::pop(&mut self.lock())
    }

    fn pop(state: &mut State) -> Option<PacketBuf> {
        if let Some(packets) = state.packets.pop_front() {
            if state.packets.is_empty() {
                // Give the buffer back as soon as it is drained. A socket's queue is empty
                // nearly all the time (a ping every 25 s, a message now and then), so a kept
                // buffer would be idle memory in every socket: at least 4 slots (192 B plus
                // malloc's overhead) once the first packet went through, and whatever a burst
                // grew it to. The price is one malloc and free per burst, next to the
                // transport's write syscall per burst.
                state.packets = VecDeque::new();
            }
            return Some(packets);
        }
        state.volatile.take()
    }

    /// Closes the queue: pushes, reservations and volatile packets fail from now on, the
    /// packets not sent yet are dropped and [`Queue::closed`] resolves.
    pub(crate) fn close(&self) {
        let _dropped = {
            let mut state = self.lock();
            state.closed = true;
            (std::mem::take(&mut state.packets), state.volatile.take())
        };
        self.closed.notify_waiters();
        self.consumer.wake();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Resolves once the queue is closed.
    pub(crate) async fn closed(&self) {
        let notified = self.closed.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check, so that a `close` in between is not missed.
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    /// The number of packets queued (the volatile one apart).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().packets.len()
    }

    /// The number of packets the queue's buffer holds without reallocating.
    #[cfg(test)]
    fn allocated(&self) -> usize {
        self.lock().packets.capacity()
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("state", &self.state)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, sync::Arc, time::Duration};

    use engineioxide_core::{Packet, Str};
    use futures_util::FutureExt;
    use smallvec::smallvec;

    use super::*;

    fn msg(s: &'static str) -> PacketBuf {
        smallvec![Packet::Message(Str::from(s))]
    }

    fn text(packets: PacketBuf) -> String {
        match packets.into_iter().next() {
            Some(Packet::Message(s)) => s.to_string(),
            p => panic!("unexpected packet {p:?}"),
        }
    }

    fn pop_now(queue: &Queue) -> Poll<Option<PacketBuf>> {
        poll_fn(|cx| Poll::Ready(queue.poll_pop(cx)))
            .now_or_never()
            .unwrap()
    }

    #[test]
    fn allocates_nothing_until_a_packet_is_queued() {
        let queue = Queue::new(128);
        assert_eq!(queue.allocated(), 0);
        assert!(queue.try_reserve().is_ok());
        assert!(queue.set_volatile(msg("v")));
        assert_eq!(queue.allocated(), 0);
    }

    #[test]
    fn bounded_by_its_capacity() {
        let queue = Queue::new(2);
        queue.try_push(msg("a")).unwrap();
        queue.try_push(msg("b")).unwrap();
        assert!(matches!(
            queue.try_push(msg("c")),
            Err(TrySendError::Full(p)) if text(p.clone()) == "c"
        ));
        assert!(matches!(queue.try_reserve(), Err(TrySendError::Full(()))));
        // The noop of an upgrade goes in anyway.
        queue.push_control(msg("noop")).unwrap();
        assert_eq!(queue.len(), 3);

        assert_eq!(text(queue.try_pop().unwrap()), "a");
        assert_eq!(text(queue.try_pop().unwrap()), "b");
        assert_eq!(text(queue.try_pop().unwrap()), "noop");
        assert!(queue.try_pop().is_none());
        queue.try_push(msg("d")).unwrap();
    }

    #[test]
    fn reserved_slots_count_until_used_or_released() {
        let queue = Queue::new(2);
        queue.try_reserve().unwrap();
        queue.try_reserve().unwrap();
        assert!(matches!(queue.try_reserve(), Err(TrySendError::Full(()))));
        assert!(matches!(
            queue.try_push(msg("x")),
            Err(TrySendError::Full(_))
        ));

        queue.release();
        queue.try_push(msg("a")).unwrap();
        queue.push_reserved(msg("b"));
        assert!(matches!(queue.try_reserve(), Err(TrySendError::Full(()))));

        assert_eq!(text(queue.try_pop().unwrap()), "a");
        assert_eq!(text(queue.try_pop().unwrap()), "b");
        queue.try_reserve().unwrap();
        queue.try_reserve().unwrap();
    }

    #[test]
    fn only_the_latest_volatile_packet_is_kept_and_it_comes_after_the_queued_ones() {
        let queue = Queue::new(4);
        assert!(queue.set_volatile(msg("dropped")));
        assert!(queue.set_volatile(msg("kept")));
        queue.try_push(msg("normal")).unwrap();

        assert_eq!(text(queue.try_pop().unwrap()), "normal");
        assert_eq!(text(queue.try_pop().unwrap()), "kept");
        assert!(queue.try_pop().is_none());
    }

    #[test]
    fn volatile_packets_ignore_the_bound() {
        let queue = Queue::new(1);
        queue.try_push(msg("a")).unwrap();
        assert!(queue.set_volatile(msg("v")));
        assert_eq!(text(queue.try_pop().unwrap()), "a");
        assert_eq!(text(queue.try_pop().unwrap()), "v");
    }

    #[test]
    fn closed_queue_refuses_everything_and_drops_what_it_held() {
        let queue = Queue::new(4);
        queue.try_push(msg("a")).unwrap();
        queue.try_reserve().unwrap();
        assert!(queue.set_volatile(msg("v")));
        assert!(!queue.is_closed());

        queue.close();
        assert!(queue.is_closed());
        assert_eq!(queue.len(), 0);
        assert_eq!(queue.allocated(), 0);
        assert!(matches!(pop_now(&queue), Poll::Ready(None)));
        assert!(matches!(
            queue.try_push(msg("b")),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(queue.try_reserve(), Err(TrySendError::Closed(()))));
        assert!(queue.push_control(msg("noop")).is_err());
        assert!(!queue.set_volatile(msg("v")));
        // A permit taken before the close still sends, into nothing.
        queue.push_reserved(msg("late"));
        assert!(queue.try_pop().is_none());
    }

    #[tokio::test]
    async fn closed_resolves_when_the_queue_is_closed() {
        let queue = Arc::new(Queue::new(4));
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.closed().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        queue.close();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("closed() should resolve")
            .unwrap();
        // And at once when it already is.
        queue.closed().now_or_never().expect("already closed");
    }

    #[test]
    fn memory_is_given_back_when_drained() {
        let queue = Queue::new(1024);
        for _ in 0..500 {
            queue.try_push(msg("burst")).unwrap();
        }
        assert!(queue.allocated() >= 500);
        for _ in 0..499 {
            queue.try_pop().unwrap();
        }
        assert!(queue.allocated() >= 500, "kept while packets remain");
        queue.try_pop().unwrap();
        assert_eq!(queue.allocated(), 0);
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_consumer() {
        let queue = Arc::new(Queue::new(4));
        let consumer = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut got = Vec::new();
                while let Some(packets) = poll_fn(|cx| queue.poll_pop(cx)).await {
                    got.push(text(packets));
                }
                got
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.try_push(msg("a")).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(queue.set_volatile(msg("v")));
        tokio::time::sleep(Duration::from_millis(10)).await;
        queue.close();
        let got = tokio::time::timeout(Duration::from_secs(1), consumer)
            .await
            .expect("the consumer should see the close")
            .unwrap();
        assert_eq!(got, ["a", "v"]);
    }
}
