//! `tcptrace hist`: log2 histograms of connection lifetimes and of the time
//! spent in each state, aggregated in the kernel (the probe's HISTOGRAMS
//! map): nothing per event is copied to userspace, so the cost does not
//! grow with the connection rate. Userspace reads the map every
//! `--interval` and at exit.
use std::{
    collections::HashMap,
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::Result;
use clap::ValueEnum;
use tcptrace_common::{
    hist_by, metric, tcp_state::*, HistKey, HistValue, AF_INET, AF_INET6, HIST_BUCKETS,
};

pub use crate::snapshot::{Histogram, KeyValue, METRICS};
use crate::{
    cgroups::Names,
    clock::Clock,
    decode::{comm_bytes, Record, Timewait},
    options::Output,
    printer,
    probe::Probe,
    session::{SessionOptions, View},
    source::{Opened, Source},
    summary::RunContext,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    Lport,
    Rport,
    Raddr,
    Comm,
    Pid,
    /// The owner's cgroup path.
    Cgroup,
    /// The owner's container (or service, or cgroup path): the kernel keeps
    /// one histogram per cgroup, merged here per container.
    Container,
}

impl By {
    pub fn probe_value(self) -> u32 {
        match self {
            By::Lport => hist_by::LPORT,
            By::Rport => hist_by::RPORT,
            By::Raddr => hist_by::RADDR,
            By::Comm => hist_by::COMM,
            By::Pid => hist_by::PID,
            By::Cgroup | By::Container => hist_by::CGROUP,
        }
    }
}

impl KeyValue {
    pub(crate) fn from_probe(key: &HistKey, by: Option<By>, names: &mut Names) -> Self {
        if key.other != 0 {
            return KeyValue::Other;
        }
        let v = &key.value;
        match by {
            None => KeyValue::All,
            Some(By::Lport | By::Rport) => KeyValue::Port(u16::from_ne_bytes([v[0], v[1]])),
            Some(By::Pid) => KeyValue::Pid(u32::from_ne_bytes([v[0], v[1], v[2], v[3]])),
            Some(By::Comm) => KeyValue::Comm(String::from_utf8_lossy(comm_bytes(v)).into_owned()),
            Some(by @ (By::Cgroup | By::Container)) => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&v[..8]);
                let id = u64::from_ne_bytes(id);
                KeyValue::Comm(match (names.resolve(id), by) {
                    (Some(c), By::Cgroup) => c.path.to_string(),
                    (Some(c), _) => c.container.to_string(),
                    (None, _) if id == 0 => "-".into(),
                    (None, _) => format!("cgroup:{id}"),
                })
            }
            Some(By::Raddr) => KeyValue::Addr(if u16::from(key.family) == AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(*v))
            } else {
                IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))
            }),
        }
    }
}

/// The histograms to print: per metric, the top keys and "other".
pub fn arrange(
    raw: &[(HistKey, HistValue)],
    by: Option<By>,
    top: usize,
    names: &mut Names,
) -> Vec<(u8, KeyValue, Histogram)> {
    let mut per_key: HashMap<(u8, KeyValue), Histogram> = HashMap::new();
    for (key, value) in raw {
        per_key
            .entry((key.metric, KeyValue::from_probe(key, by, names)))
            .or_insert_with(Histogram::empty)
            .add(value);
    }
    let mut out = Vec::new();
    for (m, _) in METRICS {
        let mut keys: Vec<(KeyValue, Histogram)> = per_key
            .iter()
            .filter(|((metric, _), h)| *metric == m && h.count > 0)
            .map(|((_, k), h)| (k.clone(), h.clone()))
            .collect();
        keys.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(&b.0)));
        let mut other = Histogram::empty();
        let mut shown = Vec::new();
        for (key, hist) in keys {
            if key == KeyValue::Other || (by.is_some() && shown.len() >= top) {
                other.merge(&hist);
            } else {
                shown.push((m, key, hist));
            }
        }
        out.extend(shown);
        if other.count > 0 {
            out.push((m, KeyValue::Other, other));
        }
    }
    out
}

/// The kernel's histograms rebuilt from the records of a capture: every
/// duration the probe adds to HISTOGRAMS is in a record (`--all` and
/// `life`'s records together), keyed the same way.
#[derive(Default)]
pub struct RecordHistograms {
    by: Option<By>,
    per_key: HashMap<HistKey, HistValue>,
}

impl RecordHistograms {
    pub fn new(by: Option<By>) -> Self {
        RecordHistograms {
            by,
            per_key: HashMap::new(),
        }
    }

