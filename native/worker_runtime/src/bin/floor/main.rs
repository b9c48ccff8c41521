//! The floor: what an invocation costs in this runtime with no BEAM around
//! it, with the same engine configuration the NIF uses (the same code: this
//! binary links `worker_runtime`).
//!
//!     cargo run --release -p worker_runtime --bin floor -- FUNCTION.wasm [JSON] [ITERATIONS] [THREADS]
//!
//! Each thread runs ITERATIONS invocations back to back (after a warm-up of
//! a tenth as many). Prints one line of `key=value` figures: median and p99
//! microseconds per invocation, invocations per second over all threads,
//! the compile time, and the median cold start: loading the compiled
//! artifact, then the first invocation.
//!
//! For a component, the line also has the same invocation in a default
//! Wasmtime embedding ([`baseline`]), measured in the same run, one thread:
//! `baseline_median_us`, `baseline_p99_us`.
//!
//! With `FLOOR_GAP_US` set, it measures instead the CPU time (of the
//! calling thread) of one invocation started that long after the last one
//! ended, against back to back (one thread, 3 rounds of 1,000 each, the median round): `gap_us`,
//! `after_gap_cpu_us`, `back_to_back_cpu_us`. On a shared VM an
//! invocation after an idle gap costs several times one back to back
//! (caches and TLBs cold), which bounds any path that waits between calls.
//!
//! The runtime's settings come from the same `FL_*` variables the worker
//! reads (`FL_POOL_INSTANCES`, `FL_MEMORY_CAP_MB`, `FL_MAX_MODULE_MB`,
//! `FL_EPOCH_TICK_US`, `FL_POOL_KEEP_RESIDENT_KB`, `FL_WASI_P3`,
//! `FL_P3_INSTANCE_*`), unchecked: this is the one place in Rust that reads
//! the environment. A WASI 0.3 handler's invocations, back to back, are
//! served by one reused instance unless `FL_P3_INSTANCE_REQUESTS=1`.

mod baseline;

use std::time::{Duration, Instant};
use worker_runtime::{
    Invocation, Kind, Limits, Outcome, Reuse, Settings, compile, configure, deserialize, serialize,
};

/// Cold starts measured, each from the artifact.
const COLD_STARTS: usize = 50;

fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// The runtime's defaults, overridden by whichever `FL_*` variables are set.
fn settings_from_env() -> Settings {
    fn var(name: &str) -> Option<u64> {
        let value = std::env::var(name).ok()?;
        let parsed = value.trim().parse().ok();
        if parsed.is_none() {
            eprintln!("floor: ignoring {name}={value:?}, not a number");
        }
        parsed
    }
    let defaults = Settings::default();
    Settings {
        pool_instances: var("FL_POOL_INSTANCES").map_or(defaults.pool_instances, |n| n as u32),
        memory_cap: var("FL_MEMORY_CAP_MB").map_or(defaults.memory_cap, |mb| (mb << 20) as usize),
        max_module_bytes: var("FL_MAX_MODULE_MB")
            .map_or(defaults.max_module_bytes, |mb| (mb << 20) as usize),
        tick: var("FL_EPOCH_TICK_US").map_or(defaults.tick, Duration::from_micros),
        keep_resident: var("FL_POOL_KEEP_RESIDENT_KB")
            .map_or(defaults.keep_resident, |kb| (kb << 10) as usize),
        wasi_p3: std::env::var("FL_WASI_P3").map_or(defaults.wasi_p3, |v| v.trim() != "false"),
        p3_reuse: Reuse {
            requests: var("FL_P3_INSTANCE_REQUESTS")
                .map_or(defaults.p3_reuse.requests, |n| n as u32),
            concurrency: var("FL_P3_INSTANCE_CONCURRENCY")
                .map_or(defaults.p3_reuse.concurrency, |n| n as u32),
            idle: var("FL_P3_INSTANCE_IDLE_MS")
                .map_or(defaults.p3_reuse.idle, Duration::from_millis),
        },
    }
}

/// CPU time this thread has used, in µs.
fn thread_cpu_us() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, valid here.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

