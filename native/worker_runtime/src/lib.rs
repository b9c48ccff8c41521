//! The FunLess function runtime on Wasmtime, with no BEAM inside: the NIF
//! crate (`worker_nif`) wraps it for Elixir, and the `floor` binary measures
//! it alone.
//!
//! Its files are in layers; each imports only from the layers above it in
//! this list:
//!
//! 1. vocabulary: [`error`], [`outcome`], [`limits`], [`text`], [`memory`],
//!    [`json`], [`policy`], [`bulk`];
//! 2. services: [`engine`], [`logs`], [`stdio`], [`store`], [`outbound`];
//! 3. hosts: [`core_host`] (core modules), [`component_host`] (components);
//! 4. kinds of function, one file each: [`kinds`];
//! 5. modules: [`module`] (recognising the kind, compiling, linking),
//!    [`artifact`] (sealing what is kept on disk), [`compiler`] (the
//!    compiler child process);
//! 6. [`invocation`], the future the embedder polls.

pub mod bulk;
pub mod error;
pub mod json;
pub mod limits;
pub mod memory;
pub mod outcome;
pub mod policy;
pub mod text;

pub mod engine;
pub mod logs;
pub mod outbound;
pub mod stdio;
pub mod store;

pub mod component_host;
pub mod core_host;

pub mod kinds;

pub mod artifact;
pub mod compiler;
pub mod module;

pub mod invocation;

pub use engine::{Reuse, Settings};
pub use error::Error;
pub use invocation::Invocation;
pub use limits::Limits;
pub use module::{CompiledModule, Kind, compile, deserialize, engine_fingerprint, serialize};
pub use outcome::Outcome;

/// Starts the shared runtime with `settings`, once per process (see
/// [`engine::configure`]), with the linkers of every kind of function.
pub fn configure(settings: Settings) -> Result<&'static engine::Runtime, Error> {
    let rt = engine::configure(settings)?;
    module::prepare_linkers()?;
    Ok(rt)
}
