//! `tcptrace stuck`: who is not closing their sockets. A live table of
//! sockets sitting in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for longer than
//! `--min-age`, with their owners, including those stuck before tcptrace
//! started (found by walking the kernel's socket table).
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use tcptrace_common::tcp_state::{CLOSE_WAIT, FIN_WAIT2, LAST_ACK};

pub use crate::snapshot::{ProcessCounts, StuckRow as Row, STUCK_STATES};
use crate::{
    cli::{parse_seconds, ProbeArgs},
    clock::Clock,
    live::{self, Screen, Tracked},
    printer,
    probe::Probe,
    session::{self, SessionOptions, View},
    summary::RunContext,
};

#[derive(Args, Debug)]
#[command(long_about = "\
Who is not closing their sockets: a live table of sockets sitting in
CLOSE_WAIT (the peer closed, the application has not), FIN_WAIT2 (this
side closed, the peer has not) and LAST_ACK for longer than --min-age, with
the owning process, and a count per process.

Sockets that were already in such a state when tcptrace started are found
by walking the kernel's socket table (/proc/net/tcp and tcp6), their owner
through the socket inode in /proc/PID/fd (as ss -p does). When they entered
the state is unknown: they are shown whatever --min-age, with AGE as a
lower bound (\">=\", JSON age_at_least), counted from tcptrace's start.

A socket leaves the table as soon as its owner closes it (CLOSE_WAIT ->
LAST_ACK) or it ends. A FIN_WAIT2 connection whose application has closed
it lives on in a timewait socket (orphaned) until the peer's FIN or
net.ipv4.tcp_fin_timeout: it is shown with its last known owner, marked
orphaned.

The table is redrawn in place on a terminal; otherwise a snapshot is
printed every --interval. By default only tcptrace's own network namespace
is shown (like ss and netstat); --all-netns shows every namespace.")]
pub struct StuckArgs {
    /// Show sockets that have been in their state for at least SECONDS.
    #[arg(short = 'm', long, value_name = "SECONDS", default_value = "5",
          value_parser = parse_seconds)]
    pub min_age: Duration,

    /// Refresh the table every SECONDS.
    #[arg(short, long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    pub interval: Duration,

    /// Print one snapshot (right after the start-up walk) and exit.
    #[arg(long)]
    pub once: bool,

    /// Print JSON Lines: per refresh a "stuck_snapshot" record, then one
    /// "stuck" record per socket and one "stuck_process" record per owner.
    #[arg(short, long)]
    pub json: bool,

    /// Most rows shown per state (human output; JSON has them all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,

    /// Every network namespace, not only tcptrace's own.
    #[arg(long)]
    pub all_netns: bool,

    /// Stop by itself after SECONDS.
    #[arg(short, long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// The stuck sockets of a table at `now_ns`, by state then oldest first.
pub fn rows(tracked: &Tracked, now_ns: u64, min_age: Duration) -> Vec<Row> {
    let min_age_ns = min_age.as_nanos() as u64;
    let mut rows: Vec<Row> = tracked
        .table
        .connections()
        .filter(|(_, e)| STUCK_STATES.contains(&e.state))
        .filter_map(|(tuple, e)| {
            let (age_ns, at_least) = match e.since_ns {
                Some(since) => (now_ns.saturating_sub(since), false),
                None => (now_ns.saturating_sub(tracked.table.walk_start_ns()), true),
            };
            (at_least || age_ns >= min_age_ns).then_some(Row {
                tuple: *tuple,
                state: e.state,
                owner: e.owner,
                orphaned: e.timewait,
                age_ns,
                age_at_least: at_least,
            })
        })
        .collect();
    let order = |s: u8| STUCK_STATES.iter().position(|&x| x == s);
    rows.sort_by(|a, b| {
        order(a.state)
            .cmp(&order(b.state))
            .then(b.age_ns.cmp(&a.age_ns))
            .then(a.tuple.cmp(&b.tuple))
    });
    rows
}

/// Counts per owner: CLOSE_WAIT, FIN_WAIT2 (held open), LAST_ACK, and
/// orphaned FIN_WAIT2.
pub fn per_process(rows: &[Row]) -> ProcessCounts {
    let mut counts = ProcessCounts::new();
    for row in rows {
        let column = match (row.state, row.orphaned) {
            (CLOSE_WAIT, _) => 0,
            (FIN_WAIT2, false) => 1,
            (LAST_ACK, _) => 2,
            _ => 3,
        };
        counts.entry(row.owner).or_default()[column] += 1;
    }
    counts
}

