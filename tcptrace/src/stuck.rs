//! `tcptrace stuck`: who is not closing their sockets. A live table of
//! sockets sitting in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for longer than
//! `--min-age`, with their owners, including those stuck before tcptrace
//! started (found by walking the kernel's socket table).
use std::time::Duration;

use anyhow::Result;
use tcptrace_common::tcp_state::{CLOSE_WAIT, FIN_WAIT2, LAST_ACK};

pub use crate::snapshot::{GroupCounts, ProcessCounts, StuckCounts, StuckRow as Row, STUCK_STATES};
use crate::{
    cgroups::{CgroupFilter, OwnerCgroups},
    clock::Clock,
    live::{self, Screen, Tracked},
    options::{Output, Refresh},
    printer,
    probe::Probe,
    probe::ProbeOptions,
    session::{self, SessionOptions, View},
    sockets::Scope,
    summary::RunContext,
};

/// The stuck sockets of a table at `now_ns`, by state then oldest first,
/// those of `--cgroup`'s subtree only.
pub fn rows(
    tracked: &Tracked,
    now_ns: u64,
    min_age: Duration,
    owners: &mut OwnerCgroups,
) -> Vec<Row> {
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
            if !at_least && age_ns < min_age_ns {
                return None;
            }
            let cgroup = owners.of(e.owner.as_ref());
            if !owners.passes(cgroup.as_ref()) {
                return None;
            }
            Some(Row {
                tuple: *tuple,
                state: e.state,
                owner: e.owner,
                orphaned: e.timewait,
                age_ns,
                age_at_least: at_least,
                cgroup,
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

/// A row's column in the counts: CLOSE_WAIT, FIN_WAIT2 (held open),
/// LAST_ACK, orphaned FIN_WAIT2.
fn column(row: &Row) -> usize {
    match (row.state, row.orphaned) {
        (CLOSE_WAIT, _) => 0,
        (FIN_WAIT2, false) => 1,
        (LAST_ACK, _) => 2,
        _ => 3,
    }
}

/// Counts per owner.
pub fn per_process(rows: &[Row]) -> ProcessCounts {
    let mut counts = ProcessCounts::new();
    for row in rows {
        counts.entry(row.owner).or_default()[column(row)] += 1;
    }
    counts
}

/// What `stuck --by` groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// The owner's cgroup path.
    Cgroup,
    /// The owner's container (or service, or cgroup path).
    Container,
}

/// Counts per owner's cgroup or container (`-` for an unknown owner).
pub fn per_group(rows: &[Row], by: By) -> GroupCounts {
    let mut counts = GroupCounts {
        by: match by {
            By::Cgroup => "cgroup",
            By::Container => "container",
        },
        counts: Default::default(),
    };
    for row in rows {
        let key = match (&row.cgroup, by) {
            (Some(c), By::Cgroup) => c.path.to_string(),
            (Some(c), By::Container) => c.container.to_string(),
            (None, _) => "-".to_string(),
        };
        counts.counts.entry(key).or_default()[column(row)] += 1;
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
    owners: OwnerCgroups,
    by: Option<By>,
}

impl StuckView {
    fn print(&mut self, clock: &Clock, out: &mut Vec<u8>) {
        let now = Clock::now_ktime_ns();
        let rows = rows(&self.tracked, now, self.min_age, &mut self.owners);
        let counts = StuckCounts {
            processes: per_process(&rows),
            groups: self.by.map(|by| per_group(&rows, by)),
        };
        if self.json {
            printer::json::write_stuck(out, clock, now, self.min_age, &rows, &counts);
        } else {
            self.screen.begin(out);
            printer::human::write_stuck(out, clock, now, self.min_age, self.limit, &rows, &counts);
        }
    }
}

impl View for StuckView {
    fn learn_cgroups(&mut self, table: &[(u64, String)]) {
        self.owners.learn(table);
    }

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

/// `tcptrace stuck`.
pub struct StuckOptions {
    pub probe: ProbeOptions,
    pub output: Output,
    pub refresh: Refresh,
    pub scope: Scope,
    pub min_age: Duration,
    /// Rows per state in the human table (at least 1).
    pub limit: usize,
    /// `--cgroup`: only owners in this subtree.
    pub cgroup: Option<CgroupFilter>,
    /// `--by`: counts per cgroup or container too.
    pub by: Option<By>,
}

pub async fn run(options: StuckOptions) -> Result<()> {
    let StuckOptions {
        probe,
        output,
        refresh,
        scope,
        min_age,
        limit,
        cgroup,
        by,
    } = options;
    let (probe, tracked) = live::start(&probe, scope).await?;
    let mut view = StuckView {
        tracked,
        json: output.json,
        once: refresh.once,
        done: false,
        interval: refresh.interval,
        min_age,
        limit,
        screen: Screen::new(output.json),
        owners: OwnerCgroups::new(cgroup),
        by,
    };
    let banner = (!refresh.once).then(|| {
        "tcptrace: tracing stuck sockets (CLOSE_WAIT, FIN_WAIT2, LAST_ACK; Ctrl-C to stop)"
            .to_string()
    });
    session::run(
        probe,
        &mut view,
        SessionOptions::new(output.json, output.duration, banner),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::{Owner, Scope, Tuple, Walked};
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
        let mut tracked =
            Tracked::new(crate::sockets::SocketTable::new(Scope::Netns(1), 100), true);
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
            cgroup: 0,
        };
        tracked
            .table
            .seed(&walked, &HashMap::from([(5, owner)]), 100, 200);
        let rows = rows(
            &tracked,
            1_100,
            Duration::from_secs(5),
            &mut OwnerCgroups::new(None),
        );
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
            &StuckCounts {
                processes: counts.clone(),
                groups: None,
            },
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
