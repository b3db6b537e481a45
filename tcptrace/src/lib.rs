//! tcptrace: live TCP state transitions with the owning process.
//!
//! Modules follow the pipeline: `preflight` refuses early, `probe` loads the
//! kernel side, `tail` runs the ring-buffer loop, `decode` and `format` turn
//! records into lines, `summary` keeps the tally and the loss counts.
mod btf;
mod census;
pub mod clock;
mod command;
pub mod decode;
mod doctor;
mod error;
mod flags;
pub mod format;
mod hist;
mod life;
mod live;
mod options;
mod preflight;
mod probe;
mod ring;
mod session;
mod sockets;
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
    let result = preflight::check().and_then(|()| {
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
