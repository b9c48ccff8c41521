//! `Worker.Native`: the rustler NIF over `worker_runtime`.
//!
//! Each file mirrors an Elixir concept: `module.rs` for
//! `Worker.Runtime.Module`, `invocation.rs` for the invocation loop in
//! `Worker.Runtime`, `terms.rs` for JSON <-> term conversion, `store.rs` for `Worker.Store`.

mod atoms;
mod gate;
mod invocation;
mod mailer;
mod module;
mod store;
mod terms;

rustler::init!("Elixir.Worker.Native");
