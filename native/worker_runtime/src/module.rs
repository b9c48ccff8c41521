//! Compiling a function: validate, compile, check the ABI and link once.

use crate::Error;
use crate::bulk;
use crate::component::ComponentState;
use crate::engine::runtime;
use crate::host::HostState;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::Duration;
use wasmparser::Parser;
use wasmtime::component::{self, Component};
use wasmtime::{Engine, ExternType, InstancePre, Module, ModuleExport, Precompiled, ValType};

pub const INVOKE: &str = "__invoke";
pub use crate::command::START;
pub const MEMORY: &str = "memory";

/// What kind of function a module is, told by its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The FunLess ABI: exports `__invoke(len) -> 0 | 1`, imports `fl_imps`.
    FunLess,
    /// A WASI command: exports `_start`, reads stdin, writes stdout
    /// (see [`crate::command`]).
    WasiCommand,
    /// A WASI 0.2 component exporting `wasi:cli/run`: stdin and stdout,
    /// as a command (see [`crate::component`]).
    CliComponent,
    /// A WASI 0.2 component exporting `wasi:http/incoming-handler`: the
    /// arguments are a request's body, the result a response's.
    HttpComponent,
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

/// What an invocation instantiates, and the export it calls.
pub(crate) enum Code {
    Core {
        pre: InstancePre<HostState>,
        /// `__invoke` or `_start`, as the kind says.
        entry: ModuleExport,
        memory: ModuleExport,
    },
    Component {
        pre: component::InstancePre<ComponentState>,
        entry: crate::component::Entry,
    },
}

/// A refusal, its text escaped as log lines are: it carries names the
/// module chose (imports, exports, custom sections), which may hold
/// newlines or terminal escapes meant for a log.
fn invalid(message: impl Into<String>) -> Error {
    Error::invalid_module(crate::logs::escape(message.into().as_bytes()))
}

/// Compiles `bytes` (a Wasm binary, or WAT text) into a linked module, in
/// this process. The worker compiles in a child process instead
/// ([`compile_isolated`]); this is for tests, tools and benchmarks.
///
/// Import and export problems surface here, with a reason: an unknown import,
/// an import of the wrong type, a missing or mistyped `__invoke`, no exported
/// `memory`, or a memory that can never fit under the memory cap.
pub fn compile(bytes: &[u8]) -> Result<CompiledModule, Error> {
    let rt = runtime()?;
    check_size(bytes, rt.settings.max_module_bytes)?;
    let binary = prepare(&rt.engine, bytes)?;
    if Parser::is_component(&binary) {
        let component =
            Component::from_binary(&rt.engine, &binary).map_err(|e| invalid(format!("{e:#}")))?;
        return link_component(component, bytes.len());
    }
    // Also refuses a memory whose minimum is over the cap (the pool's limit).
    let module = Module::from_binary(&rt.engine, &binary).map_err(|e| invalid(format!("{e:#}")))?;
    link(module, bytes.len())
}

