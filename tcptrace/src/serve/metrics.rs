//! What `serve` exposes: a snapshot of plain numbers, taken by the event
//! loop at each refresh, and its encoding with prometheus-client (a
//! `Collector` that encodes whichever snapshot is the latest at each
//! scrape). A scrape only clones an `Arc` under a short lock.
use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};
use tcptrace_common::{metric, tcp_state::*, HistKey, HistValue, HIST_BUCKETS};

use crate::{
    census::{Counts, STATES},
    probe::LossCounters,
    snapshot::{metric_name, PortUse},
    sockets::TimewaitCounts,
    state,
};

/// The label value for everything past the kept ones.
pub const OTHER: &str = "(other)";
/// The label value for sockets whose owner tcptrace never saw.
pub const UNKNOWN: &str = "(unknown)";

/// The states whose owners and local ports are labelled.
pub const LABELLED_STATES: [u8; 2] = [TIME_WAIT, CLOSE_WAIT];

/// Histogram bounds: `le` = 2^k ns for k in this range (about 1 us to
/// 9.8 h); kernel buckets below go into the first, above into +Inf.
const FIRST_BOUND_LOG2: usize = 10;
const LAST_BOUND_LOG2: usize = 45;

/// The top values of one label, the rest summed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Top {
    /// Most first, then by value.
    pub kept: Vec<(String, u64)>,
    /// The sum of the folded ones.
    pub other: u64,
    /// How many values were folded into `other`.
    pub folded: u64,
}

impl Top {
    /// The `n` largest counts of `counts`, the rest summed.
    pub fn of(counts: HashMap<String, u64>, n: usize) -> Top {
        let mut all: Vec<(String, u64)> = counts.into_iter().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let rest = all.split_off(n.min(all.len()));
        Top {
            kept: all,
            other: rest.iter().map(|(_, c)| c).sum(),
            folded: rest.len() as u64,
        }
    }
}

/// Owners and local ports of one labelled state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Behind {
    pub state: u8,
    pub processes: Top,
    pub local_ports: Top,
    /// The owners' containers (`container` of *Containers and cgroups*).
    pub containers: Top,
}

/// tcptrace's own health.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Transitions read from the ring and in scope.
    pub events: u64,
    pub bad_records: u64,
    pub losses: LossCounters,
    pub records_evicted: u64,
    pub hooks: Vec<String>,
    pub timewait_detection: String,
    /// (program, runs, run time ns); all zero unless kernel BPF stats are on.
    pub run_stats: Vec<(&'static str, u64, u64)>,
    pub sockets: usize,
    pub sockets_dropped: u64,
}

/// Everything one scrape shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub counts: Counts,
    /// (old, new, count) of every transition seen at least once.
    pub transitions: Vec<(u8, u8, u64)>,
    pub ends: TimewaitCounts,
    /// Per `metric::*`, summed over keys.
    pub histograms: Vec<HistValue>,
    pub behind: Vec<Behind>,
    /// Timewait sockets on ephemeral ports (when the port range is known).
    pub ports: Option<PortUse>,
    /// net.ipv4.tcp_max_tw_buckets, when readable.
    pub max_tw_buckets: Option<i64>,
    pub health: Health,
    /// When it was taken (Unix time, seconds).
    pub taken_at: f64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            counts: Counts::default(),
            transitions: Vec::new(),
            ends: TimewaitCounts::default(),
            histograms: vec![empty_histogram(); metric::COUNT],
            behind: Vec::new(),
            ports: None,
            max_tw_buckets: None,
            health: Health::default(),
            taken_at: 0.0,
        }
    }
}

fn empty_histogram() -> HistValue {
    HistValue {
        count: 0,
        sum_ns: 0,
        max_ns: 0,
        buckets: [0; HIST_BUCKETS],
    }
}

/// The kernel's histograms, one per metric.
pub fn per_metric(raw: &[(HistKey, HistValue)]) -> Vec<HistValue> {
    let mut out = vec![empty_histogram(); metric::COUNT];
    for (key, value) in raw {
        let Some(sum) = out.get_mut(key.metric as usize) else {
            continue;
        };
        sum.count += value.count;
        sum.sum_ns += value.sum_ns;
        sum.max_ns = sum.max_ns.max(value.max_ns);
        for (total, n) in sum.buckets.iter_mut().zip(value.buckets.iter()) {
            *total += n;
        }
    }
    out
}

