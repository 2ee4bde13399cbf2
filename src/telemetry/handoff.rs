//! The hand-off from request threads to one background thread that works in batches:
//! the access log's writer and the span exporter.
//!
//! Requests append to a shared buffer under a short lock and wake the thread only when
//! the buffer was empty; the thread then lets the batch fill for a window before it takes
//! it whole. Under load that is one wake-up per window, not one per item: measured on the
//! 2-core machine, a channel send per item cost a wake-up and about one context switch of
//! the consumer per request (1.4 per request for spans), which showed as a third of the
//! gateway's CPU once every request was traced. A buffer past its bound refuses items, so
//! a slow consumer costs memory only up to the bound, never a request's time.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub struct Handoff<T> {
    pending: Mutex<Pending<T>>,
    ready: Condvar,
    /// Items (bytes, for the access log) the buffer holds at most.
    max: usize,
}

struct Pending<T> {
    items: Vec<T>,
    closing: bool,
}

impl<T> Handoff<T> {
    pub fn new(max: usize) -> Self {
        Self {
            pending: Mutex::new(Pending {
                items: Vec::new(),
                closing: false,
            }),
            ready: Condvar::new(),
            max,
        }
    }

    /// The buffer stays usable even if a thread panicked while holding it.
    fn lock(&self) -> MutexGuard<'_, Pending<T>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `n` items with `add`; false (and nothing added) when they do not fit or the
    /// consumer is closing.
    pub fn push(&self, n: usize, add: impl FnOnce(&mut Vec<T>)) -> bool {
        let mut p = self.lock();
        if p.closing || p.items.len() + n > self.max {
            return false;
        }
        let was_empty = p.items.is_empty();
        add(&mut p.items);
        drop(p);
        // The consumer sleeps only while the buffer is empty: one wake-up per batch.
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// For the consumer: waits for an item, lets the batch fill for `window` (unless
    /// closing), and takes it into `batch` (emptied first). Returns false once closing:
    /// `batch` then holds the last items.
    pub fn take(&self, window: Duration, batch: &mut Vec<T>) -> bool {
        batch.clear();
        let mut p = self.lock();
        while p.items.is_empty() && !p.closing {
            p = self.ready.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        if !p.closing {
            drop(p);
            std::thread::sleep(window);
            p = self.lock();
        }
        std::mem::swap(batch, &mut p.items);
        !p.closing
    }

    /// Takes no more items and wakes the consumer for its last batch.
    pub fn close(&self) {
        self.lock().closing = true;
        self.ready.notify_one();
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_beyond_the_bound_are_refused_not_held() {
        let h = Handoff::<u8>::new(8 << 20);
        let line = vec![b'x'; 1 << 20];
        let kept = (0..10)
            .filter(|_| h.push(line.len(), |b| b.extend_from_slice(&line)))
            .count();
        assert_eq!(kept, 8);
        // Exactly full: not even a short line fits until the consumer takes the batch.
        assert!(!h.push(3, |b| b.extend_from_slice(b"ok\n")));
        let mut batch = Vec::new();
        assert!(h.take(Duration::ZERO, &mut batch));
        assert_eq!(batch.len(), 8 << 20);
        assert!(h.push(3, |b| b.extend_from_slice(b"ok\n")));
    }

    #[test]
    fn a_closing_handoff_takes_no_more_and_hands_over_the_rest() {
        let h = Handoff::<&str>::new(10);
        assert!(h.push(1, |b| b.push("first")));
        h.close();
        assert!(!h.push(1, |b| b.push("second")));
        let mut batch = Vec::new();
        assert!(!h.take(Duration::from_secs(60), &mut batch), "closing: no window");
        assert_eq!(batch, ["first"]);
        assert_eq!(h.queued(), 0);
    }
}
