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
    let binary = if bytes.starts_with(b"\0asm") {
        std::borrow::Cow::Borrowed(bytes)
    } else {
        wat::parse_bytes(bytes).map_err(|e| {
            invalid(format!(
                "not a WebAssembly module (no \\0asm header), nor WAT text: {e}"
            ))
        })?
    };
    // Also refuses a memory whose minimum is over the cap (the pool's limit).
    let module = Module::from_binary(&rt.engine, &binary).map_err(|e| invalid(format!("{e:#}")))?;

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
    Ok(CompiledModule {
        pre,
        invoke,
        memory,
        wasm_bytes: bytes.len(),
        initial_memory,
    })
}
