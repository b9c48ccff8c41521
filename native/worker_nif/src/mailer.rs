//! Messages to processes from places with no process env of their own: a
//! scheduler thread outside any NIF call (a resource destructor, a waker
//! called while a slice runs) cannot send itself, so a small thread sends
//! for it.

use crate::atoms;
use rustler::{Encoder, LocalPid, OwnedEnv};
use std::sync::OnceLock;

/// What the mailer can send.
#[derive(Clone, Copy)]
pub enum Message {
    /// `{:"$fl_wake", id}`: an invocation waiting on I/O can go on.
    Wake(u64),
    /// `:"$fl_gate_free"`: a gate with waiters has a free slot.
    GateFree,
}

/// Sends `message` to `pid`, at once where this thread may, else through
/// the mailer thread.
pub fn send(pid: LocalPid, message: Message) {
    if rustler::thread::is_scheduler_thread() {
        if let Some(Ok(mailer)) = MAILER.get() {
            let _ = mailer.send((pid, message));
        }
    } else {
        send_now(pid, message);
    }
}

fn send_now(pid: LocalPid, message: Message) {
    let _ = OwnedEnv::new().send_and_clear(&pid, |env| match message {
        Message::Wake(id) => (atoms::fl_wake(), id).encode(env),
        Message::GateFree => atoms::fl_gate_free().encode(env),
    });
}

type Mailer = crossbeam_channel::Sender<(LocalPid, Message)>;

static MAILER: OnceLock<Result<Mailer, String>> = OnceLock::new();

/// Starts the mailer thread, when the NIF is loaded: without it, wakes and
/// free slots would be lost, and invocations would wait for their
/// deadlines. `Err` says why it could not start; the NIF then refuses to
/// load, and the application does not start.
pub fn start() -> Result<(), String> {
    MAILER
        .get_or_init(|| {
            let (tx, rx) = crossbeam_channel::unbounded::<(LocalPid, Message)>();
            std::thread::Builder::new()
                .name("fl-mailer".into())
                .spawn(move || {
                    for (pid, message) in rx {
                        send_now(pid, message);
                    }
                })
                .map(|_| tx)
                .map_err(|e| format!("the fl-mailer thread cannot start: {e}"))
        })
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}
