//! `Worker.Gate`: counted slots that are given back however their holder
//! ends.
//!
//! A slot is held through a ticket, a resource that lives in one process's
//! heap. It goes back when the holder calls `gate_leave/1`, or when the
//! ticket is freed: the holder exited for any reason (a `:kill` included,
//! which runs no `after` clause), so its heap, and the ticket with it, is
//! gone. Nothing can keep a slot forever by dying.
//!
//! A gate may have a queue in front of it, kept by an Elixir server: while
//! `waiting` is above zero, `gate_enter/2` refuses (first come, first
//! served), and every slot given back sends `:"$fl_gate_free"` to the
//! server, which reserves the slot for its first waiter (`gate_reserve/1`)
//! and sends it the ticket, which the waiter takes as its own
//! (`gate_take/1`).

use crate::mailer::{self, Message};
use rustler::{Atom, LocalPid, ResourceArc};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

struct Gate {
    used: AtomicI64,
    max: i64,
    waiting: AtomicI64,
    /// Told `:"$fl_gate_free"` when a slot goes back while anyone waits.
    server: Mutex<Option<LocalPid>>,
}

impl Gate {
    /// Takes `weight` units if they are free. Never counts past `max`, not
    /// even for a moment: a take that fails changes nothing, so it neither
    /// refuses others nor tells the server of a slot that was never free.
    fn take(&self, weight: i64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(weight).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    fn give_back(&self, weight: i64) {
        self.used.fetch_sub(weight, Ordering::SeqCst);
        // Pairs with the server raising `waiting` before it reserves: either
        // it sees this slot free, or this sees its waiter and tells it.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let server = *self.server.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pid) = server {
                mailer::send(pid, Message::GateFree);
            }
        }
    }
}

pub struct GateResource(Arc<Gate>);

#[rustler::resource_impl]
impl rustler::Resource for GateResource {}

pub struct TicketResource {
    gate: Arc<Gate>,
    weight: i64,
    held: AtomicBool,
}

#[rustler::resource_impl]
impl rustler::Resource for TicketResource {}

impl TicketResource {
    fn new(gate: &Arc<Gate>, weight: i64) -> ResourceArc<TicketResource> {
        ResourceArc::new(TicketResource {
            gate: gate.clone(),
            weight,
            held: AtomicBool::new(true),
        })
    }

    fn leave(&self) -> bool {
        let held = self.held.swap(false, Ordering::SeqCst);
        if held {
            self.gate.give_back(self.weight);
        }
        held
    }
}

impl Drop for TicketResource {
    fn drop(&mut self) {
        self.leave();
    }
}

/// A gate of `max` units.
#[rustler::nif]
fn gate_new(max: i64) -> ResourceArc<GateResource> {
    ResourceArc::new(GateResource(Arc::new(Gate {
        used: AtomicI64::new(0),
        max,
        waiting: AtomicI64::new(0),
        server: Mutex::new(None),
    })))
}

/// A ticket for `weight` units, or `nil` when they are not free or when
/// someone is queued.
#[rustler::nif]
fn gate_enter(gate: ResourceArc<GateResource>, weight: i64) -> Option<ResourceArc<TicketResource>> {
    let gate = &gate.0;
    if weight < 0 || gate.waiting.load(Ordering::SeqCst) > 0 || !gate.take(weight) {
        return None;
    }
    Some(TicketResource::new(gate, weight))
}

/// Moves a ticket into the calling process: the returned ticket holds its
/// units, and the one passed in (which another process may still
/// reference) no longer does. `nil` if it held nothing any more.
#[rustler::nif]
fn gate_take(ticket: ResourceArc<TicketResource>) -> Option<ResourceArc<TicketResource>> {
    if ticket.held.swap(false, Ordering::SeqCst) {
        Some(TicketResource::new(&ticket.gate, ticket.weight))
    } else {
        None
    }
}

/// Gives the ticket's units back now; `true` if it still held them.
#[rustler::nif]
fn gate_leave(ticket: ResourceArc<TicketResource>) -> bool {
    ticket.leave()
}

/// For the queue's server: a ticket for one unit, for its first waiter,
/// even while others wait; `nil` if none is free. The server sends it to
/// the waiter, which takes it (`gate_take/1`). Until then, a waiter that
/// dies leaves it in the server's heap only, so the server collects its
/// garbage to give the unit back.
#[rustler::nif]
fn gate_reserve(gate: ResourceArc<GateResource>) -> Option<ResourceArc<TicketResource>> {
    let gate = &gate.0;
    gate.take(1).then(|| TicketResource::new(gate, 1))
}

/// For the queue's server: how many wait, and where to say a unit is free.
#[rustler::nif]
fn gate_queue(gate: ResourceArc<GateResource>, waiting: i64, server: LocalPid) -> Atom {
    *gate.0.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
    gate.0.waiting.store(waiting, Ordering::SeqCst);
    crate::atoms::ok()
}

/// `{used, max, waiting}`.
#[rustler::nif]
fn gate_info(gate: ResourceArc<GateResource>) -> (i64, i64, i64) {
    let gate = &gate.0;
    (
        gate.used.load(Ordering::SeqCst),
        gate.max,
        gate.waiting.load(Ordering::SeqCst),
    )
}
