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
//! `waiting` is above zero, `gate_enter/3` refuses (first come, first
//! served), and every slot given back sends `:"$fl_gate_free"` to the
//! server, which reserves the slot for a waiter (`gate_reserve/2`) and
//! sends it the ticket, which the waiter takes as its own (`gate_take/1`).
//!
//! Slots may be held for a key (a function): no key holds more than the
//! gate's share of it, so that one key can never take every slot. A key's
//! count goes back with its tickets, like the gate's.

use crate::mailer::{self, Message};
use rustler::{Atom, Encoder, Env, LocalPid, ResourceArc, Term};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

struct Gate {
    used: AtomicI64,
    max: i64,
    waiting: AtomicI64,
    /// Told `:"$fl_gate_free"` when a slot goes back while anyone waits.
    server: Mutex<Option<LocalPid>>,
    /// The most units one key may hold.
    share: i64,
    /// Units held by each key that holds any.
    keys: Mutex<HashMap<u64, i64>>,
}

/// Why a keyed take failed.
enum Refused {
    /// The gate has no such units free.
    Full,
    /// The key holds its share already.
    Share,
}

impl Gate {
    /// Takes `weight` units for `key` (none: for no key), within the
    /// key's `share` (none: the gate's). Under the keys' lock, so that a
    /// key's count and the gate's move together.
    fn take_for(&self, weight: i64, key: Option<u64>, share: Option<i64>) -> Result<(), Refused> {
        let Some(key) = key else {
            return if self.take(weight) {
                Ok(())
            } else {
                Err(Refused::Full)
            };
        };
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let held = keys.get(&key).copied().unwrap_or(0);
        if held.saturating_add(weight) > share.unwrap_or(self.share).min(self.share) {
            return Err(Refused::Share);
        }
        if !self.take(weight) {
            return Err(Refused::Full);
        }
        keys.insert(key, held + weight);
        Ok(())
    }

    fn give_back_for(&self, weight: i64, key: Option<u64>) {
        if let Some(key) = key {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(held) = keys.get_mut(&key) {
                *held -= weight;
                if *held <= 0 {
                    keys.remove(&key);
                }
            }
        }
        self.give_back(weight);
    }

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

pub struct GateResource {
    /// Shared with the tickets it hands out, which may outlive it.
    gate: Arc<Gate>,
}

#[rustler::resource_impl]
impl rustler::Resource for GateResource {}

pub struct TicketResource {
    gate: Arc<Gate>,
    weight: i64,
    key: Option<u64>,
    held: AtomicBool,
}

#[rustler::resource_impl]
impl rustler::Resource for TicketResource {}

impl TicketResource {
    fn new(gate: &Arc<Gate>, weight: i64, key: Option<u64>) -> ResourceArc<TicketResource> {
        ResourceArc::new(TicketResource {
            gate: gate.clone(),
            weight,
            key,
            held: AtomicBool::new(true),
        })
    }

    fn leave(&self) -> bool {
        let held = self.held.swap(false, Ordering::SeqCst);
        if held {
            self.gate.give_back_for(self.weight, self.key);
        }
        held
    }
}

/// A ticket, `nil` when the units are not free, or `:share` when the key
/// holds its share already.
fn ticket_or_refusal<'a>(
    env: Env<'a>,
    gate: &Arc<Gate>,
    weight: i64,
    key: Option<u64>,
    share: Option<i64>,
) -> Term<'a> {
    match gate.take_for(weight, key, share) {
        Ok(()) => TicketResource::new(gate, weight, key).encode(env),
        Err(Refused::Full) => crate::atoms::nil().encode(env),
        Err(Refused::Share) => crate::atoms::share().encode(env),
    }
}

impl Drop for TicketResource {
    fn drop(&mut self) {
        self.leave();
    }
}

/// A gate of `max` units, of which one key may hold `share`.
#[rustler::nif]
fn gate_new(max: i64, share: i64) -> ResourceArc<GateResource> {
    ResourceArc::new(GateResource {
        gate: Arc::new(Gate {
            used: AtomicI64::new(0),
            max,
            waiting: AtomicI64::new(0),
            server: Mutex::new(None),
            share,
            keys: Mutex::new(HashMap::new()),
        }),
    })
}

/// A ticket for `weight` units held for `key` (`nil`: no key); `nil` when
/// they are not free or when someone is queued; `:share` when the key
/// holds its share: `share` (`nil`: the gate's, and never more).
#[rustler::nif]
fn gate_enter<'a>(
    env: Env<'a>,
    gate: ResourceArc<GateResource>,
    weight: i64,
    key: Option<u64>,
    share: Option<i64>,
) -> Term<'a> {
    let gate = &gate.gate;
    if weight < 0 || gate.waiting.load(Ordering::SeqCst) > 0 {
        return crate::atoms::nil().encode(env);
    }
    ticket_or_refusal(env, gate, weight, key, share)
}

/// Moves a ticket into the calling process: the returned ticket holds its
/// units, and the one passed in (which another process may still
/// reference) no longer does. `nil` if it held nothing any more.
#[rustler::nif]
fn gate_take(ticket: ResourceArc<TicketResource>) -> Option<ResourceArc<TicketResource>> {
    if ticket.held.swap(false, Ordering::SeqCst) {
        Some(TicketResource::new(&ticket.gate, ticket.weight, ticket.key))
    } else {
        None
    }
}

/// Gives the ticket's units back now; `true` if it still held them.
#[rustler::nif]
fn gate_leave(ticket: ResourceArc<TicketResource>) -> bool {
    ticket.leave()
}

/// For the queue's server: a ticket for one unit held for `key`, for a
/// waiter, even while others wait; `nil` if none is free, `:share` if the
/// key holds its share. The server sends it to the waiter, which takes it
/// (`gate_take/1`). Until then, a waiter that dies leaves it in the
/// server's heap only, so the server collects its garbage to give the unit
/// back.
#[rustler::nif]
fn gate_reserve<'a>(env: Env<'a>, gate: ResourceArc<GateResource>, key: Option<u64>) -> Term<'a> {
    ticket_or_refusal(env, &gate.gate, 1, key, None)
}

/// For the queue's server: how many wait, and where to say a unit is free.
#[rustler::nif]
fn gate_queue(gate: ResourceArc<GateResource>, waiting: i64, server: LocalPid) -> Atom {
    *gate.gate.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
    gate.gate.waiting.store(waiting, Ordering::SeqCst);
    crate::atoms::ok()
}

/// `{used, max, waiting, share, keys}`: `keys`, how many keys hold units.
#[rustler::nif]
fn gate_info(gate: ResourceArc<GateResource>) -> (i64, i64, i64, i64, usize) {
    let gate = &gate.gate;
    let keys = gate.keys.lock().unwrap_or_else(|e| e.into_inner()).len();
    (
        gate.used.load(Ordering::SeqCst),
        gate.max,
        gate.waiting.load(Ordering::SeqCst),
        gate.share,
        keys,
    )
}

/// Units `key` holds.
#[rustler::nif]
fn gate_held(gate: ResourceArc<GateResource>, key: u64) -> i64 {
    let keys = gate.gate.keys.lock().unwrap_or_else(|e| e.into_inner());
    keys.get(&key).copied().unwrap_or(0)
}
