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
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl<S: Sink> OutputStream for Output<S> {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.0
            .put(&bytes)
            .map_err(|m| StreamError::Trap(wasmtime::Error::new(GuestFault(m))))
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(1 << 20)
    }
}

#[wasmtime_wasi::async_trait]
impl<S: Sink> Pollable for Output<S> {
    async fn ready(&mut self) {}
}

impl<S: Sink> tokio::io::AsyncWrite for Output<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
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
