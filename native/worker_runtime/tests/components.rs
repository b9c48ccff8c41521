//! Command components end to end in the runtime alone: recognised by their
//! export, run, and their end made an outcome (components written in the
//! component model's text format, so that no guest toolchain is needed).

use std::time::Duration;
use worker_runtime::{Error, Invocation, Kind, Limits, Outcome, Settings, compile, configure};

/// A `wasi:cli/run@0.2.x` command whose `run` does `body` (a core function
/// returning the discriminant of `result`: 0 ok, 1 err).
fn command(minor: u32, body: &str) -> String {
    format!(
        r#"(component
  (core module $m
    (func (export "run") (result i32) {body}))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.{minor}" (instance $cli)))"#
    )
}

fn run(wat: &str) -> Result<Outcome, Error> {
    configure(Settings {
        pool_instances: 16,
        ..Settings::default()
    })
    .unwrap();
    let module = compile(wat.as_bytes())?;
    assert_eq!(module.kind, Kind::CliComponent);
    let limits = Limits::new(Duration::from_secs(5), 16 << 20);
    let invocation = Invocation::new(&module, b"{}".to_vec(), limits)?;
    Ok(invocation.run_blocking().0)
}

#[test]
fn a_command_that_writes_nothing_has_no_response() {
    assert_eq!(
        run(&command(0, "i32.const 0")).unwrap(),
        Outcome::NoResponse
    );
    // any 0.2 minor version
    assert_eq!(
        run(&command(6, "i32.const 0")).unwrap(),
        Outcome::NoResponse
    );
}

#[test]
fn run_returning_err_is_an_exec_error() {
    assert_eq!(
        run(&command(0, "i32.const 1")).unwrap(),
        Outcome::ExecError("run returned an error".into())
    );
}

#[test]
fn a_trap_is_a_trap() {
    match run(&command(0, "unreachable")).unwrap() {
        Outcome::Trap(message) => assert!(message.contains("unreachable"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_run_of_the_wrong_shape_or_another_export_is_refused_naming_it() {
    let wrong = r#"(component
  (core module $m (func (export "run")))
  (core instance $i (instantiate $m))
  (func $run (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))"#;
    let Err(Error::InvalidModule(reason)) = run(wrong) else {
        panic!("a run without a result was taken")
    };
    assert!(
        reason.contains("is not the function WASI defines"),
        "{reason}"
    );

    let other = command(0, "i32.const 0").replace("wasi:cli/run@0.2.0", "my:own/thing");
    let Err(Error::InvalidModule(reason)) = run(&other) else {
        panic!("a component with neither export was taken")
    };
    assert!(reason.contains("does not export"), "{reason}");
    assert!(reason.contains("`my:own/thing`"), "{reason}");
}
