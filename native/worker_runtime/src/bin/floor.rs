//! The floor: what an invocation costs in this runtime with no BEAM around
//! it, with the same engine configuration the NIF uses.
//!
//!     cargo run --release -p worker_runtime --bin floor -- FUNCTION.wasm [JSON] [ITERATIONS]
//!
//! Prints the median and p99 time per invocation in microseconds, and the
//! outcome of the last invocation.

use std::time::Instant;
use worker_runtime::{Invocation, Limits, compile};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: floor FUNCTION.wasm [JSON] [ITERATIONS]");
        std::process::exit(2);
    };
    let input = args.next().unwrap_or_else(|| "{}".into());
    let iterations: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));

    let started = Instant::now();
    let module = compile(&wasm).unwrap_or_else(|e| panic!("compile {path}: {e}"));
    let compile_us = started.elapsed().as_secs_f64() * 1e6;

    let limits = Limits::default();
    let mut samples = Vec::with_capacity(iterations);
    let mut last = None;
    for i in 0..iterations + iterations / 10 {
        let started = Instant::now();
        let invocation = Invocation::new(&module, input.clone().into_bytes(), limits.clone())
            .expect("invocation");
        let (outcome, _) = invocation.run_blocking();
        let took = started.elapsed().as_secs_f64() * 1e6;
        // The first tenth warms the pool and caches.
        if i >= iterations / 10 {
            samples.push(took);
        }
        last = Some(outcome);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let median = samples[samples.len() / 2];
    let p99 = samples[samples.len() * 99 / 100];
    println!(
        "compile_us={compile_us:.0} median_us={median:.2} p99_us={p99:.2} iterations={iterations}"
    );
    println!(
        "last outcome: {:?}",
        last.map(|o| match o {
            worker_runtime::Outcome::Response(r) =>
                format!("response {}", String::from_utf8_lossy(&r)),
            other => format!("{other:?}"),
        })
    );
}
