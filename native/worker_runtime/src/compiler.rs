//! Compiling in a child process: the `fl-compile` binary, under OS limits
//! of memory and time, so that no module, however it is shaped, can take
//! the worker's memory or time, or bring it down. The child validates and
//! compiles ([`crate::module::precompile`]) and writes the artifact on its
//! stdout; the worker loads it and links it ([`crate::module`]).

use crate::Error;
use crate::module::{self, CompiledModule};
use crate::text::escape;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

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
    compile_in_child(bytes, isolation).map_err(|e| module::explain_p3_off(e, bytes))
}

fn compile_in_child(bytes: &[u8], isolation: &Isolation) -> Result<CompiledModule, Error> {
    module::check_size(bytes)?;
    let deadline = std::time::Instant::now() + isolation.timeout;
    let artifact = {
        let Some(_slot) = compile_slot(deadline) else {
            return Err(Error::refused(format!(
                "compiling took longer than the limit of {} ms (FL_COMPILE_TIMEOUT_MS), \
                 all of it waiting for other compiles",
                isolation.timeout.as_millis()
            )));
        };
        run_compiler(bytes, isolation, deadline)?
    };
    // SAFETY: made by the fl-compile child with this engine's configuration
    // (Wasmtime checks the version and configuration), read from its pipe
    // as it wrote it; the child is our own program, as trusted as compiling
    // here.
    unsafe { module::load(&artifact, bytes.len()) }
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
        return Error::refused(format!(
            "compiling needs more than the limit of {limit_mb} MiB (FL_COMPILE_MAX_MB)"
        ));
    }
    let tail = stderr.lines().last().unwrap_or("no message");
    Error::refused(format!(
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
            "--wasi-p3",
            if crate::engine::runtime()?.settings.wasi_p3 {
                "1"
            } else {
                "0"
            },
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
                return Err(Error::refused(format!(
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
            Output::TooLarge => Err(Error::refused(format!(
                "the compiled module is over {max_artifact} bytes"
            ))),
            // the child escaped its refusal (`Error::refused`); escaped again, its
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
                escape(&message)
            ))),
            Output::Cut => Err(crashed(limit_mb, timeout_ms, &stderr)),
        }
    })
}
