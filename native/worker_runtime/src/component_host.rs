//! The host of components (commands and HTTP handlers, WASI 0.2 and 0.3):
//! their store's state, WASI 0.2 and 0.3 with no filesystem, environment,
//! arguments or sockets, and outbound `wasi:http` (0.2 and 0.3) under the
//! invocation's policy ([`crate::outbound::wasi_http`]).
//!
//! A component's kind is told by its exports, any 0.2 minor version or
//! 0.3 release ([`find_export`], [`find_p3_export`]).

use crate::limits::Limiter;
use crate::outbound::wasi_http::Outbound;
use crate::outcome::{Outcome, classify};
use crate::policy::Policy;
use crate::store::{Limited, Start, release};
use std::sync::Arc;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    Component, ComponentExportIndex, Instance, InstancePre, Linker, ResourceTable,
};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Entries a component's resource table may hold at once: streams,
/// pollables, fields, requests. Each is host memory that no store limit
/// counts (see [`MAX_FIELDS_BYTES`] and
/// [`crate::outbound::wasi_http::BODY_CHUNK_BYTES`] for the largest); a function
/// needs a few dozen.
pub const MAX_RESOURCES: usize = 1_000;

/// Handles a component's store may hold at once, guest and concurrency
/// ones: a few hundred bytes of host memory each.
pub const MAX_HANDLES: usize = 10_000;

/// Bytes one set of HTTP fields (a request's or response's headers) may
/// hold: wasi:http's default is 128 KiB, and a guest may make as many sets
/// as it has resources.
pub const MAX_FIELDS_BYTES: usize = 16 << 10;

/// Bytes a component may pass the host in one call (a list, a string):
/// Wasmtime allocates them before the host sees them. A write to stdout
/// takes 1 MiB at most, and one of an HTTP body 16 KiB; the default, 128
/// MiB, would let one `wasi:io/poll` list hold 32 million handles.
pub const MAX_HOSTCALL_BYTES: usize = 2 << 20;

/// Per-invocation state of a component, owned by its store.
pub struct ComponentState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) http: WasiHttpCtx,
    pub(crate) outbound: Outbound,
    pub(crate) limiter: Limiter,
}

