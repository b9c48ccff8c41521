//! One invocation of a compiled function, whatever its kind: a future that
//! the embedder polls until it has the [`Outcome`].
//!
//! The guest runs on a Wasmtime fiber with its own stack, so it can be
//! polled from any thread, whatever that thread's stack size. Each epoch
//! tick makes the guest yield ([`crate::store`]), so one `poll` returns
//! within about one tick, or a millisecond for a slice that starts while
//! no other runs ([`crate::engine`]'s ticker): the embedder decides where
//! and when to poll again. Dropping the invocation at any point frees everything.

use crate::Error;
use crate::engine::{Running, runtime};
use crate::limits::Limits;
use crate::logs::{Line, LogSink};
use crate::module::CompiledModule;
use crate::outcome::Outcome;
use crate::store::{Run, SliceClock, Start, elsewhere};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub struct Invocation {
    /// `None` once finished.
    future: Option<Run>,
    logs: Arc<LogSink>,
    /// Whether its store is shared (see [`crate::store::Started`]).
    shared: bool,
    slice: Arc<SliceClock>,
    _running: Running,
}

impl Invocation {
    /// Prepares an invocation of `module` with `input` (JSON text). Nothing
    /// runs until the first [`poll`](Self::poll).
    pub fn new(
        module: &CompiledModule,
        input: Vec<u8>,
        limits: Limits,
    ) -> Result<Invocation, Error> {
        let rt = runtime()?;
        if input.len() > limits.max_input_bytes {
            return Err(Error::InvalidArgs(format!(
                "input of {} bytes is over the limit of {} bytes",
                input.len(),
                limits.max_input_bytes
            )));
        }
        let slice = Arc::new(SliceClock::default());
        let start = Start::new(
            &rt.engine,
            rt.settings.tick,
            rt.settings.memory_cap,
            bytes::Bytes::from(input),
            limits,
            slice.clone(),
        );
        let started = module.code.start(start, rt.settings.p3_reuse);
        Ok(Invocation {
            future: Some(started.run),
            logs: started.logs,
            shared: started.shared,
            slice,
            _running: rt.running(),
        })
    }

    /// Runs the guest for at most about one tick (a millisecond, if no
    /// slice ran just before). Enters the runtime's Tokio
    /// context, which outbound HTTP and WASI timers need.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return Poll::Ready(Outcome::Instantiate(e.to_string())),
        };
        let _tokio = rt.tokio.enter();
        let _slice = rt.slice();
        self.slice.start();
        let Some(future) = self.future.as_mut() else {
            return Poll::Ready(Outcome::Instantiate("the invocation is over".into()));
        };
        match future.as_mut().poll(cx) {
            Poll::Ready(outcome) => {
                self.future = None;
                if !self.shared {
                    self.logs.finish();
                }
                Poll::Ready(outcome)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// What the guest printed since the last call.
    pub fn logs(&self) -> &LogSink {
        &self.logs
    }

    /// Runs to completion on the current thread, sleeping while the guest
    /// waits on I/O. For tests, benchmarks and tools outside the BEAM.
    pub fn run_blocking(mut self) -> (Outcome, Vec<Line>) {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut lines = Vec::new();
        loop {
            let polled = self.poll(&mut cx);
            lines.extend(self.logs.drain());
            match polled {
                Poll::Ready(outcome) => return (outcome, lines),
                Poll::Pending => std::thread::park(),
            }
        }
    }
}

/// An invocation dropped before it finished (a timeout in the embedder, a
/// caller that died): its store, whatever its size, is freed elsewhere.
impl Drop for Invocation {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            if self.shared {
                drop(future);
            } else {
                elsewhere(Box::new(future));
            }
        }
    }
}
