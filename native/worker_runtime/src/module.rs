//! A function's module: compiled, its kind recognised from its exports, and
//! linked once, ready to instantiate from any thread; and its compiled form
//! (an artifact) written and read.
//!
//! This is the dispatcher of the kinds of function ([`crate::kinds`]): each
//! kind says whether a module is one of it (`recognize`) and starts its
//! invocations (`start`); a new kind is a file there, a variant of [`Code`]
//! and a line in each `match` below.

use crate::Error;
use crate::artifact;
use crate::bulk;
use crate::component_host::{self, ComponentState};
use crate::core_host::{self, HostState};
use crate::engine::Reuse;
use crate::engine::runtime;
use crate::kinds::http_instances;
use crate::kinds::{cli_component, funless, http_component, wasi_command};
use crate::store::{Start, Started};
use crate::text::listed;
use std::sync::OnceLock;
use wasmparser::Parser;
use wasmtime::component::{Component, ComponentExportIndex, Linker as ComponentLinker};
use wasmtime::{Engine, ExternType, Linker, Module, ModuleExport, Precompiled};

/// The export every core module must have.
pub const MEMORY: &str = "memory";

/// What kind of function a module is, told by its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The FunLess ABI: exports `__invoke(len) -> 0 | 1`, imports `fl_imps`
    /// ([`funless`]).
    FunLess,
    /// A WASI command: exports `_start`, reads stdin, writes stdout
    /// ([`wasi_command`]).
    WasiCommand,
    /// A WASI 0.2 component exporting `wasi:cli/run`: stdin and stdout, as
    /// a command ([`cli_component`]).
    CliComponent,
    /// A WASI 0.3 component exporting `wasi:cli/run@0.3`, as
    /// [`Kind::CliComponent`] ([`cli_component`]).
    CliComponentP3,
    /// A WASI 0.2 component exporting `wasi:http/incoming-handler`: the
    /// arguments are a request's body, the result a response's
    /// ([`http_component`]).
    HttpComponent,
    /// A WASI 0.3 component exporting `wasi:http/handler@0.3`, as
    /// [`Kind::HttpComponent`] ([`http_component`]).
    HttpComponentP3,
}

/// A compiled and linked function, ready to instantiate from any thread.
pub struct CompiledModule {
    pub(crate) code: Code,
    pub kind: Kind,
    /// Size of the Wasm binary it was compiled from.
    pub wasm_bytes: usize,
    /// Size of its compiled code in memory.
    pub native_bytes: usize,
    /// Bytes of linear memory the module asks for at instantiation.
    pub initial_memory: u64,
}

/// What an invocation of each kind instantiates, and the export it calls.
pub(crate) enum Code {
    FunLess(core_host::Linked),
    WasiCommand(core_host::Linked),
    CliComponent(component_host::Linked),
    CliComponentP3(component_host::Linked),
    HttpComponent(component_host::Linked),
    HttpComponentP3(http_instances::HandlerP3Code),
}

impl Code {
    /// Starts an invocation, as the module's kind does.
    /// Starts an invocation, as the module's kind does; returns the log its
    /// output goes to (a WASI 0.3 handler's instance's, when reused).
    pub(crate) fn start(&self, start: Start, reuse: Reuse) -> Started {
        if let Code::HttpComponentP3(handler) = self {
            return handler.start(start, reuse);
        }
        let logs = start.logs.clone();
        let run = match self {
            Code::FunLess(linked) => funless::start(linked, start),
            Code::WasiCommand(linked) => wasi_command::start(linked, start),
            Code::CliComponent(linked) => cli_component::start(linked, start),
            Code::CliComponentP3(linked) => cli_component::start_p3(linked, start),
            Code::HttpComponent(linked) => http_component::start(linked, start),
            Code::HttpComponentP3(handler) => http_component::start_p3(&handler.linked, start),
        };
        Started::own(logs, run)
    }

    fn kind(&self) -> Kind {
        match self {
            Code::FunLess(_) => Kind::FunLess,
            Code::WasiCommand(_) => Kind::WasiCommand,
            Code::CliComponent(_) => Kind::CliComponent,
            Code::CliComponentP3(_) => Kind::CliComponentP3,
            Code::HttpComponent(_) => Kind::HttpComponent,
            Code::HttpComponentP3(_) => Kind::HttpComponentP3,
        }
    }
}