    pub fn add(&mut self, record: &Record) {
        match record {
            Record::Transition(t) => {
                // FIN_WAIT2 handed to a timewait socket is measured there
                // (its FIN_WAIT2 -> TIME_WAIT or -> CLOSE), as in the probe.
                if t.old == FIN_WAIT2 && t.timewait == Timewait::Handoff && !t.timewait_socket {
                    return;
                }
                let (Some(ns), Some(metric)) = (t.in_old_ns, metric::of_dwell_in(t.old)) else {
                    return;
                };
                let raddr = match t.remote {
                    IpAddr::V4(a) => {
                        let mut v = [0u8; 16];
                        v[..4].copy_from_slice(&a.octets());
                        (AF_INET, v)
                    }
                    IpAddr::V6(a) => (AF_INET6, a.octets()),
                };
                let owner = (t.pid, t.comm(), t.cgroup);
                let key = self.key(metric, t.lport, t.rport, raddr, owner);
                self.add_duration(key, ns);
            }
            Record::Connection(c) => {
                if !c.start_seen() {
                    return;
                }
                let e = &c.event;
                let key = self.key(
                    metric::LIFETIME,
                    e.lport,
                    e.rport,
                    (e.family, e.raddr),
                    (c.pid(), c.comm(), c.cgroup()),
                );
                self.add_duration(key, e.lifetime_ns);
            }
        }
    }

    fn key(
        &self,
        metric: u8,
        lport: u16,
        rport: u16,
        (family, raddr): (u16, [u8; 16]),
        (pid, comm, cgroup): (Option<u32>, &[u8], u64),
    ) -> HistKey {
        let mut key = HistKey {
            metric,
            family: 0,
            other: 0,
            _pad: [0; 5],
            value: [0; 16],
        };
        match self.by {
            None => {}
            Some(By::Lport) => key.value[..2].copy_from_slice(&lport.to_ne_bytes()),
            Some(By::Rport) => key.value[..2].copy_from_slice(&rport.to_ne_bytes()),
            Some(By::Raddr) => {
                // IPv4 in the first four bytes, as the probe keeps it.
                key.family = family as u8;
                key.value = raddr;
            }
            Some(By::Comm) => key.value[..comm.len()].copy_from_slice(comm),
            Some(By::Pid) => key.value[..4].copy_from_slice(&pid.unwrap_or(0).to_ne_bytes()),
            Some(By::Cgroup | By::Container) => {
                key.value[..8].copy_from_slice(&cgroup.to_ne_bytes())
            }
        }
        key
    }

    fn add_duration(&mut self, key: HistKey, ns: u64) {
        let value = self.per_key.entry(key).or_insert(HistValue {
            count: 0,
            sum_ns: 0,
            max_ns: 0,
            buckets: [0; HIST_BUCKETS],
        });
        let bucket = if ns < 2 {
            0
        } else {
            63 - ns.leading_zeros() as usize
        };
        if bucket < HIST_BUCKETS {
            value.buckets[bucket] += 1;
        }
        value.count += 1;
        value.sum_ns += ns;
        value.max_ns = value.max_ns.max(ns);
    }

    pub fn raw(&self) -> Vec<(HistKey, HistValue)> {
        self.per_key.iter().map(|(k, v)| (*k, *v)).collect()
    }
}

struct HistView {
    json: bool,
    by: Option<By>,
    top: usize,
    metrics: Vec<u8>,
    interval: Option<Duration>,
    last: Vec<(HistKey, HistValue)>,
    overflow: u64,
    /// Reading a capture: the histograms are rebuilt from its records.
    from_records: Option<RecordHistograms>,
    cgroups: Names,
}

impl HistView {
    fn print(&mut self, out: &mut Vec<u8>, clock: &Clock) {
        if !self.json {
            let mut time = Vec::new();
            clock.write_local_time(&mut time, Clock::now_ktime_ns());
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&time));
        }
        let arranged = arrange(&self.last, self.by, self.top, &mut self.cgroups);
        let wanted = |m: u8| self.metrics.is_empty() || self.metrics.contains(&m);
        let mut any = false;
        for (m, key, h) in arranged.iter().filter(|(m, _, _)| wanted(*m)) {
            any = true;
            if self.json {
                printer::json::write_histogram(out, *m, key, h);
            } else {
                printer::human::write_histogram(out, *m, key, h);
            }
        }
        if !any && !self.json {
            out.extend_from_slice(b"(no finished states yet)\n\n");
        }
    }
}

impl View for HistView {
    fn learn_cgroups(&mut self, table: &[(u64, String)]) {
        self.cgroups.learn(table);
    }

    fn record(&mut self, data: &[u8], _clock: &Clock, _out: &mut Vec<u8>) {
        // Live, the probe writes nothing to the ring in this mode.
        if let (Some(histograms), Ok(record)) = (&mut self.from_records, Record::decode(data)) {
            histograms.add(&record);
        }
    }

