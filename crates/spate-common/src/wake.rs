//! Wake-ups a thread holds back until it has finished what it is doing.
//!
//! A request served to completion on one thread (`spate-remoting`'s
//! dispatch) appends to the store, which wakes the dispatcher thread that
//! builds consume queues. Woken at once, that thread can take the CPU from
//! the one still writing the answer (the scheduler favours a thread that
//! just woke), so the producer waits for the dispatch too. Inside
//! [`hold_wakeups`] a [`wake_or_hold`] is kept until the closure returns
//! and then delivered, once per waker: after the answer is on its way.

use std::cell::RefCell;
use std::sync::Arc;

/// Something a thread can be woken through.
pub trait Wake: Send + Sync {
    /// Delivers the wake-up.
    fn wake_now(&self);

    /// Delivers a wake-up held until the end of a [`hold_wakeups`] scope.
    /// The scope's own work is done by then (no lock of the woken side is
    /// held), so an implementation may do the woken thread's work right
    /// here instead of waking it.
    fn wake_after_scope(&self) {
        self.wake_now();
    }
}

/// Most distinct wake-ups one scope keeps; any beyond are delivered at once.
const HELD_MAX: usize = 8;

thread_local! {
    /// `Some` inside [`hold_wakeups`] on this thread.
    static HELD: RefCell<Option<Vec<Arc<dyn Wake>>>> = const { RefCell::new(None) };
}

/// Delivers what a scope held when it ends, even if `f` unwinds.
struct Scope;

impl Drop for Scope {
    fn drop(&mut self) {
        let held = HELD.with(|h| h.borrow_mut().take()).unwrap_or_default();
        for w in held {
            w.wake_after_scope();
        }
    }
}

/// Runs `f` holding back this thread's [`wake_or_hold`] calls until it
/// returns. Nested scopes are one scope: the outermost delivers.
pub fn hold_wakeups<R>(f: impl FnOnce() -> R) -> R {
    let outermost = HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_some() {
            false
        } else {
            *h = Some(Vec::new());
            true
        }
    });
    // Made only for the outermost scope: dropping one delivers.
    let _scope = if outermost { Some(Scope) } else { None };
    f()
}

/// Wakes `w` now, or at the end of this thread's [`hold_wakeups`] scope.
pub fn wake_or_hold<W: Wake + 'static>(w: &Arc<W>) {
    let held = HELD.with(|h| match h.borrow_mut().as_mut() {
        Some(list) if list.len() < HELD_MAX => {
            let w: Arc<dyn Wake> = w.clone();
            if !list.iter().any(|x| Arc::ptr_eq(x, &w)) {
                list.push(w);
            }
            true
        }
        _ => false,
    });
    if !held {
        w.wake_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake_now(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn held_until_the_scope_ends_once_per_waker_and_at_once_outside() {
        let a = Arc::new(Count::default());
        let b = Arc::new(Count::default());
        wake_or_hold(&a);
        assert_eq!(a.0.load(Ordering::SeqCst), 1, "no scope: at once");
        hold_wakeups(|| {
            wake_or_hold(&a);
            wake_or_hold(&a);
            hold_wakeups(|| wake_or_hold(&b));
            assert_eq!(b.0.load(Ordering::SeqCst), 0, "the inner scope does not deliver");
            assert_eq!(a.0.load(Ordering::SeqCst), 1, "held");
        });
        assert_eq!(a.0.load(Ordering::SeqCst), 2, "delivered once");
        assert_eq!(b.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn delivered_even_when_the_scope_unwinds() {
        let a = Arc::new(Count::default());
        let a2 = a.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            hold_wakeups(|| {
                wake_or_hold(&a2);
                panic!("handler bug");
            })
        }));
        assert!(r.is_err());
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        // The scope is over: the next wake-up is not held.
        wake_or_hold(&a);
        assert_eq!(a.0.load(Ordering::SeqCst), 2);
    }
}
