//! The runtime on its own, with real modules: compile, invoke, time slices.

use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use worker_runtime::{
    CompiledModule, Error, Invocation, Limits, Outcome, Settings, compile, configure,
};

const ECHO: &str = r#"
(module
  (import "fl_imps" "__get_input_data" (func $get (param i32)))
  (import "fl_imps" "__insert_response" (func $resp (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "__invoke") (param $len i32) (result i32)
    (call $get (i32.const 1024))
    (call $resp (i32.const 1024) (local.get $len))
    (i32.const 0)))"#;

const SPIN: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "__invoke") (param i32) (result i32)
    (loop $l (br $l))
    (i32.const 0)))"#;

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Compiles `wat` in a runtime with explicit settings. Every test gives the
/// same ones (a test file is one process: the first call starts the
/// runtime, the others find it started with them).
fn compiled(wat: &str) -> CompiledModule {
    let settings = Settings {
        pool_instances: 16,
        ..Settings::default()
    };
    configure(settings).unwrap();
    compile(wat.as_bytes()).unwrap()
}

fn limits(timeout_ms: u64) -> Limits {
    Limits::new(Duration::from_millis(timeout_ms), 128 << 20)
}

#[test]
fn a_second_configure_with_other_settings_is_refused() {
    compiled(ECHO);
    let other = Settings {
        pool_instances: 17,
        ..Settings::default()
    };
    match configure(other) {
        Err(Error::Configured(reason)) => assert!(reason.contains("17"), "{reason}"),
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("configured twice with different settings"),
    }
    let same = Settings {
        pool_instances: 16,
        ..Settings::default()
    };
    assert_eq!(configure(same).unwrap().settings.pool_instances, 16);
}

#[test]
fn a_module_over_the_size_setting_is_refused_with_its_name() {
    compiled(ECHO);
    let big = vec![0u8; (64 << 20) + 1];
    match compile(&big) {
        Err(Error::InvalidModule(reason)) => {
            assert!(reason.contains("FL_MAX_MODULE_MB"), "{reason}")
        }
        Err(e) => panic!("unexpected error {e:?}"),
        Ok(_) => panic!("compiled"),
    }
}

#[test]
fn echo_round_trips_input() {
    let module = compiled(ECHO);
    let invocation = Invocation::new(&module, br#"{"a":[1,2]}"#.to_vec(), limits(1000)).unwrap();
    let (outcome, lines) = invocation.run_blocking();
    assert_eq!(outcome, Outcome::Response(br#"{"a":[1,2]}"#.to_vec()));
    assert!(lines.is_empty());
}

#[test]
fn a_spinning_guest_yields_every_slice_and_times_out() {
    let module = compiled(SPIN);
    let mut invocation = Invocation::new(&module, b"{}".to_vec(), limits(300)).unwrap();
    let waker = Waker::from(Arc::new(Noop));
    let mut cx = Context::from_waker(&waker);
    let started = Instant::now();
    let mut polls = 0u32;
    let mut longest = Duration::ZERO;
    let outcome = loop {
        let slice = Instant::now();
        let polled = invocation.poll(&mut cx);
        longest = longest.max(slice.elapsed());
        polls += 1;
        if let Poll::Ready(outcome) = polled {
            break outcome;
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(outcome, Outcome::Timeout);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    // within a few ticks, with room for a loaded machine
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    // 300 ms in slices of about one 100 us tick
    assert!(polls > 100, "only {polls} polls");
    eprintln!("polls={polls} longest slice={longest:?}");
}