    fn refresh_interval(&self) -> Option<Duration> {
        self.interval
    }

    fn refresh(&mut self, probe: &Probe, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        self.last = probe.histograms()?;
        self.print(out, clock);
        Ok(())
    }

    fn before_detach(&mut self, probe: &Probe) -> Result<()> {
        self.last = probe.histograms()?;
        self.overflow = probe.histogram_overflow()?;
        Ok(())
    }

    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        if let Some(histograms) = &self.from_records {
            self.last = histograms.raw();
        }
        self.print(out, clock);
        if self.json {
            printer::json::write_histogram_summary(out, clock, self.overflow, ctx);
        } else {
            let mut text = Vec::new();
            printer::human::write_histogram_summary(&mut text, self.overflow, ctx);
            printer::write_stderr(&text);
        }
        Ok(())
    }
}

/// `tcptrace hist`.
pub struct HistOptions {
    pub source: Source,
    pub output: Output,
    pub by: Option<By>,
    /// Keys shown per metric (at least 1).
    pub top: usize,
    /// Only these metrics; all when empty.
    pub metrics: Vec<u8>,
    pub interval: Option<Duration>,
}

pub async fn run(options: HistOptions) -> Result<()> {
    let output = options.output;
    let mut view = HistView {
        json: output.json,
        by: options.by,
        top: options.top,
        metrics: options.metrics,
        interval: options.interval,
        last: Vec::new(),
        overflow: 0,
        from_records: None,
        cgroups: Names::empty(),
    };
    let source = options.source.open()?;
    view.cgroups = source.cgroup_names();
    if let Opened::Capture(_) = source {
        // Read back: the histograms are rebuilt from the records, and
        // printed once, at the end.
        view.from_records = Some(RecordHistograms::new(options.by));
        view.interval = None;
    }
    source
        .run(
        &mut view,
        SessionOptions::new(output.json, output.duration, Some(
                "tcptrace: aggregating TCP state durations in the kernel (Ctrl-C to print and stop)"
                    .into(),
            )),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_common::{metric, HIST_BUCKETS};

    fn hist(values: &[u64]) -> Histogram {
        let mut h = Histogram::empty();
        for &v in values {
            let i = if v < 2 {
                0
            } else {
                63 - v.leading_zeros() as usize
            };
            h.buckets[i] += 1;
            h.count += 1;
            h.max_ns = h.max_ns.max(v);
        }
        h
    }

    #[test]
    fn bucket_ranges_are_log2() {
        assert_eq!(Histogram::bucket_range(0), (0, 2));
        assert_eq!(Histogram::bucket_range(1), (2, 4));
        assert_eq!(Histogram::bucket_range(20), (1 << 20, 1 << 21));
    }

    #[test]
    fn quantiles_stay_in_their_bucket() {
        let h = hist(&[5_000_000, 5_100_000, 50_000_000, 500_000_000]);
        let p50 = h.quantile(0.5);
        assert!((1 << 22..1 << 23).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 500_000_000);
        assert!(h.quantile(0.99) <= h.max_ns);
        assert_eq!(Histogram::empty().quantile(0.5), 0);
    }

    #[test]
    fn top_keys_and_other() {
        let key = |port: u16| {
            let mut k = HistKey {
                metric: metric::LIFETIME,
                family: 0,
                other: 0,
                _pad: [0; 5],
                value: [0; 16],
            };
            k.value[..2].copy_from_slice(&port.to_ne_bytes());
            k
        };
        let value = |count: u64| HistValue {
            count,
            sum_ns: 0,
            max_ns: 10,
            buckets: {
                let mut b = [0; HIST_BUCKETS];
                b[3] = count;
                b
            },
        };
        let raw = vec![
            (key(80), value(5)),
            (key(443), value(9)),
            (key(22), value(1)),
        ];
        let arranged = arrange(&raw, Some(By::Lport), 2, &mut Names::empty());
        let keys: Vec<_> = arranged
            .iter()
            .map(|(_, k, h)| (k.clone(), h.count))
            .collect();
        assert_eq!(
            keys,
            vec![
                (KeyValue::Port(443), 9),
                (KeyValue::Port(80), 5),
                (KeyValue::Other, 1)
            ]
        );
        let mut out = Vec::new();
        printer::json::write_histogram(
            &mut out,
            metric::LIFETIME,
            &KeyValue::Port(443),
            &arranged[0].2,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "histogram");
        assert_eq!(v["metric"], "lifetime");
        assert_eq!(v["key"], 443);
        assert_eq!(v["buckets"][0]["ge_ns"], 8);
        assert_eq!(v["buckets"][0]["lt_ns"], 16);
        assert_eq!(v["buckets"][0]["count"], 9);
    }
}
