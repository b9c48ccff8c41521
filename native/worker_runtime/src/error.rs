//! The runtime's one error type: why compiling, loading, serializing,
//! configuring or starting an invocation did not happen. (How a started
//! invocation ends, a trap or a timeout included, is an
//! [`Outcome`](crate::Outcome), not an error.)
//!
//! Each variant is one documented Elixir error shape; the NIF encodes them
//! in one place (`native/worker_nif/src/error.rs`).

/// Why the runtime refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The module is not valid, does not compile, breaks the ABI, or is
    /// over a limit (the message names it). `{:invalid_module, reason}`.
    #[error("{0}")]
    InvalidModule(String),
    /// The runtime could not start (the engine refused its configuration,
    /// the compiler could not be started, no settings were given).
    /// `{:runtime_unavailable, reason}`.
    #[error("{0}")]
    Unavailable(String),
    /// The runtime already runs with other settings; they cannot change
    /// while the process lives. `{:runtime_configured, reason}`.
    #[error("{0}")]
    Configured(String),
    /// A compiled module could not be written out. `{:serialize, reason}`.
    #[error("{0}")]
    Serialize(String),
    /// Invocation input the runtime refuses (over the input cap).
    /// `{:invalid_args, reason}`.
    #[error("{0}")]
    InvalidArgs(String),
    /// A bug in the runtime or the compiler; the runtime stays usable.
    /// `{:panic, reason}`.
    #[error("{0}")]
    Panic(String),
}

impl Error {
    /// A refusal whose text is already safe to show.
    pub(crate) fn invalid_module(message: impl Into<String>) -> Error {
        Error::InvalidModule(message.into())
    }

    /// A refusal, its text escaped as log lines are ([`crate::text`]): it
    /// carries names the module chose (imports, exports, custom sections),
    /// which may hold newlines or terminal escapes meant for a log.
    pub(crate) fn refused(message: impl Into<String>) -> Error {
        Error::InvalidModule(crate::text::escape(message.into().as_bytes()))
    }
}
