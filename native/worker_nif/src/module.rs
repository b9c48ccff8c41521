//! `Worker.Runtime.Module`: compiling a function into a shared resource.

use crate::atoms;
use rustler::{Binary, Encoder, Env, OwnedEnv, ResourceArc, Term};
use std::sync::{Arc, OnceLock};
use worker_runtime::logs::LineBudget;
use worker_runtime::module::Isolation;
use worker_runtime::{CompileError, CompiledModule};

/// A compiled, linked function. Any process may invoke it concurrently; it
/// lives as long as some process holds a reference. Its invocations share
/// one budget of log lines a second, made at the first that asks for one.
pub struct ModuleResource(pub CompiledModule, pub OnceLock<Arc<LineBudget>>);

#[rustler::resource_impl]
impl rustler::Resource for ModuleResource {}

/// Compiles a module in a child process (`worker_runtime::compile_isolated`)
/// on a thread of its own, so that no scheduler, dirty or normal, waits on
/// a compile. Returns `:ok` at once; the caller then receives
/// `{ref, {:ok, module, sizes} | {:error, reason}}`.
#[rustler::nif]
fn module_compile(
    env: Env,
    wasm: Binary,
    reply_to: Term,
    compiler: String,
    timeout_ms: u64,
    max_memory_mb: u64,
) -> rustler::NifResult<rustler::Atom> {
    let pid = env.pid();
    let mut owned = OwnedEnv::new();
    // The binary is kept alive, not copied: nothing here scales with its size.
    let wasm = owned.save(wasm.to_term(env));
    let reply_to = owned.save(reply_to);
    let isolation = Isolation {
        program: compiler.into(),
        timeout: std::time::Duration::from_millis(timeout_ms),
        max_memory_mb,
    };
    std::thread::Builder::new()
        .name("fl-compile".into())
        .spawn(move || {
            let result = owned.run(|env| {
                let wasm: Binary = wasm
                    .load(env)
                    .decode()
                    .map_err(|_| CompileError::Runtime("the module is not a binary".into()))?;
                std::panic::catch_unwind(|| {
                    worker_runtime::module::compile_isolated(wasm.as_slice(), &isolation)
                })
                .unwrap_or_else(|_| {
                    Err(CompileError::Runtime("the compile thread panicked".into()))
                })
            });
            let _ = owned.send_and_clear(&pid, |env| {
                (reply_to.load(env), module_reply(env, result)).encode(env)
            });
        })
        .map_err(|e| {
            rustler::Error::Term(Box::new(format!("cannot start a compile thread: {e}")))
        })?;
    Ok(atoms::ok())
}

/// `{:ok, artifact}`: the module's compiled form, for `module_load/2`.
#[rustler::nif(schedule = "DirtyCpu")]
fn module_serialize<'a>(env: Env<'a>, module: ResourceArc<ModuleResource>) -> Term<'a> {
    match worker_runtime::serialize(&module.0) {
        Ok(bytes) => crate::terms::ok_binary(env, &bytes),
        Err(e) => runtime_unavailable(env, e.to_string()),
    }
}

/// Loads an artifact from `module_serialize/1`, as `module_compile/1` replies.
/// The Elixir side verifies the artifact's checksum before calling this.
#[rustler::nif(schedule = "DirtyCpu")]
fn module_load<'a>(env: Env<'a>, artifact: Binary, wasm_bytes: usize) -> Term<'a> {
    // SAFETY: the artifact was written by module_serialize in a runtime with
    // the same engine fingerprint, and its checksum has been verified.
    let result = unsafe { worker_runtime::deserialize(artifact.as_slice(), wasm_bytes) };
    module_reply(env, result)
}

/// The engine's fingerprint, which keys artifacts on disk.
#[rustler::nif]
fn engine_fingerprint(env: Env) -> Term {
    match worker_runtime::engine_fingerprint() {
        Ok(text) => (atoms::ok(), text).encode(env),
        Err(e) => runtime_unavailable(env, e.to_string()),
    }
}

fn runtime_unavailable(env: Env, reason: String) -> Term {
    (atoms::error(), (atoms::runtime_unavailable(), reason)).encode(env)
}

fn module_reply(env: Env, result: Result<CompiledModule, CompileError>) -> Term {
    match result {
        Ok(module) => {
            let sizes = (
                module.wasm_bytes,
                module.native_bytes,
                module.initial_memory,
            );
            (
                atoms::ok(),
                ResourceArc::new(ModuleResource(module, OnceLock::new())),
                sizes,
            )
                .encode(env)
        }
        Err(CompileError::Invalid(reason)) => {
            (atoms::error(), (atoms::invalid_module(), reason)).encode(env)
        }
        Err(CompileError::Runtime(reason)) => runtime_unavailable(env, reason),
    }
}

/// `%{in_flight: n, max_slice_us: us}`: invocations alive right now, in any
/// process, and the longest time slice since the last call.
#[rustler::nif]
fn runtime_stats(env: Env) -> Term {
    let in_flight = worker_runtime::engine::runtime().map_or(0, |rt| rt.in_flight());
    let max_slice = crate::invocation::take_max_slice_us();
    let map = Term::map_new(env);
    map.map_put(atoms::in_flight(), in_flight)
        .and_then(|m| m.map_put(atoms::max_slice_us(), max_slice))
        .unwrap_or(map)
}