/// A WASI 0.3 handler's code: its instances are its own.
fn handler_p3(linked: component_host::Linked) -> Code {
    Code::HttpComponentP3(http_instances::HandlerP3Code::new(linked))
}

type CoreCode = fn(core_host::Linked) -> Code;
type ComponentCode = fn(component_host::Linked) -> Code;

/// The kind a core module's exports make it: `__invoke` (a FunLess
/// function), else `_start` (a WASI command), each of the right type; the
/// export to call, and the code of its kind.
fn recognize_module(module: &Module) -> Result<(ModuleExport, CoreCode), Error> {
    if let Some(found) = funless::recognize(module) {
        return found.map(|export| (export, Code::FunLess as CoreCode));
    }
    if let Some(found) = wasi_command::recognize(module) {
        return found.map(|export| (export, Code::WasiCommand as CoreCode));
    }
    Err(Error::refused(format!(
        "module does not export `{}` (a FunLess function) or `{}` (a WASI command); it exports {}",
        funless::INVOKE,
        wasi_command::START,
        listed(module.exports().map(|e| e.name()))
    )))
}

/// The kind a component's exports make it. An HTTP handler that is also a
/// command is run as a handler, as `wasmtime serve` would.
fn recognize_component(
    component: &Component,
    engine: &Engine,
    wasi_p3: bool,
) -> Result<(ComponentExportIndex, ComponentCode), Error> {
    if let Some(found) = http_component::recognize(component, engine) {
        return found.map(|export| (export, Code::HttpComponent as ComponentCode));
    }
    let p3_off = |_| Error::invalid_module(P3_OFF);
    if let Some(found) = http_component::recognize_p3(component, engine) {
        return match wasi_p3 {
            true => found.map(|export| (export, handler_p3 as ComponentCode)),
            false => Err(p3_off(found)),
        };
    }
    if let Some(found) = cli_component::recognize(component, engine) {
        return found.map(|export| (export, Code::CliComponent as ComponentCode));
    }
    if let Some(found) = cli_component::recognize_p3(component, engine) {
        return match wasi_p3 {
            true => found.map(|export| (export, Code::CliComponentP3 as ComponentCode)),
            false => Err(p3_off(found)),
        };
    }
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    Err(Error::refused(format!(
        "component does not export `{}x` or `{}x` (an HTTP handler) or `{}x` or `{}x` (a command); it exports {}",
        http_component::HTTP_HANDLER,
        http_component::HTTP_HANDLER_P3,
        cli_component::CLI_RUN,
        cli_component::CLI_RUN_P3,
        listed(names.into_iter())
    )))
}

/// The linkers of core modules and of components, made once.
struct Linkers {
    core: Linker<HostState>,
    component: ComponentLinker<ComponentState>,
}

