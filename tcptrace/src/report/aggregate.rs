//! The single pass over a capture's records: per-second bins per
//! transition kind, the TIME_WAIT and CLOSE_WAIT populations, the dwell
//! histograms (`hist::RecordHistograms`, as `hist -r` rebuilds them), who
//! is behind TIME_WAIT and CLOSE_WAIT entries, and the losses over time.
//! Nothing is allocated per record: bins grow by doubling, the maps are
//! keyed by small Copy values.
use std::{collections::HashMap, net::IpAddr};

use serde_json::Value;
use tcptrace_common::{tcp_state::*, COMM_LEN};

use crate::{
    capture::Metadata,
    decode::{Record, Transition},
    hist::{self, RecordHistograms},
    snapshot::Histogram,
};

const SECOND: u64 = 1_000_000_000;
/// More bins than this (about 48 days) are not kept: a record that far
/// from the start is counted as out of range.
const MAX_SECONDS: usize = 1 << 22;
/// States are below 16: a transition kind is `old * 16 + new`.
const KINDS: usize = 256;
const NO_KIND: u8 = u8::MAX;

/// The loss counters plotted (as in the `Losses` blocks).
pub const LOSS_COUNTERS: [&str; 4] = [
    "ring_reservation_failures",
    "recursion_misses",
    "records_unwritten",
    "timewait_entries_lost",
];

/// A process: owner pid (None: never seen) and command.
pub type Process = (Option<u32>, [u8; COMM_LEN]);

/// Who is behind the entries into one state.
#[derive(Default)]
pub struct Owners {
    pub processes: HashMap<Process, u64>,
    pub lports: HashMap<u16, u64>,
    pub peers: HashMap<(IpAddr, u16), u64>,
}

impl Owners {
    fn add(&mut self, t: &Transition) {
        let mut comm = [0u8; COMM_LEN];
        let c = t.comm();
        comm[..c.len()].copy_from_slice(c);
        *self.processes.entry((t.pid, comm)).or_default() += 1;
        *self.lports.entry(t.lport).or_default() += 1;
        *self.peers.entry((t.remote, t.rport)).or_default() += 1;
    }

    /// The `top` largest of `map`, largest first (ties by key), and the
    /// sum of the rest.
    pub fn top<K: Copy + Ord>(map: &HashMap<K, u64>, top: usize) -> (Vec<(K, u64)>, u64) {
        let mut all: Vec<(K, u64)> = map.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let rest = all.iter().skip(top).map(|(_, n)| n).sum();
        all.truncate(top);
        (all, rest)
    }
}

/// A state's population: entries and exits per second.
#[derive(Default)]
pub struct Population {
    pub entries: u64,
    pub exits: u64,
    /// Entries minus exits, per second.
    pub delta: Vec<i64>,
    /// Entries minus exits before the window (`--since`).
    pub before: i64,
}

impl Population {
    /// The population at the end of each second, from `baseline`.
    pub fn over_time(&self, baseline: i64) -> Vec<i64> {
        let mut now = baseline + self.before;
        self.delta
            .iter()
            .map(|d| {
                now += d;
                now
            })
            .collect()
    }
}

pub struct Aggregate {
    /// Where bin 0 starts (CLOSE_MONOTONIC), and where the window ends.
    origin: u64,
    until: u64,
    seconds: usize,
    /// Index into `per_kind` of each `old * 16 + new`, NO_KIND if unseen.
    kind_index: [u8; KINDS],
    /// Per kind seen: (old, new) and its counts per second.
    pub kinds: Vec<(u8, u8)>,
    pub per_kind: Vec<Vec<u32>>,
    pub transitions: u64,
    pub connections: u64,
    /// Records outside the window (`--since`/`--until`, or too far).
    pub outside: u64,
    pub time_wait: Population,
    pub close_wait: Population,
    pub time_wait_owners: Owners,
    pub close_wait_owners: Owners,
    histograms: RecordHistograms,
    /// Per loss counter, its increase per second.
    pub losses: [Vec<u64>; 4],
    pub loss_totals: [u64; 4],
    last_losses: [u64; 4],
    last_ktime: u64,
    /// `sockets_at_start` counts, when the capture had no filters.
    pub baseline: Option<(i64, i64)>,
}