/// Classic buckets at the powers of two, in seconds: (upper bound, count
/// of the bucket alone); prometheus-client accumulates them. Kernel bucket
/// i holds [2^i, 2^(i+1)) ns, so it counts towards le = 2^(i+1) ns.
pub fn classic_buckets(h: &HistValue) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = (FIRST_BOUND_LOG2..=LAST_BOUND_LOG2)
        .map(|k| ((1u64 << k) as f64 / 1e9, 0))
        .collect();
    let mut above = 0;
    for (i, &n) in h.buckets.iter().enumerate() {
        let bound = (i + 1).max(FIRST_BOUND_LOG2);
        match out.get_mut(bound - FIRST_BOUND_LOG2) {
            Some(slot) => slot.1 += n,
            None => above += n,
        }
    }
    out.push((f64::INFINITY, above));
    out
}

/// The latest snapshot, swapped in by the event loop, read by scrapes.
pub type Latest = Arc<Mutex<Arc<Snapshot>>>;

/// The registry every scrape encodes: one collector reading `latest`.
pub fn registry(latest: Latest) -> Registry {
    let mut registry = Registry::with_prefix("tcptrace");
    registry.register_collector(Box::new(SnapshotCollector(latest)));
    registry
}

#[derive(Debug)]
struct SnapshotCollector(Latest);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = Arc::clone(&self.0.lock().unwrap_or_else(|e| e.into_inner()));
        snapshot.encode(&mut encoder)
    }
}

/// One metric family: its descriptor, then each labelled sample.
fn family<'e>(
    encoder: &'e mut DescriptorEncoder,
    name: &'e str,
    help: &str,
    unit: Option<&'e Unit>,
    kind: MetricType,
) -> Result<MetricEncoder<'e>, fmt::Error> {
    encoder.encode_descriptor(name, help, unit, kind)
}

