//! The live tail: one line (or JSON record) per transition.
use anyhow::Result;

use crate::{
    cli::TailArgs,
    clock::Clock,
    decode::Record,
    format::{Format, HumanFormat},
    session::{self, SessionOptions, View},
    summary::{self, RunContext, RunStats},
};

struct TailView {
    format: Format,
    json: bool,
    stats: RunStats,
}

impl View for TailView {
    #[inline]
    fn record(&mut self, data: &[u8], clock: &Clock, out: &mut Vec<u8>) {
        match Record::decode(data) {
            Ok(Record::Transition(t)) => {
                self.stats.record(&t);
                self.format.write_transition(out, clock, &t);
            }
            _ => self.stats.bad_records += 1,
        }
    }

    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        if self.json {
            summary::write_json_summary(out, clock, &self.stats, ctx);
        } else {
            summary::write_human_summary(&mut std::io::stderr(), &self.stats, ctx);
        }
        Ok(())
    }
}

pub async fn run(args: TailArgs) -> Result<()> {
    args.common.filters.check_pid()?;
    let probe = session::start_probe(&args.common.probe.options(args.probe_config()))?;
    let mut format = if args.common.json {
        Format::Json
    } else {
        Format::Human(HumanFormat::new(
            args.columns.wide || args.common.filters.ipv6,
        ))
    };
    let mut header = Vec::new();
    if let Format::Human(human) = &mut format {
        if !args.columns.no_header {
            human.write_header(&mut header);
        }
    }
    session::write_stdout(&header)?;
    let mut view = TailView {
        format,
        json: args.common.json,
        stats: RunStats::new(),
    };
    let banner = format!(
        "tcptrace: tracing TCP state transitions{}",
        match args.common.duration {
            Some(d) => format!(" for {:.1} s", d.as_secs_f64()),
            None => " (Ctrl-C to stop)".into(),
        }
    );
    session::run(
        probe,
        &mut view,
        SessionOptions::new(args.common.json, args.common.duration, Some(banner)),
    )
    .await
}
