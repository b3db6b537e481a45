//! `tcptrace serve`: a Prometheus endpoint. The event loop keeps the socket
//! table (as `census` and `stuck` do) and the transition counts, one
//! array add per event; every `--interval` it reads the kernel's
//! histograms and counters, folds the table into a `Snapshot` and swaps it
//! in. The HTTP server (`http`) runs on a thread of its own and encodes
//! whichever snapshot is the latest: a scrape never runs on, nor waits
//! for, the event loop.
mod http;
pub mod metrics;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use tcptrace_common::tcp_state::{CLOSE_WAIT, TIME_WAIT};

use crate::{
    census::Counts,
    cgroups::OwnerCgroups,
    clock::Clock,
    decode::Record,
    doctor::{self, Sysctls},
    live::{self, Tracked},
    options::Output,
    probe::{Probe, ProbeOptions},
    session::{self, SessionOptions, View},
    sockets::Scope,
    stuck,
    summary::{RunContext, RunStats},
};
use metrics::{Behind, Health, Latest, Snapshot, Top, UNKNOWN};

/// `tcptrace serve`.
pub struct ServeOptions {
    pub probe: ProbeOptions,
    pub output: Output,
    pub scope: Scope,
    pub listen: SocketAddr,
    /// How often a fresh snapshot is published.
    pub interval: Duration,
    /// Label values kept per labelled metric.
    pub top_keys: usize,
    /// CLOSE_WAIT counts as stuck after this long.
    pub min_age: Duration,
}

/// Walking the kernel's record maps to count evictions costs a syscall
/// per record: at most this often.
const EVICTIONS_EVERY: Duration = Duration::from_secs(30);

struct ServeView {
    tracked: Tracked,
    stats: RunStats,
    latest: Latest,
    json: bool,
    interval: Duration,
    top_keys: usize,
    min_age: Duration,
    records_evicted: u64,
    evictions_read: Option<Instant>,
    /// Owners' cgroups, as `stuck` wants them (no `--cgroup` here).
    owners: OwnerCgroups,
}

impl ServeView {
    fn snapshot(&mut self, probe: &Probe) -> Result<Snapshot> {
        if self
            .evictions_read
            .is_none_or(|at| at.elapsed() >= EVICTIONS_EVERY)
        {
            self.records_evicted = probe.records_evicted()?;
            self.evictions_read = Some(Instant::now());
        }
        let now = Clock::now_ktime_ns();
        let tracked = &self.tracked;
        let (hooks, timewait_detection) = doctor::hooks_of(probe);
        let sysctls = Sysctls::read();
        Ok(Snapshot {
            counts: Counts::of(&tracked.table),
            transitions: self.stats.transitions().collect(),
            ends: tracked.counts,
            histograms: metrics::per_metric(&probe.histograms()?),
            behind: behind(tracked, now, self.min_age, self.top_keys, &mut self.owners),
            ports: sysctls
                .ip_local_port_range
                .map(|range| doctor::port_use(tracked, range)),
            max_tw_buckets: sysctls.tcp_max_tw_buckets,
            health: Health {
                events: self.stats.events,
                bad_records: tracked.bad_records,
                losses: probe.loss_counters()?,
                records_evicted: self.records_evicted,
                hooks,
                timewait_detection,
                run_stats: probe.run_stats()?,
                sockets: tracked.table.len(),
                sockets_dropped: tracked.table.dropped,
            },
            taken_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        })
    }
}

