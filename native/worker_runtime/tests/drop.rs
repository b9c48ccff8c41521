//! Dropping an invocation frees it. A file of its own: cargo runs each test
//! file in its own process, so no other invocation changes the count.

use std::sync::Arc;
use std::task::{Context, Wake, Waker};
use std::time::Duration;
use worker_runtime::{Invocation, Limits, Settings, compile, configure};

struct Noop;
impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

#[test]
fn dropping_an_invocation_mid_run_frees_it() {
    let spin = r#"(module (memory (export "memory") 1)
        (func (export "__invoke") (param i32) (result i32) (loop $l (br $l)) (i32.const 0)))"#;
    let rt = configure(Settings::default()).unwrap();
    let module = compile(spin.as_bytes()).unwrap();
    assert_eq!(rt.in_flight(), 0);
    let limits = Limits::new(Duration::from_secs(60), 128 << 20);
    let mut invocation = Invocation::new(&module, b"{}".to_vec(), limits).unwrap();
    let waker = Waker::from(Arc::new(Noop));
    assert!(
        invocation
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    assert_eq!(rt.in_flight(), 1);
    drop(invocation);
    assert_eq!(rt.in_flight(), 0);
}
