//! `Worker.Runtime.Module`: compiling a function into a shared resource.

use crate::atoms;
use crate::error::Error;
use rustler::{Binary, Encoder, Env, NifStruct, OwnedEnv, ResourceArc, Term};
use std::sync::{Arc, OnceLock};
use worker_runtime::compiler::{self, Isolation};
use worker_runtime::limits::LineBudget;
use worker_runtime::{CompiledModule, Kind};

/// A compiled, linked function. Any process may invoke it concurrently; it
/// lives as long as some process holds a reference. Its invocations share
/// one budget of log lines a second, made at the first that asks for one.
pub struct ModuleResource {
    pub compiled: CompiledModule,
    /// The log-line budget its invocations share.
    pub log_budget: OnceLock<Arc<LineBudget>>,
}

#[rustler::resource_impl]
impl rustler::Resource for ModuleResource {}

/// `%Worker.Runtime.Module{}`: the resource in `ref`, with its kind and
/// sizes.
#[derive(NifStruct)]
#[module = "Worker.Runtime.Module"]
pub struct Module {
    r#ref: ResourceArc<ModuleResource>,
    /// `:funless`, `:wasi_command`, `:cli_component`, `:cli_component_p3`, `:http_component` or `:http_component_p3`
    kind: rustler::Atom,
    wasm_bytes: usize,
    native_bytes: usize,
    initial_memory: u64,
}

impl From<CompiledModule> for Module {
    fn from(module: CompiledModule) -> Module {
        Module {
            kind: match module.kind {
                Kind::FunLess => atoms::funless(),
                Kind::WasiCommand => atoms::wasi_command(),
                Kind::CliComponent => atoms::cli_component(),
                Kind::CliComponentP3 => atoms::cli_component_p3(),
                Kind::HttpComponent => atoms::http_component(),
                Kind::HttpComponentP3 => atoms::http_component_p3(),
            },
            wasm_bytes: module.wasm_bytes,
            native_bytes: module.native_bytes,
            initial_memory: module.initial_memory,
            r#ref: ResourceArc::new(ModuleResource {
                compiled: module,
                log_budget: OnceLock::new(),
            }),
        }
    }
}

/// Compiles a module in a child process (`worker_runtime::compile_isolated`)
/// on a thread of its own, so that no scheduler, dirty or normal, waits on
/// a compile. Returns `:ok` at once; the caller then receives
/// `{reply_to, {:ok, %Worker.Runtime.Module{}} | {:error, reason}}`. If no
/// thread can be started, returns `{:error, {:runtime_unavailable, _}}`.
#[rustler::nif]
fn module_compile<'a>(
    env: Env<'a>,
    wasm: Binary,
    reply_to: Term,
    compiler: String,
    timeout_ms: u64,
    max_memory_mb: u64,
) -> Term<'a> {
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
    let spawned = std::thread::Builder::new()
        .name("fl-compile".into())
        .spawn(move || {
            let _ = owned.send_and_clear(&pid, |env| {
                let result = compile(wasm.load(env), &isolation);
                (reply_to.load(env), result).encode(env)
            });
        });
    match spawned {
        Ok(_) => atoms::ok().encode(env),
        Err(e) => {
            let reason = format!("cannot start a compile thread: {e}");
            Err::<(), _>(Error::RuntimeUnavailable(reason)).encode(env)
        }
    }
}

fn compile(wasm: Term, isolation: &Isolation) -> Result<Module, Error> {
    let wasm: Binary = wasm
        .decode()
        .map_err(|_| Error::InvalidModule("expected the module as a binary".into()))?;
    std::panic::catch_unwind(|| compiler::compile_isolated(wasm.as_slice(), isolation))
        .unwrap_or_else(|_| {
            Err(worker_runtime::Error::Panic(
                "the compile thread panicked; see the log".into(),
            ))
        })
        .map(Module::from)
        .map_err(Error::from)
}

/// `{:ok, artifact}`: the module's compiled form, for `module_load/2`.
#[rustler::nif(schedule = "DirtyCpu")]
fn module_serialize<'a>(env: Env<'a>, module: ResourceArc<ModuleResource>) -> Term<'a> {
    match worker_runtime::serialize(&module.compiled) {
        Ok(bytes) => crate::terms::ok_binary(env, &bytes),
        Err(e) => Err::<(), Error>(e.into()).encode(env),
    }
}

/// Loads an artifact from `module_serialize/1`, as `module_compile/5`
/// replies. Bytes that `module_serialize/1` did not write under this
/// node's artifact key (`artifact_key/1`) are refused with
/// `{:error, {:invalid_module, reason}}` before anything runs them.
#[rustler::nif(schedule = "DirtyCpu")]
fn module_load<'a>(env: Env<'a>, artifact: Binary, wasm_bytes: usize) -> Term<'a> {
    let module = worker_runtime::deserialize(artifact.as_slice(), wasm_bytes);
    // (a term: a module is not unwind-safe, so it cannot be a NIF's return type)
    module.map(Module::from).map_err(Error::from).encode(env)
}

/// Seals artifacts with the key kept in the file at `path` (made if
/// missing), so that they load again after a restart: `:ok` or
/// `{:error, {:runtime_unavailable, reason}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn artifact_key<'a>(env: Env<'a>, path: Binary<'a>) -> Term<'a> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path.as_slice()));
    let used = worker_runtime::artifact::use_key_file(path).map_err(Error::from);
    crate::error::status(env, used)
}

/// The engine's fingerprint, which keys artifacts on disk.
#[rustler::nif]
fn engine_fingerprint() -> Result<String, Error> {
    Ok(worker_runtime::engine_fingerprint()?)
}
