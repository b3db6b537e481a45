//! `tcptrace life`: one record per finished connection (each end of it),
//! with who owned it, which side closed first, and the time it spent in each
//! phase. The probe assembles the record in the kernel and writes it once,
//! when the connection's last socket is gone: for the side that closed
//! first that is the end of TIME_WAIT, normally 60 s after the close.

use anyhow::Result;

use crate::{
    cgroups::Names,
    clock::Clock,
    decode::{end_name, Connection, Record},
    options::{Columns, Output},
    printer::{self, ConnectionRecord, Format, OwnerCgroup},
    session::{SessionOptions, View},
    source::Source,
    summary::{ConnectionTally, RunContext},
};

struct LifeView {
    format: Format,
    cgroups: Names,
    tally: ConnectionTally,
}

impl Connection {
    /// What the printer is fed.
    fn record<'a>(&'a self, cgroups: &'a mut Names) -> ConnectionRecord<'a> {
        let id = self.cgroup();
        ConnectionRecord {
            ktime_ns: self.event.ktime_ns,
            pid: self.pid(),
            comm: self.comm(),
            ends: self.endpoints(),
            netns: self.event.netns,
            closer: self.closer(),
            start_seen: self.start_seen(),
            handshake_ns: self.handshake_ns(),
            established_ns: self.established_ns(),
            closing_ns: self.closing_ns(),
            time_wait_ns: self.time_wait_ns(),
            lifetime_ns: self.lifetime_ns(),
            seen_for_ns: self.event.lifetime_ns,
            end: end_name(self.event.end),
            cgroup: OwnerCgroup {
                id,
                name: cgroups.resolve(id),
            },
        }
    }
}

impl View for LifeView {
    fn learn_cgroups(&mut self, table: &[(u64, String)]) {
        self.cgroups.learn(table);
    }

    fn record(&mut self, data: &[u8], clock: &Clock, out: &mut Vec<u8>) {
        let Ok(Record::Connection(c)) = Record::decode(data) else {
            self.tally.bad_records += 1;
            return;
        };
        self.tally.connections += 1;
        self.tally.per_closer[(c.event.closer as usize).min(3)] += 1;
        if !c.start_seen() {
            self.tally.start_unseen += 1;
        }
        self.format
            .write_connection(out, clock, &c.record(&mut self.cgroups));
    }

    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        if self.format.is_json() {
            printer::json::write_connection_summary(out, clock, &self.tally, ctx);
        } else {
            let mut text = Vec::new();
            printer::human::write_connection_summary(&mut text, &self.tally, ctx);
            printer::write_stderr(&text);
        }
        Ok(())
    }
}

/// `tcptrace life`.
pub struct LifeOptions {
    pub source: Source,
    pub output: Output,
    pub columns: Columns,
}

pub async fn run(options: LifeOptions) -> Result<()> {
    let LifeOptions {
        source,
        output,
        columns,
    } = options;
    let source = source.open()?;
    let mut view = LifeView {
        format: Format::new(output.json, columns.wide),
        cgroups: source.cgroup_names(),
        tally: ConnectionTally::default(),
    };
    if let Format::Human(human) = &view.format {
        if columns.header {
            let mut header = Vec::new();
            human.write_connection_header(&mut header);
            printer::write_stdout(&header)?;
        }
    }
    source
        .run(
            &mut view,
            SessionOptions::new(
                output.json,
                output.duration,
                Some(
                    "tcptrace: reporting finished connections (Ctrl-C to stop; connections that \
                 closed first appear when their TIME_WAIT ends)"
                        .into(),
                ),
            ),
        )
        .await
}
