//! HTTP components: WASI 0.2 components that export
//! `wasi:http/incoming-handler` (any 0.2 minor version), and WASI 0.3
//! components that export `wasi:http/handler` (0.3.x, whose `handle` is
//! async). One that is also a command is run as a handler, as `wasmtime
//! serve` would.
//!
//! The handler gets `POST /` with the arguments as its `application/json`
//! body. The body of a 2xx response is the result, JSON decoded or else
//! UTF-8 text byte for byte ([`Outcome::Body`]); another status is an exec error with the status and the
//! start of the body. Its stdout goes to the log; a trap's message starts
//! with the end of its stderr (a Rust panic's text).

use crate::Error;
use crate::component_host::{self, ComponentState, Linked};
use crate::outcome::{Outcome, ended};
use crate::stdio;
use crate::store::{Run, Start, elsewhere, release};
use crate::text::escape;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::convert::Infallible;
use wasmtime::component::{Accessor, Component, ComponentExportIndex, Resource, TypedFunc};
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode as P3ErrorCode;

/// The export that makes a component an HTTP handler, matched by prefix so
/// that a guest built against any 0.2 minor version runs.
pub const HTTP_HANDLER: &str = "wasi:http/incoming-handler@0.2.";

/// The same for WASI 0.3: any 0.3 patch version, not a release candidate.
pub const HTTP_HANDLER_P3: &str = "wasi:http/handler@0.3.";

/// `handle` of `wasi:http/handler@0.3`, if the component exports it (one
/// built against a release candidate is refused).
pub fn recognize_p3(
    component: &Component,
    engine: &Engine,
) -> Option<Result<ComponentExportIndex, Error>> {
    component_host::find_p3_export(component, engine, HTTP_HANDLER_P3, "handle", 1, 1)
        .map(|found| found.map_err(Error::refused))
}

/// `handle` of `wasi:http/incoming-handler`, if the component exports it.
pub fn recognize(
    component: &Component,
    engine: &Engine,
) -> Option<Result<ComponentExportIndex, Error>> {
    component_host::find_export(component, engine, HTTP_HANDLER, "handle", 2, 0)
        .map(|found| found.map_err(Error::refused))
}

/// Starts an invocation: the arguments as a request's body, the result the
/// response's.
pub fn start(linked: &Linked, start: Start) -> Run {
    run(linked, start, false)
}

/// Starts an invocation of a WASI 0.3 handler, as [`start`] does; its
/// `handle` is called as an async export, in the store's event loop.
pub fn start_p3(linked: &Linked, start: Start) -> Run {
    run(linked, start, true)
}

fn run(linked: &Linked, mut start: Start, p3: bool) -> Run {
    let stderr = stdio::attach_handler(&mut start);
    let max_response = start.limits.max_response_bytes;
    let input = start.input.clone();
    let store = component_host::store(start);
    let linked = linked.clone();
    Box::pin(async move {
        let (store, instance) = match component_host::instantiate(store, &linked.pre).await {
            Ok(instantiated) => instantiated,
            Err(outcome) => return outcome,
        };
        let served = if p3 {
            serve_p3(store, instance, linked.export, input, max_response).await
        } else {
            serve(store, instance, linked.export, input, max_response).await
        };
        match served {
            Ok(response) => response,
            Err(Outcome::Exit(status)) => stderr.exec_error(format!("exited with status {status}")),
            Err(failed) => stderr.explain(failed),
        }
    })
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
    let prepared = request(input)
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
                elsewhere(Box::new(guest));
                Err(Outcome::Trap(over_cap))
            }
            answered => ended(guest.await).and(answered),
        },
    }
}

/// The request a handler gets: `POST http://localhost/`, the arguments as
/// its JSON body.
fn request(
    input: Bytes,
) -> http::Result<
    http::Request<
        impl http_body::Body<Data = Bytes, Error = wasmtime_wasi_http::Error> + Send + 'static,
    >,
> {
    http::Request::builder()
        .method(http::Method::POST)
        .uri("http://localhost/")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, input.len())
        .body(
            Full::new(input)
                .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} }),
        )
}

pub(crate) type HandleP3 = (Resource<wasmtime_wasi_http::p3::Request>,);
pub(crate) type HandledP3 = (Result<Resource<wasmtime_wasi_http::p3::Response>, P3ErrorCode>,);
pub(crate) type HandlerP3 = TypedFunc<HandleP3, HandledP3>;

/// A WASI 0.3 handler's exchange, in the store's event loop: the request
/// goes in, the response comes back, and its body is read while the guest
/// goes on writing it. The deadline is around the whole of it; the store
/// goes when it ends, the guest's tasks still running or not.
async fn serve_p3(
    mut store: Store<ComponentState>,
    instance: wasmtime::component::Instance,
    handle: ComponentExportIndex,
    input: Bytes,
    max_response: usize,
) -> Result<Outcome, Outcome> {
    let func = match instance.get_typed_func::<HandleP3, HandledP3>(&mut store, handle) {
        Ok(func) => func,
        Err(e) => {
            release(store);
            return Err(Outcome::Instantiate(format!("{e:#}")));
        }
    };
    let deadline = tokio::time::Instant::from_std(store.data().outbound.deadline);
    let exchange = store.run_concurrent(async move |accessor| {
        exchange_p3(accessor, func, input, max_response).await
    });
    let exchanged = tokio::time::timeout_at(deadline, exchange).await;
    release(store);
    match exchanged {
        Err(_) => Err(Outcome::Timeout),
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Err(called_out(e)),
    }
}

