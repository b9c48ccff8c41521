//! WASI 0.2 components: commands (`wasi:cli/run`) and HTTP handlers
//! (`wasi:http/incoming-handler`).
//!
//! The kind is told by the component's exports, any 0.2 minor version
//! ([`entry`]). Both get WASI 0.2 with no filesystem, environment, arguments
//! or sockets, and outbound `wasi:http` under the invocation's policy
//! ([`crate::outbound`]).
//!
//! - A command reads its arguments on stdin and writes its result on
//!   stdout, as a WASI core command does ([`crate::command`]); `run`
//!   returning `err` is an exec error with the end of stderr.
//! - An HTTP handler gets `POST /` with the arguments as its
//!   `application/json` body. The body of a 2xx response is the result,
//!   decoded as a command's output is; another status is an exec error
//!   with the status and the start of the body. Its stdout goes to the log.
//!
//! Either way, a trap's message starts with the end of stderr (a Rust
//! panic's text).

use crate::Error;
use crate::command;
use crate::invocation::{Limiter, Outcome, classify, ended, release};
use crate::logs;
use crate::outbound::Outbound;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{
    Component, ComponentExportIndex, InstancePre, Linker, Resource, ResourceTable,
};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The exports that make a component a function, matched by prefix so that
/// a guest built against any 0.2 minor version runs.
pub const HTTP_HANDLER: &str = "wasi:http/incoming-handler@0.2.";
pub const CLI_RUN: &str = "wasi:cli/run@0.2.";

/// Entries a component's resource table may hold at once: streams,
/// pollables, fields, requests. Each is host memory that no store limit
/// counts (see [`MAX_FIELDS_BYTES`] and
/// [`crate::outbound::BODY_CHUNK_BYTES`] for the largest); a function
/// needs a few dozen.
pub const MAX_RESOURCES: usize = 1_000;

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

/// WASI 0.2 (cli, clocks, random, io, and filesystem and sockets with
/// nothing to reach) and wasi:http.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<ComponentState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// The function a component's kind calls: `run` of `wasi:cli/run`, or
/// `handle` of `wasi:http/incoming-handler`.
#[derive(Clone, Copy)]
pub enum Entry {
    Run(ComponentExportIndex),
    Handle(ComponentExportIndex),
}

/// The entry point a component's exports make it. An HTTP handler that is
/// also a command is run as a handler, as `wasmtime serve` would.
pub fn entry(component: &Component, engine: &Engine) -> Result<Entry, Error> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    // The function `func` of the export named with `prefix`, if there is
    // one, checked for its number of parameters and results (its types
    // are checked when it is called).
    let find = |prefix: &str, func: &str, params: usize, results: usize| {
        let name = names.iter().find(|n| n.starts_with(prefix))?;
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
                "`{func}` of the component's `{name}` export is not the function WASI 0.2 defines"
            )),
            None => Err(format!("the component's `{name}` export has no `{func}`")),
        })
    };
    let refused = |reason: String| Error::invalid_module(crate::logs::escape(reason.as_bytes()));
    match (
        find(HTTP_HANDLER, "handle", 2, 0),
        find(CLI_RUN, "run", 0, 1),
    ) {
        (Some(handle), _) => handle.map(Entry::Handle).map_err(refused),
        (None, Some(run)) => run.map(Entry::Run).map_err(refused),
        (None, None) => Err(refused(format!(
            "component does not export `{HTTP_HANDLER}x` (an HTTP handler) or `{CLI_RUN}x` \
             (a command); it exports {}",
            crate::module::listed(names.iter().copied())
        ))),
    }
}

/// A command's stdout and stderr, or a handler's stderr.
pub enum Stdio {
    Command(command::Stdout, command::Stderr),
    Handler(command::Stderr),
}

/// Instantiates and runs a component, then releases its store.
pub async fn run(
    mut store: Store<ComponentState>,
    pre: InstancePre<ComponentState>,
    entry: Entry,
    stdio: Stdio,
    input: Bytes,
    max_response: usize,
) -> Outcome {
    let deadline = tokio::time::Instant::from_std(store.data().outbound.deadline);
    let instance = match tokio::time::timeout_at(deadline, pre.instantiate_async(&mut store)).await
    {
        Ok(Ok(instance)) => instance,
        Ok(Err(e)) => {
            release(store);
            return classify(e, true);
        }
        Err(_) => {
            release(store);
            return Outcome::Timeout;
        }
    };
    match (entry, stdio) {
        (Entry::Run(run), Stdio::Command(stdout, stderr)) => {
            let outcome = match instance.get_typed_func::<(), (Result<(), ()>,)>(&mut store, run) {
                Err(e) => Outcome::Instantiate(format!("`run` has the wrong type: {e:#}")),
                Ok(run) => {
                    let called = tokio::time::timeout_at(deadline, run.call_async(&mut store, ()));
                    let ended = match ended(called.await) {
                        Ok(Some((Err(()),))) => {
                            Err(Outcome::ExecError("run returned an error".into()))
                        }
                        Ok(_) => Ok(()),
                        Err(failed) => Err(failed),
                    };
                    command::outcome(ended, &stdout, &stderr)
                }
            };
            release(store);
            outcome
        }
        (Entry::Handle(handle), Stdio::Handler(stderr)) => {
            match serve(store, instance, handle, input, max_response).await {
                Ok(response) => response,
                Err(Outcome::Exit(status)) => {
                    stderr.exec_error(format!("exited with status {status}"))
                }
                Err(failed) => stderr.explain(failed),
            }
        }
        _ => {
            release(store);
            Outcome::Instantiate("the entry point and stdio do not match".into())
        }
    }
}

