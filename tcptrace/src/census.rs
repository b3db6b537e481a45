//! `tcptrace census`: how many sockets are in each state, right now and
//! then every second, as `netstat -n | awk '/^tcp/ {print $6}' | sort |
//! uniq -c` meant to show, with TIME_WAIT's two sub-states told apart and
//! the top peers, ports or programs behind each state.
use std::{collections::HashMap, time::Duration};

use anyhow::Result;
use clap::ValueEnum;
use tcptrace_common::tcp_state::*;

pub use crate::snapshot::{Counts, Key, TopKeys, STATES};
use crate::{
    cgroups::{CgroupFilter, OwnerCgroups},
    clock::Clock,
    live::{self, Screen, Tracked},
    options::{Output, Refresh},
    printer,
    probe::Probe,
    probe::ProbeOptions,
    session::{self, SessionOptions, View},
    sockets::{Entry, Scope, SocketTable, Tuple},
    summary::RunContext,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    Rport,
    Raddr,
    Lport,
    Comm,
    /// The owner's cgroup path.
    Cgroup,
    /// The owner's container (or service, or cgroup path).
    Container,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::Rport => "rport",
            By::Raddr => "raddr",
            By::Lport => "lport",
            By::Comm => "comm",
            By::Cgroup => "cgroup",
            By::Container => "container",
        }
    }

    /// Needs each socket's owner (found in procfs when no event gave it).
    fn needs_owner(self) -> bool {
        matches!(self, By::Comm | By::Cgroup | By::Container)
    }
}

impl Counts {
    pub fn of(table: &SocketTable) -> Counts {
        let mut c = Counts::default();
        table.for_each(|_, e| c.add(e));
        c
    }

    /// The counts of sockets whose owner passes `--cgroup`.
    pub fn of_owners(table: &SocketTable, owners: &mut OwnerCgroups) -> Counts {
        let mut c = Counts::default();
        table.for_each(|_, e| {
            if owners.filters() {
                let cgroup = owners.of(e.owner.as_ref());
                if !owners.passes(cgroup.as_ref()) {
                    return;
                }
            }
            c.add(e)
        });
        c
    }

    fn add(&mut self, e: &Entry) {
        if let Some(n) = self.per_state.get_mut(e.state as usize) {
            *n += 1;
        }
        match (e.timewait, e.state) {
            (true, FIN_WAIT2) => self.timewait_fin_wait2 += 1,
            (true, _) => self.timewait_time_wait += 1,
            (false, FIN_WAIT2) => self.fin_wait2_full += 1,
            _ => {}
        }
    }
}

impl Key {
    /// `by`'s key of a socket, and whether its owner passes `--cgroup`.
    fn of(by: By, tuple: &Tuple, e: &Entry, owners: &mut OwnerCgroups) -> (Key, bool) {
        let cgroup = (by.needs_owner() || owners.filters())
            .then(|| owners.of(e.owner.as_ref()))
            .flatten();
        let unnamed = || match e.owner {
            Some(o) if o.cgroup != 0 => format!("cgroup:{}", o.cgroup),
            _ => "-".into(),
        };
        let key = match by {
            By::Rport => Key::Port(tuple.rport),
            By::Lport => Key::Port(tuple.lport),
            By::Raddr => Key::Addr(tuple.remote),
            By::Comm => Key::Comm(e.owner.map_or("-".into(), |o| o.comm_str())),
            By::Cgroup => Key::Comm(cgroup.as_ref().map_or_else(unnamed, |c| c.path.to_string())),
            By::Container => Key::Comm(
                cgroup
                    .as_ref()
                    .map_or_else(unnamed, |c| c.container.to_string()),
            ),
        };
        (key, owners.passes(cgroup.as_ref()))
    }
}

/// The `n` keys with the most sockets in each of `states`, most first.
#[cfg(test)]
pub fn top(table: &SocketTable, by: By, states: &[u8], n: usize) -> TopKeys {
    top_of_owners(table, by, states, n, &mut OwnerCgroups::new(None))
}

/// As `top`, for sockets whose owner passes `--cgroup`.
pub fn top_of_owners(
    table: &SocketTable,
    by: By,
    states: &[u8],
    n: usize,
    owners: &mut OwnerCgroups,
) -> TopKeys {
    let mut counts: HashMap<(u8, Key), u64> = HashMap::new();
    table.for_each(|tuple, e| {
        if states.contains(&e.state) {
            let (key, passes) = Key::of(by, tuple, e, owners);
            if passes {
                *counts.entry((e.state, key)).or_default() += 1;
            }
        }
    });
    states
        .iter()
        .map(|&s| {
            let mut keys: Vec<(Key, u64)> = counts
                .iter()
                .filter(|((state, _), _)| *state == s)
                .map(|((_, k), &c)| (k.clone(), c))
                .collect();
            keys.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            keys.truncate(n);
            (s, keys)
        })
        .collect()
}

struct CensusView {
    tracked: Tracked,
    json: bool,
    once: bool,
    done: bool,
    interval: Duration,
    by: Option<By>,
    states: Vec<u8>,
    top: usize,
    screen: Screen,
    owners: OwnerCgroups,
}