fn check_size(bytes: &[u8], max: usize) -> Result<(), Error> {
    if bytes.len() > max {
        return Err(invalid(format!(
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
    compiled.map_err(|e| invalid(format!("{e:#}")))
}

/// The binary that is compiled: parsed, validated, and rewritten.
fn prepare(engine: &Engine, bytes: &[u8]) -> Result<Vec<u8>, Error> {
    // A binary (with its \0asm header) passes through untouched.
    let binary = wat::parse_bytes(bytes).map_err(|e| {
        invalid(format!(
            "not a WebAssembly module (no \\0asm header), nor WAT text: {e}"
        ))
    })?;
    if Parser::is_component(&binary) {
        // validated as it is compiled
        let rewritten = bulk::make_component_interruptible(&binary).map_err(invalid)?;
        return Ok(rewritten.into_owned());
    }
    // Validate the module as given, so that errors name its own offsets.
    Module::validate(engine, &binary).map_err(|e| invalid(format!("{e:#}")))?;
    let rewritten = bulk::make_interruptible(&binary).map_err(invalid)?;
    Ok(rewritten.into_owned())
}

/// How the worker compiles: in a child process (`program`, the
/// `fl-compile` binary) under OS limits, so that no module, however it is
/// shaped, can take the worker's memory or time.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub program: PathBuf,
    /// Wall-clock time for the whole compile (`FL_COMPILE_TIMEOUT_MS`).
    pub timeout: Duration,
    /// Address space of the child, in MiB (`FL_COMPILE_MAX_MB`).
    pub max_memory_mb: u64,
}

/// Compiles in a child process under `isolation`'s limits, then loads the
/// artifact it made and links it here. A module over a limit is
/// [`Error::InvalidModule`] with a reason that names the limit; a panic in
/// the compiler is [`Error::Panic`].
pub fn compile_isolated(bytes: &[u8], isolation: &Isolation) -> Result<CompiledModule, Error> {
    let rt = runtime()?;
    check_size(bytes, rt.settings.max_module_bytes)?;
    let deadline = std::time::Instant::now() + isolation.timeout;
    let artifact = {
        let Some(_slot) = compile_slot(deadline) else {
            return Err(invalid(format!(
                "compiling took longer than the limit of {} ms (FL_COMPILE_TIMEOUT_MS), \
                 all of it waiting for other compiles",
                isolation.timeout.as_millis()
            )));
        };
        run_compiler(bytes, isolation, deadline)?
    };
    // SAFETY: made by the fl-compile child with this engine's configuration
    // (Wasmtime checks the version and configuration); the child is our own
    // program, as trusted as compiling here.
    unsafe { load(&artifact, bytes.len()) }
}

/// Loads an artifact of a module or a component and links it.
///
/// # Safety
///
/// As [`deserialize`].
unsafe fn load(artifact: &[u8], wasm_bytes: usize) -> Result<CompiledModule, Error> {
    let rt = runtime()?;
    let failed = |e: wasmtime::Error| invalid(format!("{e:#}"));
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

/// At most one compile per core at a time; the rest wait (on threads of
/// their own, never on a scheduler), until `deadline` at the latest.
fn compile_slot(deadline: std::time::Instant) -> Option<impl Drop> {
    struct Slot(&'static (Mutex<usize>, Condvar));
    impl Drop for Slot {
        fn drop(&mut self) {
            *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            self.0.1.notify_one();
        }
    }
    static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());
    let max = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut used = SLOTS.0.lock().unwrap_or_else(|e| e.into_inner());
    while *used >= max {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        used = SLOTS
            .1
            .wait_timeout(used, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    *used += 1;
    Some(Slot(&SLOTS))
}

/// Threads one compile may use.
fn compile_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// How the child's stdout starts: an artifact (then its length, as a
/// little-endian u64, and its bytes), the reason the module is refused, or
/// the message of a panic in the compiler.
pub const TAG_ARTIFACT: u8 = b'A';
pub const TAG_INVALID: u8 = b'E';
pub const TAG_PANIC: u8 = b'P';

/// What the child said on stdout.
enum Output {
    Artifact(Vec<u8>),
    Invalid(Vec<u8>),
    Panic(Vec<u8>),
    TooLarge,
    /// It ended without saying how: killed by a limit, most likely.
    Cut,
}

/// Reads the tag, then an artifact's length, then exactly that many bytes
/// into a buffer of that size: the worker never holds more than one copy,
/// nor more than `max` bytes.
fn read_output(mut stdout: impl Read, max: u64) -> std::io::Result<Output> {
    let mut tag = [0u8; 1];
    if stdout.read(&mut tag)? == 0 {
        return Ok(Output::Cut);
    }
    match tag[0] {
        TAG_ARTIFACT => {
            let mut len = [0u8; 8];
            if stdout.read_exact(&mut len).is_err() {
                return Ok(Output::Cut);
            }
            let len = u64::from_le_bytes(len);
            if len > max {
                return Ok(Output::TooLarge);
            }
            let mut artifact = vec![0u8; len as usize];
            if stdout.read_exact(&mut artifact).is_err() {
                return Ok(Output::Cut);
            }
            Ok(Output::Artifact(artifact))
        }
        TAG_INVALID | TAG_PANIC => {
            let mut reason = Vec::new();
            stdout.take(64 << 10).read_to_end(&mut reason)?;
            Ok(if tag[0] == TAG_PANIC {
                Output::Panic(reason)
            } else {
                Output::Invalid(reason)
            })
        }
        _ => Ok(Output::Cut),
    }
}

/// The child ended without saying how: killed by a limit, most likely.
fn crashed(limit_mb: u64, timeout_ms: u128, stderr: &str) -> Error {
    if stderr.contains("memory allocation") || stderr.contains("out of memory") {
        return invalid(format!(
            "compiling needs more than the limit of {limit_mb} MiB (FL_COMPILE_MAX_MB)"
        ));
    }
    let tail = stderr.lines().last().unwrap_or("no message");
    invalid(format!(
        "the compiler stopped under the limits of {limit_mb} MiB (FL_COMPILE_MAX_MB) and \
         {timeout_ms} ms (FL_COMPILE_TIMEOUT_MS): {tail}"
    ))
}

/// A way to kill the compiler child that can never reach another process.
/// The VM ignores SIGCHLD, so the kernel reaps a child the moment it exits,
/// and its pid may be reused at once: `kill(pid)` at the timeout could hit
/// a stranger. A pidfd names the process itself; signalled after the
/// process is gone, it reaches no one. Where there is no pidfd (Linux
/// before 5.3, or a seccomp profile that refuses it), the child is not
/// killed, and ends itself a second after the timeout (`--wall-ms`).
pub struct ChildHandle(Option<std::os::fd::OwnedFd>);

impl ChildHandle {
    /// The handle of a child that cannot have exited yet.
    pub fn open(child: &std::process::Child) -> ChildHandle {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags, and returns a new file
        // descriptor (owned here) or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        // SAFETY: a descriptor the call just opened, owned by nothing else.
        ChildHandle((fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Sends SIGKILL to the child if it is still there: `true` if it was.
    pub fn kill(&self) -> bool {
        use std::os::fd::AsRawFd;
        let Some(fd) = &self.0 else {
            return false;
        };
        // SAFETY: pidfd_send_signal on our own pidfd, no siginfo, no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        sent == 0
    }
}

fn run_compiler(
    bytes: &[u8],
    isolation: &Isolation,
    deadline: std::time::Instant,
) -> Result<Vec<u8>, Error> {
    let limit_mb = isolation.max_memory_mb;
    let timeout_ms = isolation.timeout.as_millis();
    // a few threads per compile: faster than one, and with one compile per
    // core at a time, compiles never take every core from the schedulers
    // for long; the CPU limit counts every thread
    let threads = compile_threads();
    let cpu_s = isolation.timeout.as_secs() * threads as u64 + 1;
    let mut child = Command::new(&isolation.program)
        .args([
            "--max-mb",
            &limit_mb.to_string(),
            "--cpu-s",
            &cpu_s.to_string(),
            "--threads",
            &threads.to_string(),
            // its own end, a second after the timeout: the worker kills it
            // at the timeout, unless it has no pidfd to do it with
            "--wall-ms",
            &(timeout_ms + 1_000).to_string(),
        ])
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Unavailable(format!(
                "cannot start the compiler {}: {e}",
                isolation.program.display()
            ))
        })?;
    // Opened before the module is sent: the child waits for all of it on
    // stdin, so it is still alive, and its pid still its own.
    let handle = ChildHandle::open(&child);
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        handle.kill();
        return Err(Error::Unavailable("compiler pipes missing".into()));
    };
    // Artifacts are larger than their modules, but not by this much: this
    // bounds what a runaway child can make the worker hold.
    let max_artifact = (bytes.len() as u64).saturating_mul(16).max(64 << 20);
    let (done, finished) = mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let _ = stdin.write_all(bytes);
        });
        let out = done.clone();
        scope.spawn(move || {
            let _ = out.send(read_output(stdout, max_artifact));
        });
        let errors = scope.spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.take(64 << 10).read_to_end(&mut text);
            text
        });
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let output = match finished.recv_timeout(left) {
            Ok(output) => output,
            Err(_) => {
                handle.kill();
                let _ = child.wait();
                return Err(invalid(format!(
                    "compiling took longer than the limit of {timeout_ms} ms (FL_COMPILE_TIMEOUT_MS)"
                )));
            }
        };
        // The VM ignores SIGCHLD, so the kernel reaps the child and its exit
        // status cannot be read: the child says on stdout how it ended.
        let _ = child.wait();
        let stderr = String::from_utf8_lossy(&errors.join().unwrap_or_default()).into_owned();
        let output = output.map_err(|e| Error::Unavailable(format!("compiler: {e}")))?;
        match output {
            Output::Artifact(artifact) => Ok(artifact),
            Output::TooLarge => Err(invalid(format!(
                "the compiled module is over {max_artifact} bytes"
            ))),
            // the child escaped its refusal (`invalid`); escaped again, its
            // backslashes would double
            Output::Invalid(reason) => {
                let reason = String::from_utf8_lossy(&reason).into_owned();
                if reason.contains("allocat") || reason.contains("out of memory") {
                    Err(Error::invalid_module(format!(
                        "compiling needs more than the limit of {limit_mb} MiB (FL_COMPILE_MAX_MB): {reason}"
                    )))
                } else {
                    Err(Error::invalid_module(reason))
                }
            }
            Output::Panic(message) => Err(Error::Panic(format!(
                "the compiler panicked: {}",
                crate::logs::escape(&message)
            ))),
            Output::Cut => Err(crashed(limit_mb, timeout_ms, &stderr)),
        }
    })
}

