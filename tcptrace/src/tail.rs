//! The live tail: one line (or JSON record) per transition.
use anyhow::Result;

use crate::{
    cgroups::Names,
    clock::Clock,
    decode::Record,
    options::{Columns, Output},
    printer::{self, Format, OwnerCgroup},
    session::{SessionOptions, View},
    source::Source,
    summary::{RunContext, RunStats},
};

struct TailView {
    format: Format,
    cgroups: Names,
    json: bool,
    stats: RunStats,
}

impl View for TailView {
    fn learn_cgroups(&mut self, table: &[(u64, String)]) {
        self.cgroups.learn(table);
    }

    #[inline]
    fn record(&mut self, data: &[u8], clock: &Clock, out: &mut Vec<u8>) {
        match Record::decode(data) {
            Ok(Record::Transition(t)) => {
                self.stats.record(&t);
                let cgroup = OwnerCgroup {
                    id: t.cgroup,
                    name: self.cgroups.resolve(t.cgroup),
                };
                self.format.write_transition(out, clock, &t, cgroup);
            }
            _ => self.stats.bad_records += 1,
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

/// `tcptrace` with no subcommand.
pub struct TailOptions {
    pub source: Source,
    pub output: Output,
    pub columns: Columns,
}

pub async fn run(options: TailOptions) -> Result<()> {
    let TailOptions {
        source,
        output,
        columns,
    } = options;
    let source = source.open()?;
    let mut format = Format::new(output.json, columns.wide);
    let mut header = Vec::new();
    if let Format::Human(human) = &mut format {
        if columns.header {
            human.write_header(&mut header);
        }
    }
    printer::write_stdout(&header)?;
    let mut view = TailView {
        format,
        cgroups: source.cgroup_names(),
        json: output.json,
        stats: RunStats::new(),
    };
    let banner = format!(
        "tcptrace: tracing TCP state transitions{}",
        match output.duration {
            Some(d) => format!(" for {:.1} s", d.as_secs_f64()),
            None => " (Ctrl-C to stop)".into(),
        }
    );
    source
        .run(
            &mut view,
            SessionOptions::new(output.json, output.duration, Some(banner)),
        )
        .await
}
