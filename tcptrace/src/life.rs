//! `tcptrace life`: one record per finished connection (each end of it),
//! with who owned it, which side closed first, and the time it spent in each
//! phase. The probe assembles the record in the kernel and writes it once,
//! when the connection's last socket is gone: for the side that closed
//! first that is the end of TIME_WAIT, normally 60 s after the close.

use anyhow::Result;
use clap::Args;
use tcptrace_common::{
    closer, ConnectionEvent, ProbeConfig, CONFIG_EMIT_CONNECTIONS, CONN_CLOSING_KNOWN,
    CONN_ESTABLISHED_KNOWN, CONN_HANDSHAKE_KNOWN, CONN_OWNER_KNOWN, CONN_START_SEEN,
    CONN_TIME_WAIT_KNOWN,
};

use crate::{
    cli::{Columns, Common},
    clock::Clock,
    decode::{address, comm_bytes, end_name},
    printer::{self, ConnectionRecord, Endpoints, Format},
    session::{self, SessionOptions, View},
    summary::{ConnectionTally, RunContext},
};

#[derive(Args, Debug)]
#[command(long_about = "\
One record per finished connection (each end of it), like tcplife, but with
the owner seen in its own context, which side closed first (local, remote or
reset) and the time in each phase: handshake, ESTABLISHED, closing
(FIN_WAIT1/FIN_WAIT2/CLOSING, or CLOSE_WAIT/LAST_ACK) and TIME_WAIT.

A connection is reported when its last socket is gone. For the side that
closed first that is the end of TIME_WAIT, normally 60 s after the close
(or earlier when the socket is reused or killed); --no-timewait-hook reports
it at the close instead, without TIME_WAIT. Connections opened before
tcptrace started are reported with what is known (start_seen false, unknown
phases null), never with invented durations.")]
pub struct LifeArgs {
    #[command(flatten)]
    pub common: Common,

    #[command(flatten)]
    pub columns: Columns,
}

/// A decoded `ConnectionEvent`.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    pub event: ConnectionEvent,
}

impl Connection {
    pub fn decode(data: &[u8]) -> Option<Self> {
        if data.len() < ConnectionEvent::SIZE {
            return None;
        }
        // SAFETY: ConnectionEvent is plain integers and byte arrays: any
        // bytes are a valid value; read_unaligned copes with alignment.
        let event = unsafe { std::ptr::read_unaligned(data.as_ptr().cast::<ConnectionEvent>()) };
        Some(Connection { event })
    }

    fn known(&self, bit: u8, value: u64) -> Option<u64> {
        (self.event.flags & bit != 0).then_some(value)
    }

    pub fn pid(&self) -> Option<u32> {
        self.known(CONN_OWNER_KNOWN, 0).map(|_| self.event.pid)
    }

    pub fn comm(&self) -> &[u8] {
        if self.pid().is_none() {
            return &[];
        }
        comm_bytes(&self.event.comm)
    }

    pub fn endpoints(&self) -> Endpoints {
        let e = &self.event;
        Endpoints {
            local: address(e.family, e.laddr),
            lport: e.lport,
            remote: address(e.family, e.raddr),
            rport: e.rport,
        }
    }

    pub fn closer(&self) -> Option<&'static str> {
        match self.event.closer {
            closer::LOCAL => Some("local"),
            closer::REMOTE => Some("remote"),
            closer::RESET => Some("reset"),
            _ => None,
        }
    }

    pub fn start_seen(&self) -> bool {
        self.event.flags & CONN_START_SEEN != 0
    }

    pub fn handshake_ns(&self) -> Option<u64> {
        self.known(CONN_HANDSHAKE_KNOWN, self.event.handshake_ns)
    }

    pub fn established_ns(&self) -> Option<u64> {
        self.known(CONN_ESTABLISHED_KNOWN, self.event.established_ns)
    }

    pub fn closing_ns(&self) -> Option<u64> {
        self.known(CONN_CLOSING_KNOWN, self.event.closing_ns)
    }

    pub fn time_wait_ns(&self) -> Option<u64> {
        self.known(CONN_TIME_WAIT_KNOWN, self.event.time_wait_ns)
    }

    /// The whole lifetime, when its start was seen.
    pub fn lifetime_ns(&self) -> Option<u64> {
        self.known(CONN_START_SEEN, self.event.lifetime_ns)
    }
}

struct LifeView {
    format: Format,
    tally: ConnectionTally,
}

impl Connection {
    /// What the printer is fed.
    fn record(&self) -> ConnectionRecord<'_> {
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
        }
    }
}

impl View for LifeView {
    fn record(&mut self, data: &[u8], clock: &Clock, out: &mut Vec<u8>) {
        let Some(c) = Connection::decode(data) else {
            self.tally.bad_records += 1;
            return;
        };
        self.tally.connections += 1;
        self.tally.per_closer[(c.event.closer as usize).min(3)] += 1;
        if !c.start_seen() {
            self.tally.start_unseen += 1;
        }
        self.format.write_connection(out, clock, &c.record());
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

pub async fn run(args: LifeArgs) -> Result<()> {
    args.common.filters.check_pid()?;
    let mut config = ProbeConfig::empty();
    config.flags |= CONFIG_EMIT_CONNECTIONS;
    args.common.filters.apply(&mut config);
    let probe = session::start_probe(&args.common.probe.options(config))?;
    let mut view = LifeView {
        format: Format::new(
            args.common.json,
            args.columns.wide || args.common.filters.ipv6,
        ),
        tally: ConnectionTally::default(),
    };
    if let Format::Human(human) = &view.format {
        if !args.columns.no_header {
            let mut header = Vec::new();
            human.write_connection_header(&mut header);
            printer::write_stdout(&header)?;
        }
    }
    session::run(
        probe,
        &mut view,
        SessionOptions::new(
            args.common.json,
            args.common.duration,
            Some(
                "tcptrace: reporting finished connections (Ctrl-C to stop; connections that \
                 closed first appear when their TIME_WAIT ends)"
                    .into(),
            ),
        ),
    )
    .await
}