impl Aggregate {
    pub fn new(origin: u64, until: u64, metadata: &Metadata) -> Self {
        Aggregate {
            origin,
            until,
            seconds: 0,
            kind_index: [NO_KIND; KINDS],
            kinds: Vec::new(),
            per_kind: Vec::new(),
            transitions: 0,
            connections: 0,
            outside: 0,
            time_wait: Population::default(),
            close_wait: Population::default(),
            time_wait_owners: Owners::default(),
            close_wait_owners: Owners::default(),
            histograms: RecordHistograms::new(None),
            losses: Default::default(),
            loss_totals: [0; 4],
            last_losses: [0; 4],
            last_ktime: 0,
            baseline: baseline(metadata),
        }
    }

    /// The bin of `ktime`, growing the bins if needed; None outside the
    /// window (records before it still count in the populations).
    #[inline]
    fn bin(&mut self, ktime: u64) -> Option<usize> {
        if ktime > self.until {
            return None;
        }
        let sec = (ktime.saturating_sub(self.origin) / SECOND) as usize;
        if sec >= MAX_SECONDS {
            return None;
        }
        if sec >= self.seconds {
            self.grow(sec + 1);
        }
        Some(sec)
    }

    #[cold]
    fn grow(&mut self, at_least: usize) {
        let capacity = at_least.max(self.seconds * 2).clamp(64, MAX_SECONDS);
        for bins in &mut self.per_kind {
            bins.resize(capacity, 0);
        }
        self.time_wait.delta.resize(capacity, 0);
        self.close_wait.delta.resize(capacity, 0);
        for bins in &mut self.losses {
            bins.resize(capacity, 0);
        }
        self.seconds = capacity;
    }

    pub fn add(&mut self, record: &Record) {
        let t = match record {
            Record::Transition(t) => t,
            Record::Connection(c) => {
                let ktime = c.event.ktime_ns;
                if ktime < self.origin || self.bin(ktime).is_none() {
                    self.outside += 1;
                    return;
                }
                self.last_ktime = self.last_ktime.max(ktime);
                self.connections += 1;
                self.histograms.add(record);
                return;
            }
        };
        let ktime = t.ktime_ns;
        let in_window = ktime >= self.origin;
        let Some(sec) = self.bin(ktime) else {
            self.outside += 1;
            return;
        };
        for (state, population) in [
            (TIME_WAIT, &mut self.time_wait),
            (CLOSE_WAIT, &mut self.close_wait),
        ] {
            let d = i64::from(t.new == state) - i64::from(t.old == state);
            if d != 0 {
                if !in_window {
                    population.before += d;
                    continue;
                }
                population.delta[sec] += d;
                if d > 0 {
                    population.entries += 1;
                } else {
                    population.exits += 1;
                }
            }
        }
        if !in_window {
            self.outside += 1;
            return;
        }
        self.last_ktime = self.last_ktime.max(ktime);
        self.transitions += 1;
        let code = (usize::from(t.old & 15) << 4) | usize::from(t.new & 15);
        let mut kind = self.kind_index[code];
        if kind == NO_KIND {
            kind = self.kinds.len() as u8;
            self.kind_index[code] = kind;
            self.kinds.push((t.old, t.new));
            self.per_kind.push(vec![0; self.seconds]);
        }
        self.per_kind[kind as usize][sec] += 1;
        match t.new {
            TIME_WAIT => self.time_wait_owners.add(t),
            CLOSE_WAIT => self.close_wait_owners.add(t),
            _ => {}
        }
        self.histograms.add(record);
    }

    /// A `Losses` block: cumulative counters, written once a second.
    pub fn add_losses(&mut self, ktime: u64, counters: &Value) {
        let now = LOSS_COUNTERS.map(|name| counters[name].as_u64().unwrap_or(0));
        let increase: [u64; 4] =
            std::array::from_fn(|i| now[i].saturating_sub(self.last_losses[i]));
        self.last_losses = now;
        if ktime < self.origin {
            return;
        }
        let Some(sec) = self.bin(ktime) else {
            return;
        };
        for (i, n) in increase.into_iter().enumerate() {
            self.losses[i][sec] += n;
            self.loss_totals[i] += n;
        }
    }

    /// The latest record seen in the window.
    pub fn last_ktime(&self) -> u64 {
        self.last_ktime
    }

    /// Sets the bins to cover the window up to `to_ktime` (or the last
    /// record, if later).
    pub fn finish(&mut self, to_ktime: u64) {
        let end = self.last_ktime.max(to_ktime).saturating_sub(self.origin);
        let used = ((end / SECOND) as usize + 1).min(MAX_SECONDS);
        if self.seconds < used {
            self.grow(used);
        }
        for bins in &mut self.per_kind {
            bins.truncate(used);
        }
        self.time_wait.delta.truncate(used);
        self.close_wait.delta.truncate(used);
        for bins in &mut self.losses {
            bins.truncate(used);
        }
        self.seconds = used;
    }

