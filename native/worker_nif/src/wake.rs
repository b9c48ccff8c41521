//! Waking a process whose invocation waits on I/O: the wake states, and the
//! ids that tie a `{:"$fl_wake", id}` message to its invocation.

use crate::mailer::{self, Message};
use rustler::LocalPid;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::Wake;

/// A slice is running: a wake now only means "poll again at once".
pub const POLLING: u8 = 0;
/// The process waits in `receive` for the wake message.
pub const IDLE: u8 = 1;
/// Woken: the message is sent (from `IDLE`) or the slice will see it.
pub const NOTIFIED: u8 = 2;
/// Finished or cancelled: wakes are ignored.
pub const CLOSED: u8 = 3;

/// Turns a waker call into at most one message to the owning process, and
/// only when that process is actually waiting (state `IDLE`).
pub struct WakeState {
    pub state: AtomicU8,
    pid: LocalPid,
    pub id: u64,
}

impl WakeState {
    /// The wake state of a new invocation owned by `pid`, in a slice.
    pub fn new(pid: LocalPid) -> Arc<WakeState> {
        Arc::new(WakeState {
            state: AtomicU8::new(POLLING),
            pid,
            id: next_id(),
        })
    }

    /// After a slice that left the guest pending: `true` if the process
    /// should now wait for the message (nothing woke it during the slice).
    pub fn idle(&self) -> bool {
        self.state
            .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
    }
}

impl Wake for WakeState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current != POLLING && current != IDLE {
                return;
            }
            match self.state.compare_exchange(
                current,
                NOTIFIED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(POLLING) => return,
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        // Went IDLE -> NOTIFIED: the process is waiting for this message.
        mailer::send(self.pid, Message::Wake(self.id));
    }
}

/// Wake ids: unique per invocation, made without a counter that every
/// scheduler thread would write to. Each thread draws a block of ids.
fn next_id() -> u64 {
    static BLOCKS: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static RANGE: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    }
    RANGE.with(|range| {
        let (mut next, mut end) = range.get();
        if next == end {
            next = BLOCKS.fetch_add(1, Ordering::Relaxed) * 4096 + 1;
            end = next + 4096;
        }
        range.set((next + 1, end));
        next
    })
}
