//! `Worker.Runtime.Module`: compiling a function into a shared resource.

use crate::atoms;
use rustler::{Binary, Encoder, Env, ResourceArc, Term};
use worker_runtime::{CompileError, CompiledModule};

/// A compiled, linked function. Any process may invoke it concurrently; it
/// lives as long as some process holds a reference.
pub struct ModuleResource(pub CompiledModule);

#[rustler::resource_impl]
impl rustler::Resource for ModuleResource {}

/// Compiling runs the Wasm validator and Cranelift, whose stack use a hostile
/// module can drive up; a dirty scheduler has only a few hundred KiB of
/// stack, so the work happens on a thread of its own.
const COMPILE_STACK: usize = 32 << 20;

/// `{:ok, module, wasm_bytes, initial_memory}` or `{:error, reason}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn module_compile<'a>(env: Env<'a>, wasm: Binary) -> Term<'a> {
    let bytes = wasm.as_slice();
    let result = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("fl-compile".into())
            .stack_size(COMPILE_STACK)
            .spawn_scoped(scope, || worker_runtime::compile(bytes))
            .map_err(|e| CompileError::Runtime(format!("cannot start a compile thread: {e}")))
            .and_then(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(CompileError::Invalid("the compiler panicked".into())))
            })
    });
    match result {
        Ok(module) => {
            let wasm_bytes = module.wasm_bytes;
            let initial_memory = module.initial_memory;
            (
                atoms::ok(),
                ResourceArc::new(ModuleResource(module)),
                wasm_bytes,
                initial_memory,
            )
                .encode(env)
        }
        Err(CompileError::Invalid(reason)) => {
            (atoms::error(), (atoms::invalid_module(), reason)).encode(env)
        }
        Err(CompileError::Runtime(reason)) => {
            (atoms::error(), (atoms::runtime_unavailable(), reason)).encode(env)
        }
    }
}

/// `%{in_flight: n}`: invocations alive right now, in any process.
#[rustler::nif]
fn runtime_stats(env: Env) -> Term {
    let in_flight = worker_runtime::engine::runtime().map_or(0, |rt| rt.in_flight());
    let map = Term::map_new(env);
    map.map_put(atoms::in_flight(), in_flight).unwrap_or(map)
}
