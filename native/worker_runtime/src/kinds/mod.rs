//! The kinds of function, one file each. Each owns the export that makes a
//! module one of it (`recognize`), how an invocation starts and what its
//! result is (`start`); `module` dispatches to them.

pub mod cli_component;
pub mod funless;
pub mod http_component;
pub mod http_instances;
pub mod wasi_command;
