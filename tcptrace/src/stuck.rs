//! `tcptrace stuck`: who is not closing their sockets. A live table of
//! sockets sitting in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for longer than
//! `--min-age`, with their owners, including those stuck before tcptrace
//! started (found by walking the kernel's socket table).
use std::{collections::BTreeMap, io::Write, time::Duration};

use anyhow::Result;
use clap::Args;
use serde_json::json;
use tcptrace_common::tcp_state::{CLOSE_WAIT, FIN_WAIT2, LAST_ACK};

use crate::{
    cli::{parse_seconds, ProbeArgs},
    clock::Clock,
    live::{self, age_text, Screen, Tracked},
    printer::human::endpoint_text as endpoint,
    probe::Probe,
    session::{self, SessionOptions, View},
    socket_table::{Owner, Tuple},
    state,
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

/// The states shown, in display order.
pub const STUCK_STATES: [u8; 3] = [CLOSE_WAIT, FIN_WAIT2, LAST_ACK];

/// One stuck socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub tuple: Tuple,
    pub state: u8,
    pub owner: Option<Owner>,
    /// Held by a timewait socket: the application closed it.
    pub orphaned: bool,
    pub age_ns: u64,
    /// The entry time is unknown: `age_ns` is a lower bound.
    pub age_at_least: bool,
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
pub fn per_process(rows: &[Row]) -> BTreeMap<Option<Owner>, [u64; 4]> {
    let mut counts: BTreeMap<Option<Owner>, [u64; 4]> = BTreeMap::new();
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
            write_json(out, clock, now, self.min_age, &rows);
        } else {
            self.screen.begin(out);
            write_human(out, clock, now, self.min_age, self.limit, &rows);
        }
    }
}

fn time_text(clock: &Clock, now: u64) -> String {
    let mut time = Vec::new();
    clock.write_rfc3339(&mut time, now);
    String::from_utf8_lossy(&time).into_owned()
}

fn write_json(out: &mut Vec<u8>, clock: &Clock, now: u64, min_age: Duration, rows: &[Row]) {
    let count = |s: u8| rows.iter().filter(|r| r.state == s).count();
    let mut records = vec![json!({
        "type": "stuck_snapshot",
        "time": time_text(clock, now),
        "min_age_ns": min_age.as_nanos() as u64,
        "sockets": rows.len(),
        "close_wait": count(CLOSE_WAIT),
        "fin_wait2": count(FIN_WAIT2),
        "last_ack": count(LAST_ACK),
    })];
    for row in rows {
        records.push(json!({
            "type": "stuck",
            "state": state::name(row.state),
            "pid": row.owner.map_or(0, |o| o.pid),
            "comm": row.owner.map_or(String::new(), |o| o.comm_str()),
            "owner_known": row.owner.is_some(),
            "orphaned": row.orphaned,
            "family": if row.tuple.local.is_ipv6() { "ipv6" } else { "ipv4" },
            "laddr": row.tuple.local.to_string(),
            "lport": row.tuple.lport,
            "raddr": row.tuple.remote.to_string(),
            "rport": row.tuple.rport,
            "netns": row.tuple.netns,
            "age_ns": row.age_ns,
            "age_at_least": row.age_at_least,
        }));
    }
    for (owner, c) in per_process(rows) {
        records.push(json!({
            "type": "stuck_process",
            "pid": owner.map_or(0, |o| o.pid),
            "comm": owner.map_or(String::new(), |o| o.comm_str()),
            "owner_known": owner.is_some(),
            "close_wait": c[0],
            "fin_wait2": c[1],
            "last_ack": c[2],
            "fin_wait2_orphaned": c[3],
        }));
    }
    for record in records {
        let _ = serde_json::to_writer(&mut *out, &record);
        out.push(b'\n');
    }
}

fn write_human(
    out: &mut Vec<u8>,
    clock: &Clock,
    now: u64,
    min_age: Duration,
    limit: usize,
    rows: &[Row],
) {
    let mut local_time = Vec::new();
    clock.write_local_time(&mut local_time, now);
    let _ = writeln!(
        out,
        "{}  sockets in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for {} or more",
        String::from_utf8_lossy(&local_time),
        age_text(min_age.as_nanos() as u64)
    );
    let width = rows
        .iter()
        .map(|r| endpoint(r.tuple.local, r.tuple.lport).len().max(21))
        .max()
        .unwrap_or(21);
    for s in STUCK_STATES {
        let of_state: Vec<&Row> = rows.iter().filter(|r| r.state == s).collect();
        let what = match s {
            CLOSE_WAIT => "the peer closed, the owner has not",
            FIN_WAIT2 => "closed here, waiting for the peer's FIN",
            _ => "closed, waiting for the peer's last ACK",
        };
        let _ = writeln!(
            out,
            "\n{} ({what}): {}",
            state::name(s),
            match of_state.len() {
                0 => "none".to_string(),
                1 => "1 socket".to_string(),
                n => format!("{n} sockets"),
            }
        );
        if of_state.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:<width$} {:<width$} {:>10}",
            "PID", "COMM", "LOCAL", "REMOTE", "AGE"
        );
        for row in of_state.iter().take(limit) {
            let (pid, comm) = match row.owner {
                Some(o) => (o.pid.to_string(), o.comm_str()),
                None => ("-".into(), "-".into()),
            };
            let age = if row.age_at_least {
                format!(">={}", age_text(row.age_ns))
            } else {
                age_text(row.age_ns)
            };
            let _ = writeln!(
                out,
                "{pid:>8} {comm:<16} {:<width$} {:<width$} {age:>10}{}",
                endpoint(row.tuple.local, row.tuple.lport),
                endpoint(row.tuple.remote, row.tuple.rport),
                if row.orphaned { "  orphaned" } else { "" },
            );
        }
        if of_state.len() > limit {
            let _ = writeln!(out, "... and {} more", of_state.len() - limit);
        }
    }
    let processes = per_process(rows);
    if !processes.is_empty() {
        let _ = writeln!(
            out,
            "\n{:>8} {:<16} {:>10} {:>9} {:>8} {:>18}",
            "PID", "COMM", "CLOSE_WAIT", "FIN_WAIT2", "LAST_ACK", "FIN_WAIT2 ORPHANED"
        );
        let mut by_count: Vec<_> = processes.into_iter().collect();
        by_count.sort_by_key(|(_, c)| std::cmp::Reverse(c.iter().sum::<u64>()));
        for (owner, c) in by_count {
            let (pid, comm) = match owner {
                Some(o) => (o.pid.to_string(), o.comm_str()),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{pid:>8} {comm:<16} {:>10} {:>9} {:>8} {:>18}",
                c[0], c[1], c[2], c[3]
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
    use crate::socket_table::{Scope, Walked};
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
        write_json(
            &mut out,
            &Clock::new(),
            1_100,
            Duration::from_secs(5),
            &rows,
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