/// The processes and local ports behind TIME_WAIT (every timewait socket
/// in that sub-state, by its last owner) and stuck CLOSE_WAIT (at least
/// `min_age` in the state, or there since before tcptrace started).
fn behind(
    tracked: &Tracked,
    now_ns: u64,
    min_age: Duration,
    n: usize,
    owners: &mut OwnerCgroups,
) -> Vec<Behind> {
    let comm =
        |owner: Option<crate::sockets::Owner>| owner.map_or(UNKNOWN.into(), |o| o.comm_str());
    let container = |cgroup: Option<&crate::cgroups::Cgroup>| {
        cgroup.map_or(UNKNOWN.into(), |c| c.container.to_string())
    };
    let mut time_wait = Tally::default();
    tracked.table.for_each(|tuple, e| {
        if e.state == TIME_WAIT {
            let cgroup = owners.of(e.owner.as_ref());
            time_wait.add(comm(e.owner), tuple.lport, container(cgroup.as_ref()));
        }
    });
    let mut close_wait = Tally::default();
    for row in stuck::rows(tracked, now_ns, min_age, owners) {
        if row.state == CLOSE_WAIT {
            close_wait.add(
                comm(row.owner),
                row.tuple.lport,
                container(row.cgroup.as_ref()),
            );
        }
    }
    vec![time_wait.top(TIME_WAIT, n), close_wait.top(CLOSE_WAIT, n)]
}

#[derive(Default)]
struct Tally {
    processes: HashMap<String, u64>,
    ports: HashMap<u16, u64>,
    containers: HashMap<String, u64>,
}

impl Tally {
    fn add(&mut self, comm: String, lport: u16, container: String) {
        *self.processes.entry(comm).or_default() += 1;
        *self.ports.entry(lport).or_default() += 1;
        *self.containers.entry(container).or_default() += 1;
    }

    fn top(self, state: u8, n: usize) -> Behind {
        let ports = self
            .ports
            .into_iter()
            .map(|(port, c)| (port.to_string(), c))
            .collect();
        Behind {
            state,
            processes: Top::of(self.processes, n),
            local_ports: Top::of(ports, n),
            containers: Top::of(self.containers, n),
        }
    }
}

impl View for ServeView {
    fn learn_cgroups(&mut self, table: &[(u64, String)]) {
        self.owners.learn(table);
    }

    fn record(&mut self, data: &[u8], _clock: &Clock, _out: &mut Vec<u8>) {
        match Record::decode(data) {
            Ok(Record::Transition(t)) => {
                if self.tracked.apply(&t) {
                    self.stats.record(&t);
                }
            }
            _ => self.tracked.bad_records += 1,
        }
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    fn refresh(&mut self, probe: &Probe, _clock: &Clock, _out: &mut Vec<u8>) -> Result<()> {
        live::resync_timewait(&mut self.tracked);
        self.tracked.find_missing_owners(&metrics::LABELLED_STATES);
        let snapshot = Arc::new(self.snapshot(probe)?);
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
        Ok(())
    }

    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        live::finish(self.json, &self.tracked, ctx, clock, out);
        Ok(())
    }
}

pub async fn run(options: ServeOptions) -> Result<()> {
    let ServeOptions {
        probe,
        output,
        scope,
        listen,
        interval,
        top_keys,
        min_age,
    } = options;
    // Bound before the probe loads: a port in use fails with nothing done.
    let listener = http::bind(listen)?;
    let (probe, tracked) = live::start(&probe, scope).await?;
    let mut view = ServeView {
        tracked,
        stats: RunStats::new(),
        latest: Arc::new(Mutex::new(Arc::new(Snapshot::default()))),
        json: output.json,
        interval,
        top_keys,
        min_age,
        records_evicted: 0,
        evictions_read: None,
        owners: OwnerCgroups::new(None),
    };
    // The first snapshot before the first scrape can come.
    view.refresh(&probe, &Clock::new(), &mut Vec::new())?;
    let address = listener.local_addr()?;
    http::spawn(listener, Arc::clone(&view.latest))?;
    let banner = format!(
        "tcptrace: serving Prometheus metrics on http://{address}/metrics (Ctrl-C to stop)"
    );
    session::run(
        probe,
        &mut view,
        SessionOptions::new(output.json, output.duration, Some(banner)),
    )
    .await
}
