//! tcptrace: live TCP state transitions with the owning process.
//!
//! Layers, each using only those below it: `main` -> `flags` (the command
//! line, turned into validated options) -> `command` and the commands
//! (`tail`, `life`, `hist`, `stuck`, `census`, `doctor`, with `live` for
//! what the three views share; `source` for where a view's records come
//! from, `record` and `replay` for captures, and
//! `report`, a capture as an HTML page, which reads `capture` files only
//! and loads no probe; `serve`, a Prometheus endpoint) -> `session` (the event loop) -> `probe`
//! (loading, with `preflight` and `btf`), `ring` and `decode` (records in),
//! `printer` (every line out, JSON and human; `snapshot` holds what the
//! views hand it, `summary` the tallies), `sockets` (procfs and the table).
mod btf;
pub mod capture;
mod census;
pub mod cgroups;
pub mod clock;
mod command;
pub mod decode;
mod doctor;
mod error;
mod filter;
mod flags;
mod hist;
mod life;
mod live;
mod notify;
mod options;
mod preflight;
pub mod printer;
mod probe;
mod record;
mod replay;
mod report;
mod ring;
mod serve;
mod session;
mod snapshot;
mod sockets;
mod source;
mod state;
mod stuck;
mod summary;
mod tail;

use std::process::ExitCode;

/// The whole program; `main` only calls this.
pub fn main() -> ExitCode {
    let command = match flags::parse() {
        Ok(command) => command,
        Err(code) => return code,
    };
    let preflight = if command.loads_probe() {
        preflight::check()
    } else {
        Ok(())
    };
    let result = preflight.and_then(|()| {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(command.run()))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => error::report(&err),
    }
}