/// The compiled form of a module, to keep on disk (see [`deserialize`]).
pub fn serialize(module: &CompiledModule) -> Result<Vec<u8>, Error> {
    match &module.code {
        Code::Core { pre, .. } => pre.module().serialize(),
        Code::Component { pre, .. } => pre.component().serialize(),
    }
    .map_err(|e| Error::Serialize(format!("{e:#}")))
}

/// Loads a module from [`serialize`]'s output, without compiling.
///
/// # Safety
///
/// `bytes` must come from [`serialize`] in a process with the same engine
/// configuration; Wasmtime checks the version and configuration, but runs
/// the machine code it contains as is. The caller must verify the bytes'
/// integrity (the worker stores a checksum with each artifact).
pub unsafe fn deserialize(bytes: &[u8], wasm_bytes: usize) -> Result<CompiledModule, Error> {
    // SAFETY: as documented above, upheld by the caller.
    unsafe { load(bytes, wasm_bytes) }
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

/// Export names listed in a refusal, at most, each cut to
/// [`LISTED_NAME_CHARS`]: a module may have 100,000 exports of 100 KB.
const LISTED_EXPORTS: usize = 8;
const LISTED_NAME_CHARS: usize = 64;

/// The entry point a function's exports make it: `__invoke` (a FunLess
/// function), else `_start` (a WASI command), each of the right type.
fn entry(module: &Module) -> Result<(Kind, ModuleExport), Error> {
    let (kind, name, expected, found) = match (module.get_export(INVOKE), module.get_export(START))
    {
        (Some(found), _) => (Kind::FunLess, INVOKE, "(i32) -> i32", found),
        (None, Some(found)) => (Kind::WasiCommand, START, "() -> ()", found),
        (None, None) => {
            return Err(invalid(format!(
                "module does not export `{INVOKE}` (a FunLess function) or `{START}` \
                 (a WASI command); it exports {}",
                listed(module.exports().map(|e| e.name()))
            )));
        }
    };
    let ExternType::Func(ty) = found else {
        return Err(invalid(format!(
            "export `{name}` must be a function, found {found:?}"
        )));
    };
    let params: Vec<ValType> = ty.params().collect();
    let results: Vec<ValType> = ty.results().collect();
    let fits = match kind {
        Kind::FunLess => {
            matches!(params[..], [ValType::I32]) && matches!(results[..], [ValType::I32])
        }
        _ => params.is_empty() && results.is_empty(),
    };
    if !fits {
        return Err(invalid(format!(
            "export `{name}` must have type {expected}, found {ty}"
        )));
    }
    Ok((kind, module.get_export_index(name).expect("export exists")))
}

/// The first export names, cut, and how many more there are (the refusal
/// that carries them is escaped whole).
pub(crate) fn listed<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let total = names.len();
    if total == 0 {
        return "nothing".into();
    }
    let mut listed: Vec<String> = names
        .take(LISTED_EXPORTS)
        .map(|name| {
            let cut = if name.chars().count() > LISTED_NAME_CHARS {
                "..."
            } else {
                ""
            };
            let name: String = name.chars().take(LISTED_NAME_CHARS).collect();
            format!("`{name}{cut}`")
        })
        .collect();
    if total > LISTED_EXPORTS {
        listed.push(format!("and {} more", total - LISTED_EXPORTS));
    }
    listed.join(", ")
}

