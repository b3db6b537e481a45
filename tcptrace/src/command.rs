//! The commands, each with its validated options: what `main` runs.
use anyhow::Result;

use crate::{
    census::{self, CensusOptions},
    doctor::{self, DoctorOptions},
    hist::{self, HistOptions},
    life::{self, LifeOptions},
    record::{self, RecordOptions},
    report::{self, ReportOptions},
    serve::{self, ServeOptions},
    source::Source,
    stuck::{self, StuckOptions},
    tail::{self, TailOptions},
};

pub enum Command {
    /// The live tail (no subcommand).
    Tail(TailOptions),
    Life(LifeOptions),
    Hist(HistOptions),
    Stuck(StuckOptions),
    Census(CensusOptions),
    Doctor(DoctorOptions),
    Record(RecordOptions),
    /// A capture as an HTML page: reads files only.
    Report(ReportOptions),
    /// A Prometheus endpoint.
    Serve(ServeOptions),
}

impl Command {
    /// Whether the command loads the probe (reading a capture does not:
    /// it needs no privileges).
    pub fn loads_probe(&self) -> bool {
        let source = match self {
            Command::Tail(o) => &o.source,
            Command::Life(o) => &o.source,
            Command::Hist(o) => &o.source,
            Command::Report(_) => return false,
            _ => return true,
        };
        matches!(source, Source::Live(_))
    }

    pub async fn run(self) -> Result<()> {
        match self {
            Command::Tail(options) => tail::run(options).await,
            Command::Life(options) => life::run(options).await,
            Command::Hist(options) => hist::run(options).await,
            Command::Stuck(options) => stuck::run(options).await,
            Command::Census(options) => census::run(options).await,
            Command::Doctor(options) => doctor::run(options).await,
            Command::Record(options) => record::run(options).await,
            Command::Report(options) => report::run(options).await,
            Command::Serve(options) => serve::run(options).await,
        }
    }
}
