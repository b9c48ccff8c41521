//! Compiling in a child process: how each way the child ends is reported.
//! Fake compilers (shell scripts) stand in for `fl-compile`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use worker_runtime::compiler::{Isolation, compile_isolated};
use worker_runtime::{Error, Settings, configure};

/// Held by every test that writes a fake or starts a process: a child forked
/// by one test while another still has its script open for writing would
/// make that script's exec fail (ETXTBSY).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A compiler that reads the module, then runs `then`; the guard keeps
/// the other tests out until it is dropped.
fn fake(name: &str, then: &str) -> (MutexGuard<'static, ()>, Isolation) {
    let guard = one_at_a_time();
    configure(Settings::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("fl-compile-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program: PathBuf = dir.join(name);
    std::fs::write(&program, format!("#!/bin/sh\ncat >/dev/null\n{then}\n")).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let isolation = Isolation {
        program,
        timeout: Duration::from_secs(10),
        max_memory_mb: 256,
    };
    (guard, isolation)
}

const MODULE: &[u8] = b"(module)";

#[test]
fn a_panic_in_the_compiler_is_a_panic() {
    let (_one, isolation) = fake("panics", "printf 'Pindex out of bounds'; exit 3");
    match compile_isolated(MODULE, &isolation) {
        Err(Error::Panic(message)) => {
            assert!(
                message.contains("the compiler panicked: index out of bounds"),
                "{message}"
            )
        }
        other => panic!("expected a panic, got {:?}", other.err()),
    }
}

#[test]
fn a_refused_module_is_an_invalid_module() {
    let (_one, isolation) = fake("refuses", "printf 'Eunknown import'; exit 2");
    assert_eq!(
        compile_isolated(MODULE, &isolation).err(),
        Some(Error::InvalidModule("unknown import".into()))
    );
}

#[test]
fn a_compiler_killed_by_a_signal_names_the_limits() {
    let (_one, isolation) = fake("killed", "kill -9 $$");
    match compile_isolated(MODULE, &isolation) {
        Err(Error::InvalidModule(reason)) => {
            assert!(reason.contains("FL_COMPILE_MAX_MB"), "{reason}")
        }
        other => panic!("expected an invalid module, got {:?}", other.err()),
    }
}

#[test]
fn a_compiler_that_cannot_start_leaves_the_runtime_unavailable() {
    let _one = one_at_a_time();
    configure(Settings::default()).unwrap();
    let isolation = Isolation {
        program: "/nonexistent/fl-compile".into(),
        timeout: Duration::from_secs(10),
        max_memory_mb: 256,
    };
    assert!(matches!(
        compile_isolated(MODULE, &isolation),
        Err(Error::Unavailable(_))
    ));
}

#[test]
fn a_compiler_past_its_timeout_is_killed_through_its_pidfd() {
    // it reads the module, then never ends
    let (_one, mut isolation) = fake("stuck", "exec sleep 600");
    isolation.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    match compile_isolated(MODULE, &isolation) {
        Err(Error::InvalidModule(reason)) => assert!(reason.contains("took longer"), "{reason}"),
        Err(other) => panic!("expected a timeout, got {other:?}"),
        Ok(_) => panic!("expected a timeout, got a module"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_pidfd_signals_its_own_process_only() {
    use std::process::Command;
    use worker_runtime::compiler::ChildHandle;
    let _one = one_at_a_time();

    // alive: killed through its pidfd
    let mut child = Command::new("sleep").arg("600").spawn().unwrap();
    let handle = ChildHandle::open(&child);
    assert!(handle.kill());
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );

    // gone and reaped: its pid is free for anyone, and the pidfd reaches no
    // one (kill(pid) could have hit the next process to get that pid)
    let mut child = Command::new("true").spawn().unwrap();
    let handle = ChildHandle::open(&child);
    child.wait().unwrap();
    assert!(!handle.kill());
}

#[test]
fn the_compiler_ends_itself_past_its_wall_clock_limit() {
    // where the worker has no pidfd to kill it with, `--wall-ms` ends it:
    // here it waits for a module that never comes
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let _one = one_at_a_time();
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fl-compile"))
        .args(["--max-mb", "512", "--cpu-s", "60", "--wall-ms", "300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // kept open (wait would close it)
    let _stdin = child.stdin.take();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGALRM));
    assert!(started.elapsed() < Duration::from_secs(5));
}