/// One request to a WASI 0.3 handler, in its store's event loop: `POST /`
/// with `input` as the body, and the response's body read (at most
/// `max_response` bytes) while the guest writes it.
pub(crate) async fn exchange_p3(
    accessor: &Accessor<ComponentState>,
    func: HandlerP3,
    input: Bytes,
    max_response: usize,
) -> Result<Outcome, Outcome> {
    let request = request(input).map_err(|e| Outcome::Instantiate(format!("{e:#}")))?;
    let (parts, body) = request.into_parts();
    let headers = accessor.with(|mut store| {
        wasmtime_wasi_http::FieldMap::new_immutable(store.data_mut().http().hooks, parts.headers)
    });
    let (request, request_io) = wasmtime_wasi_http::p3::Request::new(
        parts.method,
        parts.uri.scheme().cloned(),
        parts.uri.authority().cloned(),
        parts.uri.path_and_query().cloned(),
        headers,
        None,
        body,
    );
    let request = accessor
        .with(|mut store| store.data_mut().http().table.push(request))
        .map_err(|e| Outcome::Instantiate(format!("{e:#}")))?;
    let (response,) = func
        .call_concurrent(accessor, (request,))
        .await
        .map_err(called_out)?;
    let response = response.map_err(|code| {
        Outcome::ExecError(format!("the handler answered with an error: {code:?}"))
    })?;
    let response = accessor
        .with(|mut store| {
            let response = store.data_mut().http().table.delete(response)?;
            response.into_http(&mut store, request_io)
        })
        .map_err(|e| Outcome::Trap(format!("{e:#}")))?;
    let (parts, body) = response.into_parts();
    read_body(parts.status, body, max_response).await
}

/// The outcome of a handler's call that failed (a trap, an exit, the
/// deadline's interrupt).
pub(crate) fn called_out(error: wasmtime::Error) -> Outcome {
    match ended::<()>(Ok(Err(error))) {
        Ok(_) => Outcome::NoResponse,
        Err(failed) => failed,
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
    read_body(status, response.into_body(), max).await
}

/// A response's body, if `status` is 2xx (at most `max` bytes), else an
/// exec error with the status and the body's start. A body over `max` is
/// the one trap it returns.
async fn read_body<B>(status: http::StatusCode, mut body: B, max: usize) -> Result<Outcome, Outcome>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
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
        let start = escape(start);
        return Err(Outcome::ExecError(if start.is_empty() {
            format!("status {}", status.as_u16())
        } else {
            format!("status {}: {start}", status.as_u16())
        }));
    }
    Ok(if bytes.is_empty() {
        Outcome::NoResponse
    } else {
        Outcome::Body(bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;

    /// What `response` makes of a handler that answers `status` with `body`.
    async fn answered(status: u16, body: &'static [u8], max: usize) -> Result<Outcome, Outcome> {
        let (tx, rx) = tokio::sync::oneshot::channel::<Sent>();
        let body = Full::new(Bytes::from_static(body))
            .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} })
            .boxed_unsync();
        let sent = hyper::Response::builder()
            .status(status)
            .body(body)
            .unwrap();
        let _ = tx.send(Ok(sent));
        response(rx, max).await
    }

    #[tokio::test]
    async fn a_2xx_body_is_the_result_as_sent_and_empty_is_no_response() {
        assert_eq!(
            answered(200, b"{\"a\":1}", 64).await,
            Ok(Outcome::Body(b"{\"a\":1}".to_vec()))
        );
        assert_eq!(
            answered(200, b"Hello!\n", 64).await,
            Ok(Outcome::Body(b"Hello!\n".to_vec()))
        );
        assert_eq!(
            answered(201, b"\n ", 64).await,
            Ok(Outcome::Body(b"\n ".to_vec()))
        );
        assert_eq!(answered(204, b"", 64).await, Ok(Outcome::NoResponse));
    }

    #[tokio::test]
    async fn another_status_is_an_exec_error_quoting_the_body_escaped() {
        assert_eq!(
            answered(404, b"not here\n\x1b[31m", 64).await,
            Err(Outcome::ExecError(
                "status 404: not here\\n\\x1b[31m".into()
            ))
        );
        assert_eq!(
            answered(500, b"", 64).await,
            Err(Outcome::ExecError("status 500".into()))
        );
        let long = answered(500, &[b'x'; 1000], 4096).await;
        let Err(Outcome::ExecError(message)) = long else {
            panic!("{long:?}")
        };
        assert_eq!(message.len(), "status 500: ".len() + QUOTED_BODY);
    }

    #[tokio::test]
    async fn a_body_over_the_cap_traps() {
        assert_eq!(
            answered(200, b"12345", 4).await,
            Err(Outcome::Trap(
                "the response body is over the response cap of 4 bytes".into()
            ))
        );
    }

    #[tokio::test]
    async fn no_answer_and_an_error_code() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Sent>();
        drop(tx);
        assert_eq!(response(rx, 64).await, Ok(Outcome::NoResponse));

        let (tx, rx) = tokio::sync::oneshot::channel::<Sent>();
        let _ = tx.send(Err(ErrorCode::InternalError(Some("why".into()))));
        let Err(Outcome::ExecError(message)) = response(rx, 64).await else {
            panic!("not an exec error")
        };
        assert!(
            message.contains("the handler answered with an error"),
            "{message}"
        );
        assert!(message.contains("why"), "{message}");
    }
}
