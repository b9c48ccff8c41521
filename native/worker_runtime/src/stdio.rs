//! A guest's WASI stdout and stderr: one adapter from wasmtime-wasi's
//! stream traits to a [`Sink`] of bytes. The sinks are the log
//! ([`crate::logs::WasiLog`]) and a WASI command's result and stderr
//! ([`crate::command`]).

use crate::host::GuestFault;
use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Where what a guest writes goes.
pub trait Sink: Clone + Send + Sync + 'static {
    /// Takes what the guest wrote. An error fails the write, and the guest
    /// traps with that message.
    fn put(&self, bytes: &[u8]) -> Result<(), String>;
}

/// Bytes of output the host takes in one write, and between two yields of
/// the invocation: what a [`Sink`] does with them (the log splits, escapes
/// and counts lines) runs on the scheduler that polls the guest, so each
/// slice does a bounded amount of it. A guest that hands over a megabyte
/// at once writes it in 16 KiB steps, the invocation yielding between them.
pub const SLICE_BYTES: usize = 16 << 10;

/// A WASI output stream (stdout or stderr) over a [`Sink`].
#[derive(Clone)]
pub struct Output<S>(pub S);

impl<S: Sink> IsTerminal for Output<S> {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl<S: Sink> StdoutStream for Output<S> {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Stream {
            sink: self.0.clone(),
            taken: 0,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// The stream a guest writes to: [`SLICE_BYTES`] between two yields of
/// the invocation. Its `check-write` permit is what is left of them, a
/// write past the permit traps (WASI leaves that check to the stream), and
/// once they are spent the stream is ready again only after a yield (WASI
/// preview 1's `fd_write` writes a guest's whole buffer, 4 KiB at a time,
/// inside one host call, waiting for readiness before each).
struct Stream<S> {
    sink: S,
    taken: usize,
}

impl<S: Sink> OutputStream for Stream<S> {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let permit = SLICE_BYTES.saturating_sub(self.taken);
        if bytes.len() > permit {
            let message = format!(
                "a write of {} bytes past the permit of {permit}",
                bytes.len()
            );
            return Err(StreamError::Trap(wasmtime::Error::new(GuestFault(message))));
        }
        self.taken += bytes.len();
        self.sink
            .put(&bytes)
            .map_err(|m| StreamError::Trap(wasmtime::Error::new(GuestFault(m))))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(SLICE_BYTES.saturating_sub(self.taken))
    }
}

#[wasmtime_wasi::async_trait]
impl<S: Sink> Pollable for Stream<S> {
    async fn ready(&mut self) {
        if self.taken >= SLICE_BYTES {
            // reset once the yield happened: a wait dropped half-way (a
            // poll that another pollable ended) leaves the budget spent
            YieldNow(false).await;
            self.taken = 0;
        }
    }
}

/// Pending once, having woken its task: the invocation ends its slice (the
/// embedder sees a wake, not a wait) and goes on at its next one.
struct YieldNow(bool);

impl std::future::Future for YieldNow {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

impl<S: Sink> tokio::io::AsyncWrite for Output<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let buf = &buf[..buf.len().min(SLICE_BYTES)];
        Poll::Ready(
            self.0
                .put(buf)
                .map(|()| buf.len())
                .map_err(std::io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