fn gauges<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = family(encoder, name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        m.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut m = family(encoder, name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    family(encoder, name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    family(encoder, name, help, None, MetricType::Gauge)?.encode_gauge(&value)
}

fn histogram(m: &mut MetricEncoder, h: &HistValue) -> fmt::Result {
    m.encode_histogram::<NoLabelSet>(h.sum_ns as f64 / 1e9, h.count, &classic_buckets(h), None)
}

impl Snapshot {
    fn encode(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let c = &self.counts;
        gauges(
            e,
            "sockets",
            "TCP sockets per state now (timewait sockets under their sub-state)",
            STATES.map(|s| ([("state", state::name(s))], c.per_state[s as usize])),
        )?;
        gauges(
            e,
            "timewait_sockets",
            "Timewait sockets (closed by their application) per sub-state",
            [
                ([("substate", "FIN_WAIT2")], c.timewait_fin_wait2),
                ([("substate", "TIME_WAIT")], c.timewait_time_wait),
            ],
        )?;
        gauges(
            e,
            "fin_wait2_sockets",
            "Sockets in FIN_WAIT2: full sockets (still held by their application) or timewait sockets (orphaned)",
            [
                ([("socket", "full")], c.fin_wait2_full),
                ([("socket", "timewait")], c.timewait_fin_wait2),
            ],
        )?;
        counters(
            e,
            "transitions",
            "TCP state transitions seen, by old and new state",
            self.transitions
                .iter()
                .map(|&(old, new, n)| ([("old", state::name(old)), ("new", state::name(new))], n)),
        )?;
        let ends = &self.ends;
        counters(
            e,
            "timewait_ends",
            "Timewait sockets ended, by reason: TIME_WAIT expired, reused or killed; orphaned FIN_WAIT2 by fin_timeout",
            [
                ("expired", ends.expired),
                ("reused", ends.reused),
                ("killed", ends.killed),
                ("fin_timeout", ends.fin_timeout),
            ]
            .map(|(reason, n)| ([("reason", reason)], n)),
        )?;
        self.encode_histograms(e)?;
        self.encode_behind(e)?;
        self.encode_limits(e)?;
        self.encode_health(e)?;
        gauge(
            e,
            "snapshot_timestamp_seconds",
            "When the snapshot this scrape shows was taken (Unix time)",
            self.taken_at,
        )
    }

    fn encode_histograms(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let seconds = Unit::Seconds;
        let mut m = family(
            e,
            "state_duration",
            "Time spent in a state, counted when the state ends (from the kernel's log2 buckets)",
            Some(&seconds),
            MetricType::Histogram,
        )?;
        for (id, h) in self.histograms.iter().enumerate() {
            let id = id as u8;
            if id != metric::LIFETIME {
                histogram(&mut m.encode_family(&[("state", metric_name(id))])?, h)?;
            }
        }
        let mut m = family(
            e,
            "connection_lifetime",
            "Connection lifetimes, counted when the connection's last socket is gone (from the kernel's log2 buckets)",
            Some(&seconds),
            MetricType::Histogram,
        )?;
        histogram(&mut m, &self.histograms[metric::LIFETIME as usize])
    }

    fn encode_behind(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let rows = |pick: fn(&Behind) -> &Top| {
            self.behind.iter().flat_map(move |b| {
                let top = pick(b);
                let state = state::name(b.state);
                top.kept
                    .iter()
                    .map(move |(k, n)| (state, k.as_str(), *n))
                    .chain((top.folded > 0).then_some((state, OTHER, top.other)))
            })
        };
        gauges(
            e,
            "process_sockets",
            "Sockets in TIME_WAIT and stuck in CLOSE_WAIT per owning process (comm; the last owner of a timewait socket)",
            rows(|b| &b.processes).map(|(s, comm, n)| ([("state", s), ("comm", comm)], n)),
        )?;
        gauges(
            e,
            "local_port_sockets",
            "Sockets in TIME_WAIT and stuck in CLOSE_WAIT per local port",
            rows(|b| &b.local_ports).map(|(s, port, n)| ([("state", s), ("port", port)], n)),
        )?;
        gauges(
            e,
            "container_sockets",
            "Sockets in TIME_WAIT and stuck in CLOSE_WAIT per owner's container (or service, or cgroup path)",
            rows(|b| &b.containers).map(|(s, c, n)| ([("state", s), ("container", c)], n)),
        )?;
        gauges(
            e,
            "label_values_folded",
            "Label values summed under \"(other)\" beyond --top-keys, per metric and state",
            self.behind.iter().flat_map(|b| {
                let state = state::name(b.state);
                [
                    (
                        [("metric", "tcptrace_process_sockets"), ("state", state)],
                        b.processes.folded,
                    ),
                    (
                        [("metric", "tcptrace_local_port_sockets"), ("state", state)],
                        b.local_ports.folded,
                    ),
                    (
                        [("metric", "tcptrace_container_sockets"), ("state", state)],
                        b.containers.folded,
                    ),
                ]
            }),
        )
    }

    /// What the TIME_WAIT alerts compare against.
    fn encode_limits(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        if let Some(max) = self.max_tw_buckets {
            gauge(
                e,
                "tcp_max_tw_buckets",
                "net.ipv4.tcp_max_tw_buckets: most timewait sockets the kernel keeps in this namespace",
                max as f64,
            )?;
        }
        if let Some(ports) = &self.ports {
            gauge(
                e,
                "ephemeral_ports",
                "Local ports in net.ipv4.ip_local_port_range",
                ports.range_size as f64,
            )?;
            gauge(
                e,
                "timewait_ephemeral_ports",
                "Timewait sockets holding a local port of the ephemeral range",
                ports.timewait_in_range as f64,
            )?;
            gauge(
                e,
                "timewait_ephemeral_ports_max_per_peer",
                "Most timewait sockets holding an ephemeral port towards one remote address and port (each such port is unusable towards that peer)",
                ports.max_per_peer as f64,
            )?;
        }
        Ok(())
    }

    fn encode_health(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let h = &self.health;
        counter(
            e,
            "events",
            "Transitions read from the probe (in scope)",
            h.events,
        )?;
        let l = &h.losses;
        counters(
            e,
            "events_lost",
            "Events lost, by cause: ring buffer full, kernel recursion misses, failed socket reads, TIME_WAIT entries lost with a skipped hand-off",
            [
                ("ring_full", l.ring_full),
                ("recursion_miss", l.recursion_misses),
                ("read_failure", l.read_failures),
                ("timewait_entry_lost", l.timewait_entries_lost),
            ]
            .map(|(cause, n)| ([("cause", cause)], n)),
        )?;
        counter(
            e,
            "timewait_hook_misses",
            "Runs of the timewait hooks the kernel skipped (no event lost; a hand-off may look like a reset)",
            l.timewait_hook_misses,
        )?;
        counter(
            e,
            "records_evicted",
            "Per-connection records the kernel's LRU maps evicted (counted every 30 s)",
            h.records_evicted,
        )?;
        counter(
            e,
            "bad_records",
            "Ring records that did not decode",
            h.bad_records,
        )?;
        gauges(
            e,
            "hook_info",
            "The kernel hooks attached (1 each)",
            h.hooks.iter().map(|hook| ([("hook", hook.as_str())], 1)),
        )?;
        gauges(
            e,
            "timewait_detection_info",
            "How precisely timewait sockets are followed (exact, partial, unavailable, disabled)",
            [([("detection", h.timewait_detection.as_str())], 1)],
        )?;
        gauge(
            e,
            "table_sockets",
            "Sockets in tcptrace's table",
            h.sockets as f64,
        )?;
        counter(
            e,
            "table_sockets_dropped",
            "Sockets not kept because the table was full (1M)",
            h.sockets_dropped,
        )?;
        if h.run_stats.iter().any(|&(_, runs, _)| runs > 0) {
            counters(
                e,
                "probe_runs",
                "Runs of each probe program (kernel BPF statistics, when kernel.bpf_stats_enabled=1)",
                h.run_stats.iter().map(|&(p, runs, _)| ([("program", p)], runs)),
            )?;
            let seconds = Unit::Seconds;
            let mut m = family(
                e,
                "probe_run",
                "Run time of each probe program (kernel BPF statistics, when kernel.bpf_stats_enabled=1)",
                Some(&seconds),
                MetricType::Counter,
            )?;
            for &(program, _, ns) in &h.run_stats {
                m.encode_family(&[("program", program)])?
                    .encode_counter::<NoLabelSet, _, f64>(&(ns as f64 / 1e9), None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::http;

    #[test]
    fn top_keeps_the_largest_and_folds_the_rest() {
        let counts: HashMap<String, u64> = [("a", 5), ("b", 9), ("c", 1), ("d", 5)]
            .map(|(k, v)| (k.to_string(), v))
            .into_iter()
            .collect();
        let top = Top::of(counts.clone(), 2);
        assert_eq!(top.kept, vec![("b".into(), 9), ("a".into(), 5)]);
        assert_eq!((top.other, top.folded), (6, 2));
        let all = Top::of(counts, 10);
        assert_eq!((all.kept.len(), all.other, all.folded), (4, 0, 0));
    }

    #[test]
    fn log2_buckets_become_classic_buckets_in_seconds() {
        let mut h = empty_histogram();
        h.buckets[3] = 2; // [8, 16) ns: below the first bound
        h.buckets[20] = 5; // [2^20, 2^21) ns: le = 2^21 ns
        h.buckets[50] = 1; // past the last bound: +Inf
        h.count = 8;
        let buckets = classic_buckets(&h);
        assert_eq!(buckets.len(), LAST_BOUND_LOG2 - FIRST_BOUND_LOG2 + 2);
        assert_eq!(buckets[0], (1024e-9, 2));
        assert_eq!(
            buckets[21 - FIRST_BOUND_LOG2],
            ((1u64 << 21) as f64 / 1e9, 5)
        );
        assert_eq!(*buckets.last().unwrap(), (f64::INFINITY, 1));
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), h.count);
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.counts.per_state[TIME_WAIT as usize] = 3;
        s.transitions = vec![(FIN_WAIT2, TIME_WAIT, 7)];
        s.ends.expired = 2;
        s.histograms[metric::CLOSE_WAIT as usize].buckets[25] = 4;
        s.histograms[metric::CLOSE_WAIT as usize].count = 4;
        s.histograms[metric::CLOSE_WAIT as usize].sum_ns = 200_000_000;
        let ports: HashMap<String, u64> =
            (0..1000).map(|p| (format!("{}", 20000 + p), 1)).collect();
        s.behind = vec![Behind {
            state: TIME_WAIT,
            processes: Top::of(HashMap::from([("nginx".to_string(), 3)]), 10),
            local_ports: Top::of(ports, 10),
            containers: Top::of(HashMap::from([("docker:3f4e5d6c7b8a".to_string(), 3)]), 10),
        }];
        s.health.hooks = vec!["tp_btf/inet_sock_set_state".into()];
        s
    }

    #[test]
    fn the_exposition_has_every_family_in_both_formats() {
        let latest: Latest = Arc::new(Mutex::new(Arc::new(snapshot())));
        let registry = registry(latest);
        let (text, content_type) = http::render(&registry, false);
        assert!(content_type.starts_with("text/plain; version=0.0.4"));
        for line in [
            "# TYPE tcptrace_sockets gauge",
            "tcptrace_sockets{state=\"TIME_WAIT\"} 3",
            "# TYPE tcptrace_transitions_total counter",
            "tcptrace_transitions_total{old=\"FIN_WAIT2\",new=\"TIME_WAIT\"} 7",
            "tcptrace_timewait_ends_total{reason=\"expired\"} 2",
            "# TYPE tcptrace_state_duration_seconds histogram",
            "tcptrace_state_duration_seconds_bucket{state=\"close_wait\",le=\"0.067108864\"} 4",
            "tcptrace_state_duration_seconds_sum{state=\"close_wait\"} 0.2",
            "tcptrace_state_duration_seconds_count{state=\"close_wait\"} 4",
            "tcptrace_connection_lifetime_seconds_count 0",
            "tcptrace_process_sockets{state=\"TIME_WAIT\",comm=\"nginx\"} 3",
            "tcptrace_local_port_sockets{state=\"TIME_WAIT\",port=\"(other)\"} 990",
            "tcptrace_container_sockets{state=\"TIME_WAIT\",container=\"docker:3f4e5d6c7b8a\"} 3",
            "tcptrace_label_values_folded{metric=\"tcptrace_local_port_sockets\",state=\"TIME_WAIT\"} 990",
            "tcptrace_hook_info{hook=\"tp_btf/inet_sock_set_state\"} 1",
            "tcptrace_events_lost_total{cause=\"ring_full\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let (om, content_type) = http::render(&registry, true);
        assert!(content_type.starts_with("application/openmetrics-text"));
        assert!(om.contains("# TYPE tcptrace_transitions counter\n"));
        assert!(om.contains("# UNIT tcptrace_state_duration_seconds seconds\n"));
        assert!(om.ends_with("# EOF\n"));
    }

    /// A 1,000-key snapshot, rendered as a scrape would (printed: `cargo
    /// test -p tcptrace --release --lib serve -- --nocapture`).
    #[test]
    fn a_thousand_key_exposition_renders_in_milliseconds() {
        let mut s = snapshot();
        let ports: HashMap<String, u64> =
            (0..2000).map(|p| (format!("{}", 20000 + p), 1)).collect();
        s.behind[0].local_ports = Top::of(ports, 1000);
        let registry = registry(Arc::new(Mutex::new(Arc::new(s))));
        let start = std::time::Instant::now();
        let rounds = 50;
        let mut bytes = 0;
        for _ in 0..rounds {
            bytes = http::render(&registry, false).0.len();
        }
        let each = start.elapsed() / rounds;
        eprintln!("1,000-key exposition: {bytes} bytes, rendered in {each:?}");
        assert!(each < std::time::Duration::from_millis(100), "{each:?}");
    }
}
