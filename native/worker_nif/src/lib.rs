//! `Worker.Native`: the rustler NIF over `worker_runtime`.
//!
//! Each file mirrors an Elixir concept: `settings.rs` for
//! `Worker.Runtime.Settings`, `module.rs` for `Worker.Runtime.Module`,
//! `invocation.rs` (with `wake.rs` and `reply.rs`) for
//! `Worker.Runtime.Invocation`, `stats.rs` for `Worker.Runtime.stats/0`,
//! `terms.rs` for JSON <-> term conversion (`Worker.JSON`), `store.rs` for
//! `Worker.Store`, `gate.rs` for `Worker.Gate`; `error.rs` is the one error
//! type, `mailer.rs` the thread that sends messages for places that cannot.

mod atoms;
mod error;
mod gate;
mod invocation;
mod mailer;
mod module;
mod reply;
mod settings;
mod stats;
mod store;
mod terms;
mod wake;

rustler::init!("Elixir.Worker.Native", load = load);

/// Starts what every NIF relies on; `false` (the reason on stderr, since
/// there is no logger yet) makes the load, and so the boot, fail.
fn load(_env: rustler::Env, _info: rustler::Term) -> bool {
    match mailer::start() {
        Ok(()) => true,
        Err(reason) => {
            eprintln!("worker_nif: {reason}");
            false
        }
    }
}