type Handle = (
    Resource<HostIncomingRequest>,
    Resource<HostResponseOutparam>,
);

/// Sends the request and reads the response while the handler runs; the
/// store goes when the handler returns, so a response it never set or
/// never finished ends too.
async fn serve(
    mut store: Store<ComponentState>,
    instance: wasmtime::component::Instance,
    handle: ComponentExportIndex,
    input: Bytes,
    max_response: usize,
) -> Result<Outcome, Outcome> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri("http://localhost/")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, input.len())
        .body(
            Full::new(input)
                .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} }),
        );
    let prepared = request
        .map_err(wasmtime::Error::new)
        .and_then(|request| {
            let mut http = store.data_mut().http();
            let request = http.new_incoming_request::<_>(Scheme::Http, request)?;
            let out = http.new_response_outparam(tx)?;
            Ok((request, out))
        })
        .and_then(|args| {
            let func = instance.get_typed_func::<Handle, ()>(&mut store, handle)?;
            Ok((func, args))
        });
    let (func, args) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            release(store);
            return Err(Outcome::Instantiate(format!("{e:#}")));
        }
    };
    // The deadline is kept here, not around the whole exchange, so that
    // the store is released (elsewhere, if big) whatever happens.
    let deadline = tokio::time::Instant::from_std(store.data().outbound.deadline);
    let guest = async move {
        let called = tokio::time::timeout_at(deadline, func.call_async(&mut store, args)).await;
        // The response and its body end with their resources: at once,
        // even if the store itself is dropped later, elsewhere.
        drop(std::mem::take(&mut store.data_mut().table));
        release(store);
        called
    };
    let mut guest = Box::pin(guest);
    let mut response = Box::pin(response(rx, max_response));
    tokio::select! {
        called = &mut guest => {
            let response = response.await;
            // a failure of the handler wins over what it answered
            ended(called).and(response)
        }
        answered = &mut response => match answered {
            // a body over the cap ends the handler now: it might write on
            // until the deadline, holding its slot
            Err(Outcome::Trap(over_cap)) => {
                crate::invocation::elsewhere(Box::new(guest));
                Err(Outcome::Trap(over_cap))
            }
            answered => ended(guest.await).and(answered),
        },
    }
}

/// Bytes of a failed response's body quoted in its exec error.
const QUOTED_BODY: usize = 256;

type Sent = Result<
    hyper::Response<wasmtime_wasi_http::p2::body::HyperOutgoingBody>,
    wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
>;

/// The handler's response: its body if the status is 2xx (at most
/// `max` bytes), else an exec error with the status and the body's start.
/// A body over `max` is the one trap it returns.
async fn response(
    rx: tokio::sync::oneshot::Receiver<Sent>,
    max: usize,
) -> Result<Outcome, Outcome> {
    let response = match rx.await {
        Err(_) => return Ok(Outcome::NoResponse),
        Ok(Err(code)) => {
            return Err(Outcome::ExecError(format!(
                "the handler answered with an error: {code:?}"
            )));
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Outcome::ExecError(format!(
                "the response body failed after {} bytes: {e}",
                bytes.len()
            ))
        })?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > max {
                return Err(Outcome::Trap(format!(
                    "the response body is over the response cap of {max} bytes"
                )));
            }
            bytes.extend_from_slice(data);
        }
    }
    if !status.is_success() {
        let start = &bytes[..bytes.len().min(QUOTED_BODY)];
        let start = logs::escape(start);
        return Err(Outcome::ExecError(if start.is_empty() {
            format!("status {}", status.as_u16())
        } else {
            format!("status {}: {start}", status.as_u16())
        }));
    }
    Ok(if bytes.iter().all(u8::is_ascii_whitespace) {
        Outcome::NoResponse
    } else {
        Outcome::Output(bytes)
    })
}