impl CensusView {
    fn print(&mut self, clock: &Clock, out: &mut Vec<u8>) {
        let now = Clock::now_ktime_ns();
        let table = &self.tracked.table;
        let counts = Counts::of_owners(table, &mut self.owners);
        let keys = self.by.map(|by| {
            let top = top_of_owners(table, by, &self.states, self.top, &mut self.owners);
            (by, top)
        });
        let netns = match table.scope() {
            Scope::All => None,
            Scope::Netns(n) => Some(n),
        };
        let top_keys = keys.as_ref().map(|(by, k)| (by.name(), k));
        if self.json {
            printer::json::write_census(out, clock, now, netns, &counts, top_keys);
            return;
        }
        self.screen.begin(out);
        printer::human::write_census(out, clock, now, netns, &counts, top_keys);
    }
}

impl View for CensusView {
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
        if self.by.is_some_and(By::needs_owner) || self.owners.filters() {
            self.tracked.find_missing_owners(&self.states);
        }
        self.print(clock, out);
        self.done = self.once;
        Ok(())
    }

    fn done(&self) -> bool {
        self.done
    }

    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        self.screen.end(out);
        if !self.once {
            live::finish(self.json, &self.tracked, ctx, clock, out);
        }
        Ok(())
    }
}

/// `tcptrace census`.
pub struct CensusOptions {
    pub probe: ProbeOptions,
    pub output: Output,
    pub refresh: Refresh,
    pub scope: Scope,
    pub by: Option<By>,
    /// The states --by looks at.
    pub states: Vec<u8>,
    /// Keys per state (at least 1).
    pub top: usize,
    /// `--cgroup`: only owners in this subtree.
    pub cgroup: Option<CgroupFilter>,
}

pub async fn run(options: CensusOptions) -> Result<()> {
    let CensusOptions {
        probe,
        output,
        refresh,
        scope,
        by,
        states,
        top,
        cgroup,
    } = options;
    let (probe, tracked) = live::start(&probe, scope).await?;
    let mut view = CensusView {
        tracked,
        json: output.json,
        once: refresh.once,
        done: false,
        interval: refresh.interval,
        by,
        states,
        top,
        screen: Screen::new(output.json),
        owners: OwnerCgroups::new(cgroup),
    };
    let banner = (!refresh.once)
        .then(|| "tcptrace: tracing socket counts per state (Ctrl-C to stop)".to_string());
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
    use crate::sockets::{Owner, Walked};

    fn walked(lport: u16, rport: u16, state: u8, timewait: bool) -> Walked {
        Walked {
            tuple: Tuple {
                netns: 1,
                local: "10.0.0.1".parse().unwrap(),
                lport,
                remote: "10.0.0.2".parse().unwrap(),
                rport,
            },
            state,
            timewait,
            inode: u64::from(lport),
        }
    }

    #[test]
    fn counts_and_top_keys() {
        let mut table = SocketTable::new(Scope::Netns(1), 100);
        let sockets = [
            walked(80, 0, LISTEN, false),
            walked(80, 0, LISTEN, false),
            walked(40000, 443, TIME_WAIT, true),
            walked(40001, 443, TIME_WAIT, true),
            walked(40002, 8080, TIME_WAIT, true),
            walked(40003, 8080, FIN_WAIT2, true),
            walked(40004, 8080, FIN_WAIT2, false),
            walked(80, 5555, ESTABLISHED, false),
        ];
        let owner = Owner {
            pid: 1,
            comm: *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
            cgroup: 0,
        };
        table.seed(&sockets, &HashMap::from([(40004, owner)]), 0, 1);
        let c = Counts::of(&table);
        assert_eq!(c.per_state[LISTEN as usize], 2);
        assert_eq!(c.per_state[TIME_WAIT as usize], 3);
        assert_eq!(c.per_state[FIN_WAIT2 as usize], 2);
        assert_eq!((c.fin_wait2_full, c.timewait_fin_wait2), (1, 1));
        assert_eq!((c.timewait_sockets(), c.total()), (4, 8));

        let keys = top(&table, By::Rport, &[TIME_WAIT], 1);
        assert_eq!(keys, vec![(TIME_WAIT, vec![(Key::Port(443), 2)])]);
        let keys = top(&table, By::Comm, &[FIN_WAIT2], 5);
        assert_eq!(
            keys[0].1,
            vec![(Key::Comm("-".into()), 1), (Key::Comm("nginx".into()), 1)]
        );
        let mut out = Vec::new();
        printer::json::write_census(
            &mut out,
            &Clock::new(),
            0,
            Some(1),
            &c,
            Some((By::Rport.name(), &top(&table, By::Rport, &[TIME_WAIT], 5))),
        );
        let record: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(record["states"]["TIME_WAIT"], 3);
        assert_eq!(record["timewait_sockets"]["FIN_WAIT2"], 1);
        assert_eq!(record["top"]["TIME_WAIT"][0]["key"], 443);
        assert_eq!(record["top"]["TIME_WAIT"][0]["count"], 2);
    }
}
