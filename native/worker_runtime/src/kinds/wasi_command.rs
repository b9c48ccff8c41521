//! WASI commands: core modules that export `_start` instead of `__invoke`,
//! as any program built for `wasm32-wasip1` does.
//!
//! A command reads its arguments, as JSON text, on stdin, and writes its
//! result on stdout; its stderr goes to the log, and its end into the
//! message of a failure ([`crate::stdio::command_outcome`] says how each
//! end of a run becomes an outcome).

use crate::Error;
use crate::core_host::{self, HostState, Linked};
use crate::outcome::{Outcome, ended};
use crate::stdio::{self, command_outcome};
use crate::store::{Run, Start, release};
use wasmtime::{Module, ModuleExport};

/// The export that makes a core module a WASI command.
pub const START: &str = "_start";

/// `_start`, if the module exports it, checked for its type.
pub fn recognize(module: &Module) -> Option<Result<ModuleExport, Error>> {
    core_host::find_func(module, START, "() -> ()", |params, results| {
        params.is_empty() && results.is_empty()
    })
}

/// Starts an invocation: the arguments on stdin, the result on stdout.
pub fn start(linked: &Linked, mut start: Start) -> Run {
    let (stdout, stderr) = stdio::attach_command(&mut start);
    let store = core_host::store(start);
    let linked = linked.clone();
    Box::pin(async move {
        let mut store = store;
        let ended = call(&mut store, &linked).await;
        release(store);
        match ended {
            Ok(ended) => command_outcome(ended, &stdout, &stderr),
            Err(outcome) => outcome,
        }
    })
}

/// How `_start` ended; `Err` if it never ran.
async fn call(
    store: &mut wasmtime::Store<HostState>,
    linked: &Linked,
) -> Result<Result<(), Outcome>, Outcome> {
    let instance = core_host::instantiate(store, linked).await?;
    // _initialize ends the run as _start would: exit 0 is its end, a
    // failure carries stderr and the status
    match core_host::initialize(store, linked, &instance).await {
        Ok(Some(())) => {}
        Ok(None) => return Ok(Ok(())),
        Err(failed) => return Ok(Err(failed)),
    }
    let Some(Ok(run)) = instance
        .get_module_export(&mut *store, &linked.export)
        .and_then(wasmtime::Extern::into_func)
        .map(|f| f.typed::<(), ()>(&*store))
    else {
        return Err(Outcome::Instantiate(format!("exported {START} missing")));
    };
    let deadline = tokio::time::Instant::from_std(store.data().deadline);
    let called = tokio::time::timeout_at(deadline, run.call_async(&mut *store, ())).await;
    Ok(ended(called).map(drop))
}
