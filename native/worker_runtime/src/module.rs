//! Compiling a function: validate, compile, check the ABI and link once.

use crate::engine::runtime;
use crate::host::HostState;
use std::fmt;
use wasmtime::{ExternType, InstancePre, Module, ModuleExport, ValType};

pub const INVOKE: &str = "__invoke";
pub const MEMORY: &str = "memory";

/// A compiled and linked function, ready to instantiate from any thread.
pub struct CompiledModule {
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) invoke: ModuleExport,
    pub(crate) memory: ModuleExport,
    /// Size of the Wasm binary it was compiled from.
    pub wasm_bytes: usize,
    /// Size of its compiled code in memory.
    pub native_bytes: usize,
    /// Bytes of linear memory the module asks for at instantiation.
    pub initial_memory: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileError {
    /// The module is not valid, does not compile, or breaks the ABI.
    Invalid(String),
    /// The runtime itself could not start.
    Runtime(String),
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::Invalid(m) | CompileError::Runtime(m) => f.write_str(m),
        }
    }
}

fn invalid(message: impl Into<String>) -> CompileError {
    CompileError::Invalid(message.into())
}

/// Compiles `bytes` (a Wasm binary, or WAT text) into a linked module.
///
/// Import and export problems surface here, with a reason: an unknown import,
/// an import of the wrong type, a missing or mistyped `__invoke`, no exported
/// `memory`, or a memory that can never fit under the memory cap.
pub fn compile(bytes: &[u8]) -> Result<CompiledModule, CompileError> {
    let rt = runtime().map_err(CompileError::Runtime)?;
    let max = rt.settings.max_module_bytes;
    if bytes.len() > max {
        return Err(invalid(format!(
            "module of {} bytes is over the limit of {max} bytes",
            bytes.len()
        )));
    }
    // A binary (with its \0asm header) passes through untouched.
    let binary = wat::parse_bytes(bytes).map_err(|e| {
        invalid(format!(
            "not a WebAssembly module (no \\0asm header), nor WAT text: {e}"
        ))
    })?;
    // Also refuses a memory whose minimum is over the cap (the pool's limit).
    let module = Module::from_binary(&rt.engine, &binary).map_err(|e| invalid(format!("{e:#}")))?;
    link(module, bytes.len())
}

/// The compiled form of a module, to keep on disk (see [`deserialize`]).
pub fn serialize(module: &CompiledModule) -> Result<Vec<u8>, CompileError> {
    module
        .pre
        .module()
        .serialize()
        .map_err(|e| CompileError::Runtime(format!("{e:#}")))
}

/// Loads a module from [`serialize`]'s output, without compiling.
///
/// # Safety
///
/// `bytes` must come from [`serialize`] in a process with the same engine
/// configuration; Wasmtime checks the version and configuration, but runs
/// the machine code it contains as is. The caller must verify the bytes'
/// integrity (the worker stores a checksum with each artifact).
pub unsafe fn deserialize(bytes: &[u8], wasm_bytes: usize) -> Result<CompiledModule, CompileError> {
    let rt = runtime().map_err(CompileError::Runtime)?;
    // SAFETY: as documented above, upheld by the caller.
    let module =
        unsafe { Module::deserialize(&rt.engine, bytes) }.map_err(|e| invalid(format!("{e:#}")))?;
    link(module, wasm_bytes)
}

/// A fingerprint of the engine's compiler and configuration: artifacts made
/// under another fingerprint cannot be loaded.
pub fn engine_fingerprint() -> Result<String, CompileError> {
    use std::hash::{Hash, Hasher};
    let rt = runtime().map_err(CompileError::Runtime)?;
    let mut hasher = std::hash::DefaultHasher::new();
    rt.engine.precompile_compatibility_hash().hash(&mut hasher);
    Ok(format!("{:016x}", hasher.finish()))
}

/// Checks the ABI's exports and links the imports once.
fn link(module: Module, wasm_bytes: usize) -> Result<CompiledModule, CompileError> {
    let rt = runtime().map_err(CompileError::Runtime)?;
    let invoke = match module.get_export(INVOKE) {
        Some(ExternType::Func(ty)) => {
            let params: Vec<ValType> = ty.params().collect();
            let results: Vec<ValType> = ty.results().collect();
            if !(matches!(params[..], [ValType::I32]) && matches!(results[..], [ValType::I32])) {
                return Err(invalid(format!(
                    "export `{INVOKE}` must have type (i32) -> i32, found {ty}"
                )));
            }
            module.get_export_index(INVOKE).expect("export exists")
        }
        Some(other) => {
            return Err(invalid(format!(
                "export `{INVOKE}` must be a function, found {other:?}"
            )));
        }
        None => return Err(invalid(format!("module does not export `{INVOKE}`"))),
    };
    let (memory, initial_memory) = match module.get_export(MEMORY) {
        Some(ExternType::Memory(ty)) => {
            if ty.is_64() || ty.is_shared() {
                return Err(invalid(format!(
                    "export `{MEMORY}` must be a 32-bit, unshared memory"
                )));
            }
            let initial = ty.minimum() * ty.page_size();
            (
                module.get_export_index(MEMORY).expect("export exists"),
                initial,
            )
        }
        Some(_) => return Err(invalid(format!("export `{MEMORY}` must be a memory"))),
        None => {
            return Err(invalid(format!(
                "module does not export a memory named `{MEMORY}`"
            )));
        }
    };

    let pre = rt
        .linker
        .instantiate_pre(&module)
        .map_err(|e| invalid(format!("{e:#}")))?;
    let image = module.image_range();
    Ok(CompiledModule {
        native_bytes: image.end as usize - image.start as usize,
        pre,
        invoke,
        memory,
        wasm_bytes,
        initial_memory,
    })
}
