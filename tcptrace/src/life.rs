//! `tcptrace life`: one record per finished connection (each end of it),
//! with who owned it, which side closed first, and the time it spent in each
//! phase. The probe assembles the record in the kernel and writes it once,
//! when the connection's last socket is gone: for the side that closed
//! first that is the end of TIME_WAIT, normally 60 s after the close.

use anyhow::Result;
use serde_json::json;

use crate::{
    clock::Clock,
    decode::{end_name, Connection, Record},
    error::note,
    format::{
        pad_left, pad_right, pad_to, write_duration, write_duration_column, write_json_opt_str,
        write_json_opt_u64, write_json_prefix, HumanFormat,
    },
    options::{Columns, Output},
    probe::ProbeOptions,
    session::{self, SessionOptions, View},
    summary::{self, RunContext},
};

struct LifeView {
    json: bool,
    human: HumanFormat,
    connections: u64,
    per_closer: [u64; 4],
    start_unseen: u64,
    bad_records: u64,
}

impl LifeView {
    fn write_human(&mut self, out: &mut Vec<u8>, clock: &Clock, c: &Connection) {
        self.human.write_prefix(
            out,
            clock,
            c.event.ktime_ns,
            c.pid(),
            c.comm(),
            c.endpoints(),
        );
        pad_right(out, c.closer().unwrap_or("-").as_bytes(), 6);
        for phase in [
            c.handshake_ns(),
            c.established_ns(),
            c.closing_ns(),
            c.time_wait_ns(),
        ] {
            out.push(b' ');
            write_duration_column(out, phase);
        }
        out.push(b' ');
        match c.lifetime_ns() {
            Some(ns) => write_duration_column(out, Some(ns)),
            // Seen for this long, but it started before tracing did.
            None => {
                let mut cell = vec![b'>'];
                write_duration(&mut cell, c.event.lifetime_ns);
                pad_left(out, &cell, 9);
            }
        }
        if let Some(end) = end_name(c.event.end) {
            out.push(b' ');
            out.extend_from_slice(end.as_bytes());
        }
        out.push(b'\n');
    }

    fn write_header(&self, out: &mut Vec<u8>) {
        let w = self.human.addr_width();
        let start = out.len();
        out.extend_from_slice(format!("{:<15} {:>7} {:<15} ", "TIME", "PID", "COMM").as_bytes());
        out.extend_from_slice(format!("{:<w$} {:<w$} ", "LADDR:LPORT", "RADDR:RPORT").as_bytes());
        out.extend_from_slice(
            format!(
                "{:<6} {:>9} {:>9} {:>9} {:>9} {:>9} END",
                "CLOSER", "HANDSHAKE", "ESTAB", "CLOSING", "TIMEWAIT", "LIFETIME"
            )
            .as_bytes(),
        );
        pad_to(out, start, 0);
        out.push(b'\n');
    }
}

/// `{"type":"connection",...}`
pub fn write_json_connection(out: &mut Vec<u8>, clock: &Clock, c: &Connection) {
    write_json_prefix(
        out,
        "connection",
        clock,
        c.event.ktime_ns,
        c.pid(),
        c.comm(),
        c.endpoints(),
        c.event.netns,
    );
    out.extend_from_slice(b",\"closer\":");
    write_json_opt_str(out, c.closer());
    out.extend_from_slice(b",\"start_seen\":");
    out.extend_from_slice(if c.start_seen() { b"true" } else { b"false" });
    for (name, value) in [
        (&b",\"handshake_ns\":"[..], c.handshake_ns()),
        (b",\"established_ns\":", c.established_ns()),
        (b",\"closing_ns\":", c.closing_ns()),
        (b",\"time_wait_ns\":", c.time_wait_ns()),
        (b",\"lifetime_ns\":", c.lifetime_ns()),
        (b",\"seen_for_ns\":", Some(c.event.lifetime_ns)),
    ] {
        out.extend_from_slice(name);
        write_json_opt_u64(out, value);
    }
    out.extend_from_slice(b",\"end\":");
    write_json_opt_str(out, end_name(c.event.end));
    out.extend_from_slice(b"}\n");
}

impl View for LifeView {
    fn record(&mut self, data: &[u8], clock: &Clock, out: &mut Vec<u8>) {
        let Ok(Record::Connection(c)) = Record::decode(data) else {
            self.bad_records += 1;
            return;
        };
        self.connections += 1;
        self.per_closer[(c.event.closer as usize).min(3)] += 1;
        if !c.start_seen() {
            self.start_unseen += 1;
        }
        if self.json {
            write_json_connection(out, clock, &c);
        } else {
            self.write_human(out, clock, &c);
        }
    }

    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        let [unknown, local, remote, reset] = self.per_closer;
        if self.json {
            let record = json!({
                "type": "summary",
                "connections": self.connections,
                "closer": {"local": local, "remote": remote, "reset": reset, "unknown": unknown},
                "start_unseen": self.start_unseen,
                "connections_emitted_by_probe": ctx.probe_connections,
                "bad_records": self.bad_records,
            });
            summary::write_json_record(out, record, clock, ctx);
        } else {
            note!(
                "tcptrace: {} connections ({local} closed locally first, {remote} by the peer, \
                 {reset} reset; {} started before tracing)",
                self.connections,
                self.start_unseen
            );
            if self.bad_records > 0 {
                note!("tcptrace: {} malformed ring records", self.bad_records);
            }
            summary::write_human_losses(&mut std::io::stderr(), ctx);
        }
        Ok(())
    }
}

/// `tcptrace life`.
pub struct LifeOptions {
    pub probe: ProbeOptions,
    pub output: Output,
    pub columns: Columns,
}

pub async fn run(options: LifeOptions) -> Result<()> {
    let LifeOptions {
        probe,
        output,
        columns,
    } = options;
    let probe = session::start_probe(&probe)?;
    let mut view = LifeView {
        json: output.json,
        human: HumanFormat::new(columns.wide),
        connections: 0,
        per_closer: [0; 4],
        start_unseen: 0,
        bad_records: 0,
    };
    if !output.json && columns.header {
        let mut header = Vec::new();
        view.write_header(&mut header);
        session::write_stdout(&header)?;
    }
    session::run(
        probe,
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
