//! The host of core modules (FunLess functions and WASI commands): their
//! store's state, and WASI preview 1 with no filesystem, environment or
//! sockets, `poll_oneoff` capped.
//!
//! Every pointer and length from the guest is checked against linear memory
//! before it is used (see [`crate::memory`]), and sizes the guest chooses are
//! checked against the invocation's caps before anything is copied. A guest
//! that breaks these rules gets a trap ([`GuestFault`]), never a host crash.

use crate::Error;
use crate::limits::{Limiter, Limits};
use crate::logs::LogSink;
use crate::memory::{self, addr};
use crate::outcome::{GuestFault, Outcome, classify, ended, fault};
use crate::store::{Limited, Start};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{
    Caller, Engine, Extern, ExternType, Instance, InstancePre, Linker, Memory, Module,
    ModuleExport, Result, Store, ValType,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;

/// A core module linked once: what each of its invocations instantiates,
/// the export its kind calls, its memory, and its `_initialize` if it has
/// one.
#[derive(Clone)]
pub struct Linked {
    pub pre: InstancePre<HostState>,
    pub export: ModuleExport,
    pub memory: ModuleExport,
    pub initialize: Option<ModuleExport>,
}

/// The export of a WASI reactor that sets up its runtime (C constructors,
/// Go's runtime), to be called once per instance before anything else.
pub const INITIALIZE: &str = "_initialize";

/// `_initialize`, if the module exports it, checked for its type.
pub fn find_initialize(module: &Module) -> std::result::Result<Option<ModuleExport>, Error> {
    find_func(module, INITIALIZE, "() -> ()", |params, results| {
        params.is_empty() && results.is_empty()
    })
    .transpose()
}

/// The function `name`, if the module exports it; `Err` if it is not a
/// function, or `fits` refuses its parameters and results (`expected`
/// says what they should be).
pub fn find_func(
    module: &Module,
    name: &str,
    expected: &str,
    fits: impl FnOnce(&[ValType], &[ValType]) -> bool,
) -> Option<std::result::Result<ModuleExport, Error>> {
    let found = module.get_export(name)?;
    let ExternType::Func(ty) = found else {
        return Some(Err(Error::refused(format!(
            "export `{name}` must be a function, found {found:?}"
        ))));
    };
    let params: Vec<ValType> = ty.params().collect();
    let results: Vec<ValType> = ty.results().collect();
    if !fits(&params, &results) {
        return Some(Err(Error::refused(format!(
            "export `{name}` must have type {expected}, found {ty}"
        ))));
    }
    module.get_export_index(name).map(Ok)
}

/// Per-invocation state of a core module, owned by its store.
pub struct HostState {
    pub wasi: WasiP1Ctx,
    pub limiter: Limiter,
    pub limits: Limits,
    pub deadline: Instant,
    /// The arguments' JSON text (shared with a command's stdin, not copied).
    pub input: bytes::Bytes,
    pub response: Option<Vec<u8>>,
    pub error: Option<Vec<u8>>,
    pub logs: Arc<LogSink>,
    pub http_requests: u32,
    /// The instance's exported memory, set right after instantiation.
    pub memory: Option<Memory>,
}

impl Limited for HostState {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

/// The store of a core module's invocation, its WASI context built from
/// `start` (whose stdio the kind has set).
pub fn store(start: Start) -> Store<HostState> {
    let Start {
        input,
        limits,
        max_memory,
        deadline,
        logs,
        mut wasi,
        clock,
    } = start;
    clock.store(HostState {
        wasi: wasi.build_p1(),
        limiter: Limiter::module(max_memory),
        limits,
        deadline,
        input,
        response: None,
        error: None,
        logs,
        http_requests: 0,
        memory: None,
    })
}

/// Subscriptions one WASI `poll_oneoff` may pass. WASI handles them all in
/// one host call, in one time slice: 490,000 held a scheduler for 233 ms.
/// With no files and no sockets, a guest has little to wait on but clocks.
pub const MAX_POLL_SUBSCRIPTIONS: u32 = 1024;

/// The guest's memory and the state, for a host import.
pub fn memory_of<'a>(
    caller: &'a mut Caller<'_, HostState>,
) -> Result<(&'a mut [u8], &'a mut HostState)> {
    let memory = caller
        .data()
        .memory
        .ok_or_else(|| fault("host import called before the instance was ready".into()))?;
    Ok(memory.data_and_store_mut(caller))
}

/// Copies a guest buffer of at most `cap` bytes, checking the cap before the
/// bounds and both before allocating.
pub fn read_capped(
    memory: &[u8],
    what: &'static str,
    ptr: i32,
    len: i32,
    cap: usize,
) -> Result<Vec<u8>> {
    let len = addr(len);
    if len as usize > cap {
        return Err(fault(format!(
            "{what}: {len} bytes is over the limit of {cap} bytes"
        )));
    }
    Ok(memory::read(memory, what, addr(ptr), len)
        .map_err(GuestFault::from)?
        .to_vec())
}

/// WASI preview 1, with `poll_oneoff` capped, then handed to WASI's own
/// implementation. A kind adds its own imports to it (the FunLess ABI's
/// `fl_imps`).
pub fn linker(engine: &Engine) -> Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |state: &mut HostState| &mut state.wasi)?;
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        |mut caller: Caller<'_, HostState>, (subs, events, n, nevents): (i32, i32, i32, i32)| {
            Box::new(async move {
                if addr(n) > MAX_POLL_SUBSCRIPTIONS {
                    return Err(fault(format!(
                        "poll_oneoff: {} subscriptions is over the limit of {MAX_POLL_SUBSCRIPTIONS}",
                        addr(n)
                    )));
                }
                // as wasmtime-wasi's own glue does: the store's host-call
                // fuel, the memory, then WASI's poll_oneoff
                let fuel = wasmtime::AsContextMut::as_context_mut(&mut caller).hostcall_fuel();
                // the caller's memory, as the glue finds it (a start function
                // runs before HostState::memory is set)
                let Some(wasmtime::Extern::Memory(memory)) = caller.get_export("memory") else {
                    return Err(fault("poll_oneoff: the module exports no memory".into()));
                };
                let (memory, state) = memory.data_and_store_mut(&mut caller);
                state.wasi.set_hostcall_fuel(fuel);
                let mut memory = wiggle::GuestMemory::Unshared(memory);
                wasmtime_wasi::p1::wasi_snapshot_preview1::poll_oneoff(
                    &mut state.wasi,
                    &mut memory,
                    subs,
                    events,
                    n,
                    nevents,
                )
                .await
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// Instantiates `pre` under the deadline, and finds its exported memory.
pub async fn instantiate(
    store: &mut Store<HostState>,
    linked: &Linked,
) -> std::result::Result<Instance, Outcome> {
    // The epoch callback enforces the deadline while wasm runs (a start
    // function included); this timer enforces it while the guest is
    // suspended in a host call (a WASI sleep).
    let deadline = tokio::time::Instant::from_std(store.data().deadline);
    let instantiated = tokio::time::timeout_at(deadline, linked.pre.instantiate_async(&mut *store));
    let instance = match instantiated.await {
        Ok(Ok(instance)) => instance,
        Ok(Err(e)) => return Err(classify(e, true)),
        Err(_) => return Err(Outcome::Timeout),
    };
    let Some(Extern::Memory(found)) = instance.get_module_export(&mut *store, &linked.memory)
    else {
        return Err(Outcome::Instantiate("exported memory missing".into()));
    };
    store.data_mut().memory = Some(found);
    Ok(instance)
}

/// Calls the instance's `_initialize`, if the module exports one, under the
/// deadline: a reactor (what Go and C build when a module exports
/// functions) is initialized once per instance before its entry point, as
/// the WASI application ABI says; without it Go's runtime traps with "call
/// _initialize first". `Ok(None)` if it exited with status 0, which ends
/// the run as it would in the entry point; a failure is the entry point's
/// kind of failure too.
pub async fn initialize(
    store: &mut Store<HostState>,
    linked: &Linked,
    instance: &Instance,
) -> std::result::Result<Option<()>, Outcome> {
    let Some(initialize) = &linked.initialize else {
        return Ok(Some(()));
    };
    let Some(Ok(initialize)) = instance
        .get_module_export(&mut *store, initialize)
        .and_then(Extern::into_func)
        .map(|f| f.typed::<(), ()>(&*store))
    else {
        return Err(Outcome::Instantiate(format!(
            "exported {INITIALIZE} missing"
        )));
    };
    let deadline = tokio::time::Instant::from_std(store.data().deadline);
    ended(tokio::time::timeout_at(deadline, initialize.call_async(&mut *store, ())).await)
}