/// Checks a component's exports and links its imports once.
fn link_component(component: Component, wasm_bytes: usize) -> Result<CompiledModule, Error> {
    let rt = runtime()?;
    let entry = crate::component::entry(&component, &rt.engine)?;
    let kind = match entry {
        crate::component::Entry::Run(_) => Kind::CliComponent,
        crate::component::Entry::Handle(_) => Kind::HttpComponent,
    };
    let initial_memory = component.resources_required().map_or(0, |r| {
        u64::from(r.num_memories) * r.max_initial_memory_size.unwrap_or(0) * 65536
    });
    let pre = rt
        .component_linker
        .instantiate_pre(&component)
        .map_err(|e| invalid(format!("{e:#}")))?;
    let image = component.image_range();
    Ok(CompiledModule {
        native_bytes: image.end as usize - image.start as usize,
        code: Code::Component { pre, entry },
        kind,
        wasm_bytes,
        initial_memory,
    })
}

/// Checks the ABI's exports and links the imports once.
fn link(module: Module, wasm_bytes: usize) -> Result<CompiledModule, Error> {
    let rt = runtime()?;
    let (kind, entry) = entry(&module)?;
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
        code: Code::Core { pre, entry, memory },
        kind,
        wasm_bytes,
        initial_memory,
    })
}
