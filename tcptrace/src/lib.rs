//! tcptrace: live TCP state transitions with the owning process.
//!
//! Modules follow the pipeline: `preflight` refuses early, `probe` loads the
//! kernel side, `tail` runs the ring-buffer loop, `decode` and `format` turn
//! records into lines, `summary` keeps the tally and the loss counts.
pub mod btf;
pub mod census;
pub mod cli;
pub mod clock;
pub mod decode;
pub mod doctor;
pub mod error;
pub mod format;
pub mod hist;
pub mod life;
pub mod live;
pub mod notify;
pub mod owners;
pub mod preflight;
pub mod probe;
pub mod ring;
pub mod session;
pub mod socket_table;
pub mod state;
pub mod stuck;
pub mod summary;
pub mod tail;

use std::process::ExitCode;

use clap::{error::ErrorKind, Parser};

/// The whole program; `main` only calls this.
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // clap's message, on one line, without its "error: " prefix.
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            error::note!("tcptrace: {}", first.trim_start_matches("error: "));
            return ExitCode::from(error::EXIT_USAGE);
        }
    };
    let result = preflight::check().and_then(|()| {
        tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(async {
                    match cli.command {
                        None => tail::run(cli.tail).await,
                        Some(cli::Command::Life(args)) => life::run(args).await,
                        Some(cli::Command::Hist(args)) => hist::run(args).await,
                        Some(cli::Command::Stuck(args)) => stuck::run(args).await,
                        Some(cli::Command::Census(args)) => census::run(args).await,
                        Some(cli::Command::Doctor(args)) => doctor::run(args).await,
                    }
                })
            })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => error::report(&err),
    }
}