struct StuckView {
    tracked: Tracked,
    json: bool,
    once: bool,
    done: bool,
    interval: Duration,
    min_age: Duration,
    limit: usize,
    screen: Screen,
}

impl StuckView {
    fn print(&mut self, clock: &Clock, out: &mut Vec<u8>) {
        let now = Clock::now_ktime_ns();
        let rows = rows(&self.tracked, now, self.min_age);
        if self.json {
            printer::json::write_stuck(out, clock, now, self.min_age, &rows, &per_process(&rows));
        } else {
            self.screen.begin(out);
            printer::human::write_stuck(
                out,
                clock,
                now,
                self.min_age,
                self.limit,
                &rows,
                per_process(&rows),
            );
        }
    }
}

impl View for StuckView {
    fn record(&mut self, data: &[u8], _clock: &Clock, _out: &mut Vec<u8>) {
        self.tracked.record(data);
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(live::refresh_every(self.once, self.interval))
    }

    fn refresh(&mut self, _probe: &Probe, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        live::resync_timewait(&mut self.tracked);
        self.tracked.find_missing_owners(&STUCK_STATES);
        self.print(clock, out);
        self.done = self.once;
        Ok(())
    }

    fn done(&self) -> bool {
        self.done
    }

    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        self.screen.end(out);
        live::finish(self.json, &self.tracked, ctx, clock, out);
        Ok(())
    }
}

pub async fn run(args: StuckArgs) -> Result<()> {
    let scope = live::scope(args.all_netns)?;
    let (probe, tracked) = live::start(&args.probe, scope).await?;
    let mut view = StuckView {
        tracked,
        json: args.json,
        once: args.once,
        done: false,
        interval: args.interval,
        min_age: args.min_age,
        limit: args.limit.max(1),
        screen: Screen::new(args.json),
    };
    let banner = (!args.once).then(|| {
        "tcptrace: tracing stuck sockets (CLOSE_WAIT, FIN_WAIT2, LAST_ACK; Ctrl-C to stop)"
            .to_string()
    });
    session::run(
        probe,
        &mut view,
        SessionOptions::new(args.json, args.duration, banner),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket_table::{Owner, Scope, Tuple, Walked};
    use std::collections::HashMap;

    fn tuple(lport: u16) -> Tuple {
        Tuple {
            netns: 1,
            local: "127.0.0.1".parse().unwrap(),
            lport,
            remote: "127.0.0.1".parse().unwrap(),
            rport: 80,
        }
    }

    #[test]
    fn walked_sockets_are_shown_with_a_lower_bound() {
        let mut tracked = Tracked::new(
            crate::socket_table::SocketTable::new(Scope::Netns(1), 100),
            true,
        );
        let walked = [
            Walked {
                tuple: tuple(1000),
                state: CLOSE_WAIT,
                timewait: false,
                inode: 5,
            },
            Walked {
                tuple: tuple(1001),
                state: FIN_WAIT2,
                timewait: true,
                inode: 0,
            },
        ];
        let owner = Owner {
            pid: 42,
            comm: *b"server\0\0\0\0\0\0\0\0\0\0",
        };
        tracked
            .table
            .seed(&walked, &HashMap::from([(5, owner)]), 100, 200);
        let rows = rows(&tracked, 1_100, Duration::from_secs(5));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].state, CLOSE_WAIT);
        assert_eq!((rows[0].age_ns, rows[0].age_at_least), (1_000, true));
        assert_eq!(rows[0].owner, Some(owner));
        assert!(rows[1].orphaned && rows[1].owner.is_none());
        let counts = per_process(&rows);
        assert_eq!(counts[&Some(owner)], [1, 0, 0, 0]);
        assert_eq!(counts[&None], [0, 0, 0, 1]);

        let mut out = Vec::new();
        printer::json::write_stuck(
            &mut out,
            &Clock::new(),
            1_100,
            Duration::from_secs(5),
            &rows,
            &counts,
        );
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["type"], "stuck_snapshot");
        assert_eq!(lines[1]["comm"], "server");
        assert_eq!(lines[1]["age_at_least"], true);
        assert_eq!(lines[2]["orphaned"], true);
        assert_eq!(lines[2]["owner_known"], false);
    }
}