/// Prints the CPU µs of `one` invocation started `gap` after the last
/// ended, and back to back: the median of 3 rounds of 1,000 each.
fn after_gap(gap: Duration, one: impl Fn()) {
    const N: usize = 1_000;
    let mut rounds: Vec<(f64, f64)> = (0..3)
        .map(|_| {
            let mut gapped = 0.0;
            for _ in 0..N {
                std::thread::sleep(gap);
                let started = thread_cpu_us();
                one();
                gapped += thread_cpu_us() - started;
            }
            let started = thread_cpu_us();
            (0..N).for_each(|_| one());
            (gapped / N as f64, (thread_cpu_us() - started) / N as f64)
        })
        .collect();
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (gapped, steady) = rounds[1];
    println!(
        "gap_us={} after_gap_cpu_us={gapped:.2} back_to_back_cpu_us={steady:.2}",
        gap.as_micros()
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: floor FUNCTION.wasm [JSON] [ITERATIONS] [THREADS]");
        std::process::exit(2);
    };
    let input = args.next().unwrap_or_else(|| "{}".into());
    let iterations: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let threads: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    configure(settings_from_env()).unwrap_or_else(|e| panic!("runtime: {e}"));

    let started = Instant::now();
    let module = compile(&wasm).unwrap_or_else(|e| panic!("compile {path}: {e}"));
    let compile_us = started.elapsed().as_secs_f64() * 1e6;

    // the worker's defaults (FL_INVOKE_TIMEOUT_MS, FL_MAX_MEMORY_MB)
    let limits = Limits::new(Duration::from_secs(30), 128 << 20);
    let run = |n: usize| -> (Vec<f64>, Outcome) {
        let mut samples = Vec::with_capacity(n);
        let mut last = Outcome::NoResponse;
        for _ in 0..n {
            let started = Instant::now();
            let invocation = Invocation::new(&module, input.clone().into_bytes(), limits.clone())
                .expect("invocation");
            last = invocation.run_blocking().0;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        (samples, last)
    };

    run(iterations / 10);
    if let Ok(gap) = std::env::var("FLOOR_GAP_US") {
        let gap = gap.trim().parse().unwrap_or_else(|_| {
            eprintln!("floor: FLOOR_GAP_US={gap:?} is not a number of µs");
            std::process::exit(2)
        });
        let one = || {
            Invocation::new(&module, input.clone().into_bytes(), limits.clone())
                .expect("invocation")
                .run_blocking();
        };
        after_gap(Duration::from_micros(gap), one);
        return;
    }
    let started = Instant::now();
    let results: Vec<(Vec<f64>, Outcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| run(iterations)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();

    let samples: Vec<f64> = results
        .iter()
        .flat_map(|(s, _)| s.iter().copied())
        .collect();
    let (median, p99) = percentiles(samples);
    let ops = (iterations * threads) as f64 / elapsed;

    let artifact = serialize(&module).expect("serialize");
    let cold: Vec<f64> = (0..COLD_STARTS)
        .map(|_| {
            let started = Instant::now();
            let loaded = deserialize(&artifact, wasm.len()).expect("deserialize");
            let invocation = Invocation::new(&loaded, input.clone().into_bytes(), limits.clone())
                .expect("invocation");
            invocation.run_blocking();
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    let (cold_us, _) = percentiles(cold);

    let baseline = if matches!(module.kind, Kind::CliComponent | Kind::HttpComponent) {
        let base = baseline::Baseline::new(&wasm).unwrap_or_else(|e| panic!("baseline: {e:#}"));
        let run = |n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| {
                    let started = Instant::now();
                    base.invoke(input.as_bytes())
                        .unwrap_or_else(|e| panic!("baseline: {e:#}"));
                    started.elapsed().as_secs_f64() * 1e6
                })
                .collect()
        };
        run(iterations / 10);
        let (median, p99) = percentiles(run(iterations));
        format!(" baseline_median_us={median:.2} baseline_p99_us={p99:.2}")
    } else {
        String::new()
    };
    let outcome = match &results[0].1 {
        Outcome::Response(r) | Outcome::Output(r) | Outcome::Body(r) => {
            format!(
                "response:{}",
                String::from_utf8_lossy(r).replace([' ', '\n'], "")
            )
        }
        other => format!("{other:?}").replace(' ', ""),
    };
    println!(
        "median_us={median:.2} p99_us={p99:.2} ops_per_s={ops:.0} compile_us={compile_us:.0} cold_us={cold_us:.0} threads={threads}{baseline} outcome={outcome}"
    );
}
