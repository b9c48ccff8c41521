//! The host side of the FunLess ABI: the `fl_imps` imports, plus WASI
//! preview1 with no filesystem, environment or sockets.
//!
//! Every pointer and length from the guest is checked against linear memory
//! before it is used (see [`crate::memory`]), and sizes the guest chooses are
//! checked against the invocation's caps before anything is copied. A guest
//! that breaks these rules gets a trap ([`GuestFault`]), never a host crash.

use crate::http;
use crate::invocation::Limits;
use crate::logs::{LogSink, Stream};
use crate::memory::{self, addr};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::{Caller, Linker, Memory, Result};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::wasi_snapshot_preview1::WasiSnapshotPreview1;

pub const IMPORT_MODULE: &str = "fl_imps";

/// A guest broke the ABI (a bad pointer, an oversized buffer, ...). It ends
/// the invocation as a trap carrying this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GuestFault(pub String);

impl From<memory::OutOfBounds> for GuestFault {
    fn from(e: memory::OutOfBounds) -> Self {
        GuestFault(e.to_string())
    }
}

fn fault(message: String) -> wasmtime::Error {
    wasmtime::Error::new(GuestFault(message))
}

/// Per-invocation state, owned by the store.
pub struct HostState {
    pub wasi: WasiP1Ctx,
    pub limiter: crate::invocation::Limiter,
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

/// Subscriptions one WASI `poll_oneoff` may pass. WASI handles them all in
/// one host call, in one time slice: 490,000 held a scheduler for 233 ms.
/// With no files and no sockets, a guest has little to wait on but clocks.
pub const MAX_POLL_SUBSCRIPTIONS: u32 = 1024;

fn memory_of<'a>(
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
fn read_capped(
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

/// Everything a guest may import: WASI preview1 (with `poll_oneoff` capped,
/// then handed to WASI's own implementation) and `fl_imps`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    wasmtime_wasi::p1::add_to_linker_async(linker, |state| &mut state.wasi)?;
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

    linker.func_wrap(
        IMPORT_MODULE,
        "__get_input_data",
        |mut caller: Caller<'_, HostState>, ptr: i32| -> Result<()> {
            let (memory, state) = memory_of(&mut caller)?;
            memory::write(memory, "__get_input_data", addr(ptr), &state.input)
                .map_err(GuestFault::from)?;
            Ok(())
        },
    )?;

    linker.func_wrap(
        IMPORT_MODULE,
        "__insert_response",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<()> {
            let (memory, state) = memory_of(&mut caller)?;
            let cap = state.limits.max_response_bytes;
            state.response = Some(read_capped(memory, "__insert_response", ptr, len, cap)?);
            Ok(())
        },
    )?;

    linker.func_wrap(
        IMPORT_MODULE,
        "__insert_error",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<()> {
            let (memory, state) = memory_of(&mut caller)?;
            let cap = state.limits.max_response_bytes;
            state.error = Some(read_capped(memory, "__insert_error", ptr, len, cap)?);
            Ok(())
        },
    )?;

    linker.func_wrap(
        IMPORT_MODULE,
        "__console_log",
        |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| -> Result<()> {
            let (memory, state) = memory_of(&mut caller)?;
            let text = memory::read(memory, "__console_log", addr(ptr), addr(len))
                .map_err(GuestFault::from)?;
            state.logs.line(Stream::Console, text);
            Ok(())
        },
    )?;

    linker.func_wrap_async(
        IMPORT_MODULE,
        "__http_request",
        |mut caller: Caller<'_, HostState>,
         (
            resp_ptr,
            resp_len_ptr,
            status_ptr,
            method,
            url_ptr,
            url_len,
            headers_ptr,
            headers_len,
            body_ptr,
            body_len,
        ): (i32, i32, i32, i32, i32, i32, i32, i32, i32, i32)| {
            Box::new(async move {
                let request = {
                    let (memory, state) = memory_of(&mut caller)?;
                    memory::check(memory.len(), "__http_request length", addr(resp_len_ptr), 4)
                        .map_err(GuestFault::from)?;
                    memory::check(memory.len(), "__http_request status", addr(status_ptr), 2)
                        .map_err(GuestFault::from)?;
                    let cap = state.limits.max_http_request_bytes;
                    let url = read_capped(memory, "__http_request url", url_ptr, url_len, cap)?;
                    let headers = read_capped(
                        memory,
                        "__http_request headers",
                        headers_ptr,
                        headers_len,
                        cap,
                    )?;
                    let body = read_capped(memory, "__http_request body", body_ptr, body_len, cap)?;
                    state.http_requests += 1;
                    if state.http_requests > state.limits.max_http_requests {
                        Err(http::Failure::Refused(format!(
                            "more than {} requests in one invocation",
                            state.limits.max_http_requests
                        )))
                    } else {
                        http::Request::parse(method, &url, &headers, body)
                            .map_err(http::Failure::Failed)
                    }
                };
                let (deadline, max_body, logs, policy) = {
                    let state = caller.data();
                    (
                        state.deadline,
                        state.limits.max_http_body_bytes,
                        state.logs.clone(),
                        state
                            .limits
                            .http_allow
                            .clone()
                            .unwrap_or_else(crate::policy::Policy::none),
                    )
                };
                let outcome = match request {
                    Ok(request) => {
                        let url = request.url.clone();
                        http::perform(request, &policy, deadline, max_body)
                            .await
                            .map_err(|failure| (format!("{url}: {failure}"), failure))
                    }
                    Err(failure) => Err((failure.to_string(), failure)),
                };
                let (status, body) = match outcome {
                    Ok(response) => {
                        logs.http(Ok(()));
                        (response.status, response.body)
                    }
                    Err((reason, failure)) => {
                        logs.http(Err(matches!(failure, http::Failure::Refused(_))));
                        logs.line(
                            Stream::Host,
                            format!("http request failed: {reason}").as_bytes(),
                        );
                        (0, Vec::new())
                    }
                };
                let (memory, _) = memory_of(&mut caller)?;
                memory::write(
                    memory,
                    "__http_request response body",
                    addr(resp_ptr),
                    &body,
                )
                .map_err(GuestFault::from)?;
                memory::write(
                    memory,
                    "__http_request length",
                    addr(resp_len_ptr),
                    &(body.len() as u32).to_le_bytes(),
                )
                .map_err(GuestFault::from)?;
                memory::write(
                    memory,
                    "__http_request status",
                    addr(status_ptr),
                    &status.to_le_bytes(),
                )
                .map_err(GuestFault::from)?;
                Ok(())
            })
        },
    )?;
    Ok(())
}