fn linkers() -> Result<&'static Linkers, Error> {
    static LINKERS: OnceLock<Result<Linkers, Error>> = OnceLock::new();
    LINKERS
        .get_or_init(|| {
            let rt = runtime()?;
            let unavailable = |what: &str, e: wasmtime::Error| {
                Error::Unavailable(format!("{what} linker: {e:#}"))
            };
            let mut core = core_host::linker(&rt.engine).map_err(|e| unavailable("core", e))?;
            funless::add_imports(&mut core).map_err(|e| unavailable("core", e))?;
            let component = component_host::linker(&rt.engine, rt.settings.wasi_p3)
                .map_err(|e| unavailable("component", e))?;
            Ok(Linkers { core, component })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Makes the linkers now, so that a failure shows when the runtime is
/// configured rather than at the first compile.
pub(crate) fn prepare_linkers() -> Result<(), Error> {
    linkers().map(drop)
}

/// Compiles `bytes` (a Wasm binary, or WAT text) into a linked module, in
/// this process. The worker compiles in a child process instead
/// (`compiler::compile_isolated`); this is for tests, tools and
/// benchmarks.
///
/// Import and export problems surface here, with a reason: an unknown import,
/// an import of the wrong type, a missing or mistyped `__invoke`, no exported
/// `memory`, or a memory that can never fit under the memory cap.
pub fn compile(bytes: &[u8]) -> Result<CompiledModule, Error> {
    compile_here(bytes).map_err(|e| explain_p3_off(e, bytes))
}

/// Why a WASI 0.3 component is refused by a worker with WASI 0.3 off.
const P3_OFF: &str = "WASI 0.3 is off on this worker: FL_WASI_P3=false";

/// A refusal of what looks like a WASI 0.3 component (its bytes name one
/// of WASI 0.3's entry points), by an engine with WASI 0.3 off, says so:
/// Wasmtime's own reason names a missing feature or import, not the
/// setting.
pub(crate) fn explain_p3_off(error: Error, bytes: &[u8]) -> Error {
    let p3_off = runtime().is_ok_and(|rt| !rt.settings.wasi_p3);
    let names_p3 = |name: &str| bytes.windows(name.len()).any(|w| w == name.as_bytes());
    match error {
        Error::InvalidModule(reason)
            if p3_off
                && !reason.contains(P3_OFF)
                && (names_p3(cli_component::CLI_RUN_P3)
                    || names_p3(http_component::HTTP_HANDLER_P3)) =>
        {
            Error::InvalidModule(format!("{reason} ({P3_OFF})"))
        }
        other => other,
    }
}

fn compile_here(bytes: &[u8]) -> Result<CompiledModule, Error> {
    let rt = runtime()?;
    check_size(bytes)?;
    let binary = prepare(&rt.engine, bytes)?;
    if Parser::is_component(&binary) {
        let component = Component::from_binary(&rt.engine, &binary)
            .map_err(|e| Error::refused(format!("{e:#}")))?;
        return link_component(component, bytes.len());
    }
    // Also refuses a memory whose minimum is over the cap (the pool's limit).
    let module =
        Module::from_binary(&rt.engine, &binary).map_err(|e| Error::refused(format!("{e:#}")))?;
    link(module, bytes.len())
}

/// Refuses a module over `FL_MAX_MODULE_MB` before anything reads it.
pub(crate) fn check_size(bytes: &[u8]) -> Result<(), Error> {
    let max = runtime()?.settings.max_module_bytes;
    if bytes.len() > max {
        return Err(Error::refused(format!(
            "module of {} bytes is over the limit of {max} bytes (FL_MAX_MODULE_MB)",
            bytes.len()
        )));
    }
    Ok(())
}

/// What the compiler child of `fl-compile` does: parses (WAT text too),
/// validates, makes bulk memory operations preemptible ([`crate::bulk`]),
/// and compiles for `engine`, returning the artifact.
pub fn precompile(engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let binary = prepare(engine, bytes)?;
    let compiled = if Parser::is_component(&binary) {
        engine.precompile_component(&binary)
    } else {
        engine.precompile_module(&binary)
    };
    compiled.map_err(|e| Error::refused(format!("{e:#}")))
}

/// The binary that is compiled: parsed, validated, and rewritten.
fn prepare(engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    // A binary (with its \0asm header) passes through untouched.
    let binary = wat::parse_bytes(bytes).map_err(|e| {
        Error::refused(format!(
            "not a WebAssembly module (no \\0asm header), nor WAT text: {e}"
        ))
    })?;
    if Parser::is_component(&binary) {
        // validated as it is compiled
        let rewritten = bulk::make_component_interruptible(&binary).map_err(Error::refused)?;
        return Ok(rewritten.into_owned());
    }
    // Validate the module as given, so that errors name its own offsets.
    Module::validate(engine, &binary).map_err(|e| Error::refused(format!("{e:#}")))?;
    let rewritten = bulk::make_interruptible(&binary).map_err(Error::refused)?;
    Ok(rewritten.into_owned())
}

/// Loads Wasmtime's serialized module or component and links it.
///
/// # Safety
///
/// `artifact` must be Wasmtime's serialization of a module compiled with
/// this engine's configuration ([`crate::engine::compiler_config`]):
/// Wasmtime checks the version and configuration, but runs the machine code
/// it holds as it is.
pub(crate) unsafe fn load(artifact: &[u8], wasm_bytes: usize) -> Result<CompiledModule, Error> {
    let rt = runtime()?;
    let failed = |e: wasmtime::Error| Error::refused(format!("{e:#}"));
    // SAFETY: upheld by the caller
    match Engine::detect_precompiled(artifact) {
        Some(Precompiled::Component) => {
            let component =
                unsafe { Component::deserialize(&rt.engine, artifact) }.map_err(failed)?;
            link_component(component, wasm_bytes)
        }
        _ => {
            let module = unsafe { Module::deserialize(&rt.engine, artifact) }.map_err(failed)?;
            link(module, wasm_bytes)
        }
    }
}

/// The compiled form of a module, to keep on disk and [`deserialize`]
/// later: sealed with the artifact key ([`crate::artifact`]).
pub fn serialize(module: &CompiledModule) -> Result<Vec<u8>, Error> {
    let bytes = match &module.code {
        Code::FunLess(linked) | Code::WasiCommand(linked) => linked.pre.module().serialize(),
        Code::CliComponent(linked)
        | Code::CliComponentP3(linked)
        | Code::HttpComponent(linked)
        | Code::HttpComponentP3(http_instances::HandlerP3Code { linked, .. }) => {
            linked.pre.component().serialize()
        }
    }
    .map_err(|e| Error::Serialize(format!("{e:#}")))?;
    artifact::seal(&bytes)
}

/// Loads a module from [`serialize`]'s output, without compiling. Bytes
/// that are not an artifact sealed with this process's artifact key are
/// refused, before Wasmtime reads them.
pub fn deserialize(bytes: &[u8], wasm_bytes: usize) -> Result<CompiledModule, Error> {
    let payload = artifact::open(bytes)?;
    // SAFETY: the payload carries a MAC under the artifact key, which only
    // serialize (in this process, or one given the same key file) makes:
    // it is Wasmtime's own output for a module compiled here. Wasmtime
    // checks that it was made by this version and engine configuration.
    unsafe { load(payload, wasm_bytes) }
}

/// A fingerprint of the engine's compiler and configuration: artifacts made
/// under another fingerprint cannot be loaded.
pub fn engine_fingerprint() -> Result<String, Error> {
    use std::hash::{Hash, Hasher};
    let rt = runtime()?;
    let mut hasher = std::hash::DefaultHasher::new();
    rt.engine.precompile_compatibility_hash().hash(&mut hasher);
    Ok(format!("{:016x}", hasher.finish()))
}

/// Checks a component's exports and links its imports once.
fn link_component(component: Component, wasm_bytes: usize) -> Result<CompiledModule, Error> {
    let rt = runtime()?;
    let (export, code) = recognize_component(&component, &rt.engine, rt.settings.wasi_p3)?;
    let initial_memory = component.resources_required().map_or(0, |r| {
        u64::from(r.num_memories) * r.max_initial_memory_size.unwrap_or(0) * 65536
    });
    let pre = linkers()?
        .component
        .instantiate_pre(&component)
        .map_err(|e| Error::refused(format!("{e:#}")))?;
    let image = component.image_range();
    let code = code(component_host::Linked { pre, export });
    Ok(CompiledModule {
        native_bytes: image.end as usize - image.start as usize,
        kind: code.kind(),
        code,
        wasm_bytes,
        initial_memory,
    })
}

/// Checks a core module's exports and memory, and links its imports once.
fn link(module: Module, wasm_bytes: usize) -> Result<CompiledModule, Error> {
    let (export, code) = recognize_module(&module)?;
    let initialize = core_host::find_initialize(&module)?;
    let (memory, initial_memory) = match module.get_export(MEMORY) {
        Some(ExternType::Memory(ty)) => {
            if ty.is_64() || ty.is_shared() {
                return Err(Error::refused(format!(
                    "export `{MEMORY}` must be a 32-bit, unshared memory"
                )));
            }
            let initial = ty.minimum() * ty.page_size();
            (
                module.get_export_index(MEMORY).expect("export exists"),
                initial,
            )
        }
        Some(_) => {
            return Err(Error::refused(format!(
                "export `{MEMORY}` must be a memory"
            )));
        }
        None => {
            return Err(Error::refused(format!(
                "module does not export a memory named `{MEMORY}`"
            )));
        }
    };
    let pre = linkers()?
        .core
        .instantiate_pre(&module)
        .map_err(|e| Error::refused(format!("{e:#}")))?;
    let image = module.image_range();
    let code = code(core_host::Linked {
        pre,
        export,
        memory,
        initialize,
    });
    Ok(CompiledModule {
        native_bytes: image.end as usize - image.start as usize,
        kind: code.kind(),
        code,
        wasm_bytes,
        initial_memory,
    })
}
