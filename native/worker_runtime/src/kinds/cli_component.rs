//! Command components: components that export `wasi:cli/run`, WASI 0.2
//! (any 0.2 minor version, as any program built for `wasm32-wasip2` does)
//! or WASI 0.3 (0.3.x, whose `run` is async).
//!
//! A command component reads its arguments on stdin and writes its result
//! on stdout, as a WASI core command does; `run` returning `err` is an exec
//! error with the end of stderr ([`crate::stdio::command_outcome`]).

use crate::Error;
use crate::component_host::{self, Linked};
use crate::outcome::{Outcome, ended};
use crate::stdio::{self, command_outcome};
use crate::store::{Run, Start, release};
use wasmtime::Engine;
use wasmtime::component::{Component, ComponentExportIndex};

/// The export that makes a component a command, matched by prefix so that
/// a guest built against any 0.2 minor version runs.
pub const CLI_RUN: &str = "wasi:cli/run@0.2.";

/// The same for WASI 0.3: any 0.3 patch version, not a release candidate.
pub const CLI_RUN_P3: &str = "wasi:cli/run@0.3.";

/// `run` of `wasi:cli/run@0.2`, if the component exports it.
pub fn recognize(
    component: &Component,
    engine: &Engine,
) -> Option<Result<ComponentExportIndex, Error>> {
    component_host::find_export(component, engine, CLI_RUN, "run", 0, 1)
        .map(|found| found.map_err(Error::refused))
}

/// `run` of `wasi:cli/run@0.3`, if the component exports it (one built
/// against a release candidate is refused).
pub fn recognize_p3(
    component: &Component,
    engine: &Engine,
) -> Option<Result<ComponentExportIndex, Error>> {
    component_host::find_p3_export(component, engine, CLI_RUN_P3, "run", 0, 1)
        .map(|found| found.map_err(Error::refused))
}

/// Starts an invocation of a WASI 0.2 command: the arguments on stdin, the
/// result on stdout.
pub fn start(linked: &Linked, start: Start) -> Run {
    run(linked, start, false)
}

/// Starts an invocation of a WASI 0.3 command, as [`start`] does; its
/// `run` is called as an async export, in the store's event loop.
pub fn start_p3(linked: &Linked, start: Start) -> Run {
    run(linked, start, true)
}

fn run(linked: &Linked, mut start: Start, p3: bool) -> Run {
    let (stdout, stderr) = stdio::attach_command(&mut start);
    let store = component_host::store(start);
    let linked = linked.clone();
    Box::pin(async move {
        let (mut store, instance) = match component_host::instantiate(store, &linked.pre).await {
            Ok(instantiated) => instantiated,
            Err(outcome) => return outcome,
        };
        let deadline = tokio::time::Instant::from_std(store.data().outbound.deadline);
        let outcome = match instance
            .get_typed_func::<(), (Result<(), ()>,)>(&mut store, linked.export)
        {
            Err(e) => Outcome::Instantiate(format!("`run` has the wrong type: {e:#}")),
            Ok(run) => {
                let called = if p3 {
                    let called = store.run_concurrent(async move |accessor| {
                        run.call_concurrent(accessor, ()).await
                    });
                    // WASI 0.3 reports a write past the response cap to the
                    // guest, which may go on writing until the deadline:
                    // the run ends at once instead, as ended (command_outcome
                    // makes it the cap's trap)
                    let mut called = std::pin::pin!(called);
                    let capped = std::future::poll_fn(|cx| match stdout.overflowed() {
                        true => std::task::Poll::Ready(Ok(Ok((Ok(()),)))),
                        false => called.as_mut().poll(cx),
                    });
                    tokio::time::timeout_at(deadline, capped)
                        .await
                        .map(|result| result.and_then(|returned| returned))
                } else {
                    tokio::time::timeout_at(deadline, run.call_async(&mut store, ())).await
                };
                let ended = match ended(called) {
                    Ok(Some((Err(()),))) => Err(Outcome::ExecError("run returned an error".into())),
                    Ok(_) => Ok(()),
                    Err(failed) => Err(failed),
                };
                command_outcome(ended, &stdout, &stderr)
            }
        };
        release(store);
        outcome
    })
}
