//! The live tail: one line (or JSON record) per transition.
use anyhow::Result;

use crate::{
    cli::TailArgs,
    clock::Clock,
    decode::Transition,
    printer::{self, Format},
    session::{self, SessionOptions, View},
    summary::{RunContext, RunStats},
};

struct TailView {
    format: Format,
    json: bool,
    stats: RunStats,
}

impl View for TailView {
    #[inline]
    fn record(&mut self, data: &[u8], clock: &Clock, out: &mut Vec<u8>) {
        match Transition::decode(data) {
            Ok(t) => {
                self.stats.record(&t);
                self.format.write_transition(out, clock, &t);
            }
            Err(_) => self.stats.bad_records += 1,
        }
    }

    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        if self.json {
            printer::json::write_summary(out, clock, &self.stats, ctx);
        } else {
            let mut text = Vec::new();
            printer::human::write_summary(&mut text, &self.stats, ctx);
            printer::write_stderr(&text);
        }
        Ok(())
    }
}

pub async fn run(args: TailArgs) -> Result<()> {
    args.common.filters.check_pid()?;
    let probe = session::start_probe(&args.common.probe.options(args.probe_config()))?;
    let mut format = Format::new(
        args.common.json,
        args.columns.wide || args.common.filters.ipv6,
    );
    let mut header = Vec::new();
    if let Format::Human(human) = &mut format {
        if !args.columns.no_header {
            human.write_header(&mut header);
        }
    }
    printer::write_stdout(&header)?;
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
