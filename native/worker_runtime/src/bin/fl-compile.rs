//! The worker's compiler child: reads a module (Wasm or WAT) on stdin and
//! writes its compiled artifact on stdout, under OS limits it sets on
//! itself before it reads a byte:
//!
//!     fl-compile --max-mb MiB --cpu-s SECONDS [--threads N] [--wall-ms MS] [--wasi-p3 0|1] < module.wasm > artifact
//!
//! `--max-mb` bounds its address space (RLIMIT_AS) and `--cpu-s` its CPU
//! time (RLIMIT_CPU); the worker also kills it at its wall-clock timeout,
//! and `--wall-ms` has it end itself after that long (SIGALRM), where the
//! worker cannot kill it safely (no pidfd).
//! Stdout says how it ended (the worker cannot read exit statuses: the VM
//! ignores SIGCHLD): `A`, the artifact's length (u64, little-endian) and
//! the artifact; `E` and why the module is refused; or `P` and the message
//! of a panic in the compiler. Anything else, an empty or cut output
//! included, is the compiler stopped by a limit.

use std::io::{Read, Write};
use worker_runtime::Error;
use worker_runtime::compiler::{TAG_ARTIFACT, TAG_INVALID, TAG_PANIC};
use worker_runtime::engine::compiler_config;
use worker_runtime::module::precompile;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut max_mb, mut cpu_s, mut threads, mut wall_ms) = (None, None, 1, None);
    // the engine's `wasi_p3` setting, which its artifacts must match
    let mut wasi_p3 = 1;
    while let Some(flag) = args.next() {
        let Some(value) = args.next().and_then(|v| v.parse::<u64>().ok()) else {
            fail(&format!("{flag} needs a number"));
        };
        match flag.as_str() {
            "--max-mb" => max_mb = Some(value),
            "--cpu-s" => cpu_s = Some(value),
            "--threads" => threads = value,
            "--wall-ms" => wall_ms = Some(value),
            "--wasi-p3" => wasi_p3 = value,
            _ => fail(&format!("unknown option {flag}")),
        }
    }
    // No limits, no compile: the module is read only once they hold.
    let (Some(max_mb), Some(cpu_s)) = (max_mb, cpu_s) else {
        fail("--max-mb and --cpu-s are both required");
    };
    if let Some(ms) = wall_ms {
        end_after(ms);
    }
    limit(libc::RLIMIT_AS, max_mb.saturating_mul(1 << 20));
    limit(libc::RLIMIT_CPU, cpu_s);
    limit(libc::RLIMIT_CORE, 0);

    let mut module = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut module) {
        fail(&format!("reading the module: {e}"));
    }
    // `--threads`: the threads this compile may use (its CPU limit counts
    // them); one means no parallel compilation. It sizes the compiler's
    // thread pool (rayon's, which reads RAYON_NUM_THREADS when it starts).
    // Neither is part of an artifact's compatibility.
    // SAFETY: no other thread exists yet: the engine, and with it the
    // pool, is made below.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    let mut config = compiler_config(wasi_p3 != 0);
    config.parallel_compilation(threads > 1);
    let engine =
        wasmtime::Engine::new(&config).unwrap_or_else(|e| fail(&format!("wasmtime engine: {e:#}")));
    let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        precompile(&engine, &module)
    }))
    .unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Error::Panic(message))
    });
    match compiled {
        Ok(artifact) => {
            let mut out = std::io::stdout().lock();
            let written = out
                .write_all(&[TAG_ARTIFACT])
                .and_then(|_| out.write_all(&(artifact.len() as u64).to_le_bytes()))
                .and_then(|_| out.write_all(&artifact))
                .and_then(|_| out.flush());
            if written.is_err() {
                std::process::exit(1);
            }
        }
        Err(Error::InvalidModule(reason)) => refuse(TAG_INVALID, &reason, 2),
        Err(Error::Panic(message)) => refuse(TAG_PANIC, &message, 3),
        Err(other) => fail(&other.to_string()),
    }
}

/// Says on stdout why there is no artifact, and exits with `code`.
fn refuse(tag: u8, text: &str, code: i32) -> ! {
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(&[tag])
        .and_then(|_| out.write_all(text.as_bytes()))
        .and_then(|_| out.flush());
    std::process::exit(code)
}

fn limit(resource: libc::__rlimit_resource_t, value: u64) {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a plain libc call with a valid struct.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        fail(&format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
}

/// Ends this process after `ms` of wall-clock time: SIGALRM, at its
/// default action, whatever the parent left it at.
fn end_after(ms: u64) {
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t,
        },
    };
    // SAFETY: plain libc calls: the default action for SIGALRM, and a
    // one-shot real-time timer from a valid struct.
    let set = unsafe {
        libc::signal(libc::SIGALRM, libc::SIG_DFL);
        libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut())
    };
    if set != 0 {
        fail(&format!("setitimer: {}", std::io::Error::last_os_error()));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("fl-compile: {message}");
    std::process::exit(1)
}