impl Limited for ComponentState {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl ComponentState {
    pub fn new(wasi: WasiCtx, outbound: Outbound, limiter: Limiter) -> ComponentState {
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        ComponentState {
            wasi,
            table,
            http,
            outbound,
            limiter,
        }
    }
}

/// WASI 0.2, and 0.3 if `wasi_p3` (cli, clocks, random, io, and filesystem
/// and sockets with nothing to reach), and wasi:http's types and client,
/// its outbound requests through [`Outbound`].
pub fn linker(engine: &Engine, wasi_p3: bool) -> wasmtime::Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    if wasi_p3 {
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    }
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// A component linked once: what each of its invocations instantiates,
/// and the function its kind calls.
#[derive(Clone)]
pub struct Linked {
    pub pre: InstancePre<ComponentState>,
    pub export: ComponentExportIndex,
}

/// The store of a component's invocation, its WASI context built from
/// `start` (whose stdio the kind has set).
pub fn store(start: Start) -> Store<ComponentState> {
    build_store(start, |clock, state| clock.store(state))
}

/// The store of an instance that serves many requests: its outbound
/// requests capped at what `allowance` says when each is sent (one
/// invocation's cap for each request it took), each one's I/O bounded by
/// what `until` says then (the latest deadline of the requests in flight),
/// and trapping when `past` says so.
pub fn shared_store(
    start: Start,
    allowance: Arc<std::sync::atomic::AtomicU32>,
    until: Arc<dyn Fn() -> std::time::Instant + Send + Sync>,
    past: impl Fn(std::time::Instant) -> bool + Send + Sync + 'static,
) -> Store<ComponentState> {
    let mut store = build_store(start, |clock, state| clock.store_until(state, past));
    let outbound = &mut store.data_mut().outbound;
    outbound.until = Some(until);
    outbound.allowance = Some(allowance);
    store
}

fn build_store(
    start: Start,
    make: impl FnOnce(crate::store::Clock, ComponentState) -> Store<ComponentState>,
) -> Store<ComponentState> {
    let Start {
        limits,
        max_memory,
        deadline,
        logs,
        mut wasi,
        clock,
        ..
    } = start;
    let outbound = Outbound {
        policy: limits.http_allow.clone().unwrap_or_else(Policy::none),
        deadline,
        until: None,
        max_requests: limits.max_http_requests,
        allowance: None,
        max_request_bytes: limits.max_http_request_bytes,
        max_body: limits.max_http_body_bytes,
        logs,
        requests: 0,
    };
    let state = ComponentState::new(wasi.build(), outbound, Limiter::component(max_memory));
    let mut store = make(clock, state);
    store.set_hostcall_fuel(MAX_HOSTCALL_BYTES);
    // Handles a guest holds (resources, and with WASI 0.3 streams, futures
    // and tasks), and the host's entries for WASI 0.3's concurrency: host
    // memory no store limit counts (Wasmtime's default is 100,000 handles).
    store.set_max_component_handles(MAX_HANDLES);
    if let Some(table) = store.concurrent_resource_table() {
        table.set_max_capacity(MAX_HANDLES);
    }
    store
}

/// The function `func` of the export whose name starts with `prefix`, if
/// the component has one, checked for its number of parameters and results
/// (its types are checked when it is called); `Err` names what is wrong.
pub fn find_export(
    component: &Component,
    engine: &Engine,
    prefix: &str,
    func: &str,
    params: usize,
    results: usize,
) -> Option<Result<ComponentExportIndex, String>> {
    let ty = component.component_type();
    let (name, _) = ty
        .exports(engine)
        .find(|(name, _)| name.starts_with(prefix))?;
    let found = component
        .get_export_index(None, name)
        .and_then(|instance| component.get_export(Some(&instance), func));
    Some(match found {
        Some((ComponentItem::ComponentFunc(f), index))
            if f.params().len() == params && f.results().len() == results =>
        {
            Ok(index)
        }
        Some(_) => Err(format!(
            "`{func}` of the component's `{name}` export is not the function WASI defines"
        )),
        None => Err(format!("the component's `{name}` export has no `{func}`")),
    })
}

/// As [`find_export`], for a WASI 0.3 interface (`prefix` ends `@0.3.`);
/// a component built against a release candidate of 0.3 (`0.3.0-rc-...`)
/// is refused, saying so: its imports are not the ones this host provides.
pub fn find_p3_export(
    component: &Component,
    engine: &Engine,
    prefix: &str,
    func: &str,
    params: usize,
    results: usize,
) -> Option<Result<ComponentExportIndex, String>> {
    let found = find_export(component, engine, prefix, func, params, results)?;
    let ty = component.component_type();
    let candidate = ty
        .exports(engine)
        .map(|(name, _)| name)
        .find(|name| name.starts_with(prefix) && name.contains("-rc"));
    Some(match candidate {
        Some(name) => Err(format!(
            "the component exports {}, from a release candidate of WASI 0.3; \
             this worker runs WASI 0.3.0 and later 0.3 releases: build it against one",
            crate::text::listed(std::iter::once(name))
        )),
        None => found,
    })
}

/// Instantiates `pre` under the deadline; on failure, the store is
/// released and the outcome says why.
pub async fn instantiate(
    mut store: Store<ComponentState>,
    pre: &InstancePre<ComponentState>,
) -> Result<(Store<ComponentState>, Instance), Outcome> {
    let deadline = tokio::time::Instant::from_std(store.data().outbound.deadline);
    match tokio::time::timeout_at(deadline, pre.instantiate_async(&mut store)).await {
        Ok(Ok(instance)) => Ok((store, instance)),
        Ok(Err(e)) => {
            release(store);
            Err(classify(e, true))
        }
        Err(_) => {
            release(store);
            Err(Outcome::Timeout)
        }
    }
}
