//! The FunLess function runtime on Wasmtime, with no BEAM inside: the NIF
//! crate (`worker_nif`) wraps it for Elixir, and the `floor` binary measures
//! it alone.

pub mod bulk;
pub mod command;
pub mod component;
pub mod engine;
pub mod error;
pub mod host;
pub mod http;
pub mod invocation;
pub mod json;
pub mod logs;
pub mod memory;
pub mod module;
pub mod outbound;
pub mod policy;
pub mod stdio;

pub use engine::{Settings, configure};
pub use error::Error;
pub use invocation::{Invocation, Limits, Outcome};
pub use module::{CompiledModule, Kind, compile, deserialize, engine_fingerprint, serialize};