    /// Seconds in the bins.
    pub fn seconds(&self) -> usize {
        self.seconds
    }

    /// Transitions per kind, largest first (ties by state order).
    pub fn kind_totals(&self) -> Vec<((u8, u8), u64)> {
        let mut totals: Vec<((u8, u8), u64)> = self
            .kinds
            .iter()
            .zip(&self.per_kind)
            .map(|(&k, bins)| (k, bins.iter().map(|&n| u64::from(n)).sum()))
            .collect();
        totals.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        totals
    }

    /// Counts per second of one kind.
    pub fn bins_of(&self, kind: (u8, u8)) -> Option<&[u32]> {
        let i = self.kinds.iter().position(|&k| k == kind)?;
        Some(&self.per_kind[i])
    }

    /// Per metric (in `snapshot::METRICS` order), its histogram.
    pub fn dwell(&self) -> Vec<(u8, Histogram)> {
        hist::arrange(
            &self.histograms.raw(),
            None,
            1,
            &mut crate::cgroups::Names::empty(),
        )
        .into_iter()
        .map(|(m, _, h)| (m, h))
        .collect()
    }
}

/// TIME_WAIT and CLOSE_WAIT at the start, when the capture saw every
/// socket (no filter: `sockets_at_start` counts every namespace).
fn baseline(metadata: &Metadata) -> Option<(i64, i64)> {
    let unfiltered = match &metadata.filters {
        Value::Object(filters) => filters
            .values()
            .all(|v| v.is_null() || *v == Value::Bool(false)),
        Value::Null => false,
        _ => false,
    };
    let counts = metadata.sockets_at_start.as_object()?;
    if !unfiltered {
        return None;
    }
    let n = |name: &str| counts.get(name).and_then(Value::as_i64).unwrap_or(0);
    Some((n("TIME_WAIT"), n("CLOSE_WAIT")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{bytes_of, raw_event};
    use serde_json::json;
    use tcptrace_common::{AF_INET, EVENT_IN_OLD_KNOWN, EVENT_OWNER_KNOWN, EVENT_TIMEWAIT_SOCKET};

    const START: u64 = 1_000 * SECOND;

    fn metadata(filters: Value) -> Metadata {
        Metadata {
            started_ktime_ns: START,
            filters,
            sockets_at_start: json!({"TIME_WAIT": 5, "CLOSE_WAIT": 2, "ESTABLISHED": 9}),
            ..Metadata::default()
        }
    }

    fn unfiltered() -> Value {
        json!({"ipv4_only": false, "ipv6_only": false, "lport": null, "rport": null,
               "port": null, "pid": null, "netns": null})
    }

    fn transition(at_ns: u64, old: u8, new: u8, flags: u8) -> Record {
        let mut ev = raw_event(AF_INET, old, new, flags | EVENT_OWNER_KNOWN);
        ev.ktime_ns = at_ns;
        Record::decode(bytes_of(&ev)).unwrap()
    }

    #[test]
    fn transitions_land_in_their_second_by_kind() {
        let mut a = Aggregate::new(START, u64::MAX, &metadata(unfiltered()));
        let tw = EVENT_TIMEWAIT_SOCKET;
        a.add(&transition(START + 100, FIN_WAIT2, TIME_WAIT, tw));
        a.add(&transition(START + SECOND - 1, FIN_WAIT2, TIME_WAIT, tw));
        a.add(&transition(START + SECOND, FIN_WAIT2, TIME_WAIT, tw));
        a.add(&transition(
            START + 3 * SECOND + 5,
            ESTABLISHED,
            CLOSE_WAIT,
            0,
        ));
        a.finish(START + 3 * SECOND + 10);
        assert_eq!(a.seconds(), 4);
        assert_eq!(a.transitions, 4);
        assert_eq!(a.bins_of((FIN_WAIT2, TIME_WAIT)).unwrap(), &[2, 1, 0, 0]);
        assert_eq!(a.bins_of((ESTABLISHED, CLOSE_WAIT)).unwrap(), &[0, 0, 0, 1]);
        assert_eq!(
            a.kind_totals(),
            vec![((FIN_WAIT2, TIME_WAIT), 3), ((ESTABLISHED, CLOSE_WAIT), 1)]
        );
        // Who entered TIME_WAIT: the record's owner, port and peer.
        let (top, rest) = Owners::top(&a.time_wait_owners.processes, 10);
        assert_eq!(top.len(), 1);
        assert_eq!((top[0].0 .0, top[0].1, rest), (Some(4242), 3, 0));
        assert_eq!(&top[0].0 .1[..4], b"curl");
        let (peers, _) = Owners::top(&a.time_wait_owners.peers, 10);
        assert_eq!(peers, vec![(("10.1.2.3".parse().unwrap(), 80), 3)]);
        let (cw, _) = Owners::top(&a.close_wait_owners.lports, 10);
        assert_eq!(cw, vec![(45678, 1)]);
    }

    #[test]
    fn populations_start_from_the_census_when_unfiltered() {
        let mut a = Aggregate::new(START, u64::MAX, &metadata(unfiltered()));
        assert_eq!(a.baseline, Some((5, 2)));
        let tw = EVENT_TIMEWAIT_SOCKET;
        // Second 0: two entries; second 1: one exit (a socket from before
        // the start); second 2: CLOSE_WAIT in and out, and one more out.
        a.add(&transition(START + 1, FIN_WAIT2, TIME_WAIT, tw));
        a.add(&transition(START + 2, CLOSING, TIME_WAIT, tw));
        a.add(&transition(START + SECOND + 1, TIME_WAIT, CLOSE, tw));
        a.add(&transition(START + 2 * SECOND, ESTABLISHED, CLOSE_WAIT, 0));
        a.add(&transition(START + 2 * SECOND + 1, CLOSE_WAIT, LAST_ACK, 0));
        a.add(&transition(START + 2 * SECOND + 2, CLOSE_WAIT, LAST_ACK, 0));
        a.finish(START + 2 * SECOND + 2);
        assert_eq!((a.time_wait.entries, a.time_wait.exits), (2, 1));
        assert_eq!((a.close_wait.entries, a.close_wait.exits), (1, 2));
        assert_eq!(a.time_wait.over_time(5), vec![7, 6, 6]);
        assert_eq!(a.close_wait.over_time(2), vec![2, 2, 1]);
        // With a filter the census is not the capture's: no baseline.
        let filtered = Aggregate::new(START, u64::MAX, &metadata(json!({"port": "80"})));
        assert_eq!(filtered.baseline, None);
    }

    #[test]
    fn the_window_keeps_what_came_before_in_the_populations() {
        let origin = START + 10 * SECOND;
        let mut a = Aggregate::new(origin, origin + 5 * SECOND, &metadata(unfiltered()));
        let tw = EVENT_TIMEWAIT_SOCKET;
        a.add(&transition(START, FIN_WAIT2, TIME_WAIT, tw));
        a.add(&transition(origin + 1, FIN_WAIT2, TIME_WAIT, tw));
        a.add(&transition(origin + 9 * SECOND, FIN_WAIT2, TIME_WAIT, tw));
        a.finish(origin + 5 * SECOND);
        assert_eq!(a.transitions, 1);
        assert_eq!(a.outside, 2);
        assert_eq!(a.time_wait.entries, 1);
        assert_eq!(a.time_wait.over_time(5)[0], 7);
    }

    #[test]
    fn losses_are_increases_per_second() {
        let mut a = Aggregate::new(START, u64::MAX, &metadata(unfiltered()));
        let block = |ring: u64, unwritten: u64| json!({"ring_reservation_failures": ring, "records_unwritten": unwritten});
        a.add_losses(START + SECOND / 2, &block(0, 0));
        a.add_losses(START + SECOND + 3, &block(4, 0));
        a.add_losses(START + 2 * SECOND + 3, &block(10, 7));
        a.finish(START + 2 * SECOND + 3);
        assert_eq!(a.losses[0], vec![0, 4, 6]);
        assert_eq!(a.losses[2], vec![0, 0, 7]);
        assert_eq!(a.loss_totals, [10, 0, 7, 0]);
    }

    #[test]
    fn dwell_times_come_from_the_records() {
        let mut a = Aggregate::new(START, u64::MAX, &metadata(unfiltered()));
        // raw_event's in_old_ns is 1.5 ms.
        a.add(&transition(
            START + 1,
            CLOSE_WAIT,
            LAST_ACK,
            EVENT_IN_OLD_KNOWN,
        ));
        a.add(&transition(
            START + 2,
            CLOSE_WAIT,
            LAST_ACK,
            EVENT_IN_OLD_KNOWN,
        ));
        a.finish(START + 2);
        let dwell = a.dwell();
        let (_, h) = dwell
            .iter()
            .find(|(m, _)| *m == tcptrace_common::metric::CLOSE_WAIT)
            .unwrap();
        assert_eq!((h.count, h.max_ns), (2, 1_500_000));
        assert!(h.quantile(0.5) <= 1_500_000);
    }
}
