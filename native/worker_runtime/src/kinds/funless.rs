//! FunLess functions: core modules that export `__invoke(len) -> i32` and
//! import `fl_imps`, the FunLess ABI.
//!
//! The worker calls `__invoke` with the length of the arguments' JSON text;
//! the guest reads them with `__get_input_data`, answers with
//! `__insert_response` (returning 0) or `__insert_error` (returning 1),
//! logs with `__console_log`, and may send HTTP requests with
//! `__http_request` ([`crate::outbound::abi`]). Its stdout and stderr are
//! log lines.

use crate::Error;
use crate::core_host::{self, HostState, Linked, memory_of, read_capped};
use crate::logs::Stream;
use crate::memory::{self, addr};
use crate::outbound::abi;
use crate::outbound::{Failure, Why, shown};
use crate::outcome::{GuestFault, Outcome, classify};
use crate::policy::Policy;
use crate::stdio::Output;
use crate::store::{Run, Start, release};
use wasmtime::{Caller, Linker, Module, ModuleExport, Result};

/// The export that makes a core module a FunLess function.
pub const INVOKE: &str = "__invoke";

/// The module of the FunLess ABI's imports.
pub const IMPORT_MODULE: &str = "fl_imps";

/// `__invoke`, if the module exports it, checked for its type.
pub fn recognize(module: &Module) -> Option<std::result::Result<ModuleExport, Error>> {
    core_host::find_func(module, INVOKE, "(i32) -> i32", |params, results| {
        matches!(params, [wasmtime::ValType::I32]) && matches!(results, [wasmtime::ValType::I32])
    })
}

/// Starts an invocation: stdout and stderr to the log.
pub fn start(linked: &Linked, mut start: Start) -> Run {
    let (stdout, stderr) = (start.log(Stream::Stdout), start.log(Stream::Stderr));
    start.wasi.stdout(Output(stdout)).stderr(Output(stderr));
    let store = core_host::store(start);
    let linked = linked.clone();
    Box::pin(async move {
        let mut store = store;
        let outcome = call(&mut store, &linked).await;
        release(store);
        outcome
    })
}

async fn call(store: &mut wasmtime::Store<HostState>, linked: &Linked) -> Outcome {
    let instance = match core_host::instantiate(store, linked).await {
        Ok(instance) => instance,
        Err(outcome) => return outcome,
    };
    match core_host::initialize(store, linked, &instance).await {
        Ok(Some(())) => {}
        Ok(None) => return Outcome::Exit(0),
        Err(outcome) => return outcome,
    }
    let Some(Ok(invoke)) = instance
        .get_module_export(&mut *store, &linked.export)
        .and_then(wasmtime::Extern::into_func)
        .map(|f| f.typed::<i32, i32>(&*store))
    else {
        return Outcome::Instantiate(format!("exported {INVOKE} missing"));
    };
    let deadline = tokio::time::Instant::from_std(store.data().deadline);
    let len = store.data().input.len() as i32;
    let called = tokio::time::timeout_at(deadline, invoke.call_async(&mut *store, len)).await;
    let Ok(called) = called else {
        return Outcome::Timeout;
    };
    match called {
        Ok(0) => match store.data_mut().response.take() {
            Some(response) => Outcome::Response(response),
            None => Outcome::NoResponse,
        },
        Ok(1) => Outcome::ExecError(match store.data_mut().error.take() {
            Some(text) => String::from_utf8_lossy(&text).into_owned(),
            None => "the function failed without an error message".into(),
        }),
        Ok(other) => Outcome::BadReturn(other),
        Err(e) => classify(e, false),
    }
}

/// The `fl_imps` imports, added to the core modules' linker.
pub fn add_imports(linker: &mut Linker<HostState>) -> Result<()> {
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
                        Err(Failure::refused(format!(
                            "more than {} requests in one invocation",
                            state.limits.max_http_requests
                        )))
                    } else {
                        abi::Request::parse(method, &url, &headers, body)
                            .map_err(|reason| Failure::new(Why::BadRequest, reason))
                    }
                };
                let (deadline, max_body, logs, policy) = {
                    let state = caller.data();
                    (
                        state.deadline,
                        state.limits.max_http_body_bytes,
                        state.logs.clone(),
                        state.limits.http_allow.clone().unwrap_or_else(Policy::none),
                    )
                };
                let outcome = match request {
                    Ok(request) => {
                        let url = shown(&request.url);
                        abi::perform(request, &policy, deadline, max_body)
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
                        logs.http(Err(failure.is_refused()));
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
