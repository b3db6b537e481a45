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
use clap::{Args, ValueEnum};
use serde_json::json;
use tcptrace_common::{
    hist_by, metric, HistKey, HistValue, ProbeConfig, AF_INET6, CONFIG_HISTOGRAMS, HIST_BUCKETS,
};

use crate::{
    cli::{parse_seconds, Common},
    clock::Clock,
    decode::comm_bytes,
    error::UsageError,
    printer,
    printer::human::duration_text,
    probe::Probe,
    session::{self, SessionOptions, View},
    summary::RunContext,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    Lport,
    Rport,
    Raddr,
    Comm,
    Pid,
}

impl By {
    fn probe_value(self) -> u32 {
        match self {
            By::Lport => hist_by::LPORT,
            By::Rport => hist_by::RPORT,
            By::Raddr => hist_by::RADDR,
            By::Comm => hist_by::COMM,
            By::Pid => hist_by::PID,
        }
    }
}

#[derive(Args, Debug)]
#[command(long_about = "\
Log2 histograms (bcc/bpftrace style) of connection lifetime and of the time
spent per state: handshake (SYN_SENT or SYN_RECV to ESTABLISHED),
ESTABLISHED, CLOSE_WAIT (how long applications take to close after the peer
did), FIN_WAIT2, LAST_ACK and TIME_WAIT (when the timewait hooks are
attached). Each comes with count, p50, p90, p99 and max; percentiles are
interpolated within their power-of-two bucket.

The kernel aggregates: no event is copied to userspace, whatever the
connection rate. Histograms are cumulative since start, printed every
--interval and at exit. A duration is counted when its state ends; a
lifetime when the connection's last socket is gone (after TIME_WAIT for the
side that closed first). Connections opened before tcptrace started add the
states they are seen to enter, never a lifetime.")]
pub struct HistArgs {
    /// One histogram per key: local or remote port, remote address, owner's
    /// command or pid (top keys by count; the rest are summed as "other").
    #[arg(long, value_enum)]
    pub by: Option<By>,

    /// How many keys to show per metric with --by.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Print the histograms every SECONDS (besides at exit).
    #[arg(short, long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub interval: Option<Duration>,

    /// Only these metrics (comma-separated): lifetime, handshake,
    /// established, close_wait, fin_wait2, last_ack, time_wait.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_metric)]
    pub metric: Vec<u8>,

    #[command(flatten)]
    pub common: Common,

    /// Most keys the kernel keeps before counting new ones as "other".
    #[arg(long, value_name = "N", default_value_t = crate::cli::DEFAULT_HISTOGRAM_KEYS,
          value_parser = clap::value_parser!(u32).range(16..=65536))]
    pub max_keys: u32,
}

pub const METRICS: [(u8, &str); metric::COUNT] = [
    (metric::LIFETIME, "lifetime"),
    (metric::HANDSHAKE, "handshake"),
    (metric::ESTABLISHED, "established"),
    (metric::CLOSE_WAIT, "close_wait"),
    (metric::FIN_WAIT2, "fin_wait2"),
    (metric::LAST_ACK, "last_ack"),
    (metric::TIME_WAIT, "time_wait"),
];

fn parse_metric(text: &str) -> Result<u8, UsageError> {
    METRICS
        .iter()
        .find(|(_, name)| *name == text.trim())
        .map(|&(m, _)| m)
        .ok_or_else(|| {
            UsageError(format!(
                "unknown metric '{text}' (one of: {})",
                METRICS.map(|(_, n)| n).join(", ")
            ))
        })
}

pub fn metric_name(m: u8) -> &'static str {
    METRICS
        .iter()
        .find(|&&(id, _)| id == m)
        .map_or("unknown", |&(_, n)| n)
}

/// What a histogram's key is, for display.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    All,
    Port(u16),
    Addr(IpAddr),
    Comm(String),
    Pid(u32),
    Other,
}

impl KeyValue {
    fn from_probe(key: &HistKey, by: Option<By>) -> Self {
        if key.other != 0 {
            return KeyValue::Other;
        }
        let v = &key.value;
        match by {
            None => KeyValue::All,
            Some(By::Lport | By::Rport) => KeyValue::Port(u16::from_ne_bytes([v[0], v[1]])),
            Some(By::Pid) => KeyValue::Pid(u32::from_ne_bytes([v[0], v[1], v[2], v[3]])),
            Some(By::Comm) => KeyValue::Comm(String::from_utf8_lossy(comm_bytes(v)).into_owned()),
            Some(By::Raddr) => KeyValue::Addr(if u16::from(key.family) == AF_INET6 {
                IpAddr::V6(Ipv6Addr::from(*v))
            } else {
                IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))
            }),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            KeyValue::All => serde_json::Value::Null,
            KeyValue::Port(p) => json!(p),
            KeyValue::Pid(p) => json!(p),
            KeyValue::Addr(a) => json!(a.to_string()),
            KeyValue::Comm(c) => json!(c),
            KeyValue::Other => json!("other"),
        }
    }

    fn label(&self) -> String {
        match self {
            KeyValue::All => String::new(),
            KeyValue::Port(p) => p.to_string(),
            KeyValue::Pid(p) => p.to_string(),
            KeyValue::Addr(a) => a.to_string(),
            KeyValue::Comm(c) => c.clone(),
            KeyValue::Other => "other".into(),
        }
    }
}

/// One histogram, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub count: u64,
    pub max_ns: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

impl Histogram {
    fn empty() -> Self {
        Histogram {
            count: 0,
            max_ns: 0,
            buckets: [0; HIST_BUCKETS],
        }
    }

    fn add(&mut self, v: &HistValue) {
        self.count += v.count;
        self.max_ns = self.max_ns.max(v.max_ns);
        for (total, n) in self.buckets.iter_mut().zip(v.buckets.iter()) {
            *total += n;
        }
    }

    fn merge(&mut self, other: &Histogram) {
        self.count += other.count;
        self.max_ns = self.max_ns.max(other.max_ns);
        for (total, n) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *total += n;
        }
    }

    /// Range of bucket `i`: [lo, hi) in ns.
    pub fn bucket_range(i: usize) -> (u64, u64) {
        let lo = if i == 0 { 0 } else { 1u64 << i };
        let hi = if i + 1 >= 64 {
            u64::MAX
        } else {
            1u64 << (i + 1)
        };
        (lo, hi)
    }

    /// The q-quantile (0 < q <= 1), interpolated linearly inside its
    /// bucket and never above the largest value seen.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = (q * self.count as f64).ceil().max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let (lo, hi) = Self::bucket_range(i);
                let hi = hi.min(self.max_ns.saturating_add(1)).max(lo);
                let within = (rank - seen as f64) / n as f64;
                let value = lo as f64 + within * (hi - lo) as f64;
                // Inside the bucket: [lo, hi).
                return (value as u64).min(hi.saturating_sub(1)).min(self.max_ns);
            }
            seen += n;
        }
        self.max_ns
    }
}

/// The histograms to print: per metric, the top keys and "other".
pub fn arrange(
    raw: &[(HistKey, HistValue)],
    by: Option<By>,
    top: usize,
) -> Vec<(u8, KeyValue, Histogram)> {
    let mut per_key: HashMap<(u8, KeyValue), Histogram> = HashMap::new();
    for (key, value) in raw {
        per_key
            .entry((key.metric, KeyValue::from_probe(key, by)))
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

pub fn write_json_histogram(out: &mut Vec<u8>, m: u8, key: &KeyValue, h: &Histogram) {
    let buckets: Vec<_> = h
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(i, &n)| {
            let (lo, hi) = Histogram::bucket_range(i);
            json!({"ge_ns": lo, "lt_ns": hi, "count": n})
        })
        .collect();
    let record = json!({
        "type": "histogram",
        "metric": metric_name(m),
        "key": key.json(),
        "count": h.count,
        "p50_ns": h.quantile(0.50),
        "p90_ns": h.quantile(0.90),
        "p99_ns": h.quantile(0.99),
        "max_ns": h.max_ns,
        "buckets": buckets,
    });
    let _ = serde_json::to_writer(&mut *out, &record);
    out.push(b'\n');
}

/// bcc-style: one line per non-empty bucket range with an ASCII bar.
pub fn write_human_histogram(out: &mut Vec<u8>, m: u8, key: &KeyValue, h: &Histogram) {
    let label = match key {
        KeyValue::All => metric_name(m).to_string(),
        key => format!("{} [{}]", metric_name(m), key.label()),
    };
    let _ = writeln!(
        out,
        "@{label}: count {}, p50 {}, p90 {}, p99 {}, max {}",
        h.count,
        duration_text(h.quantile(0.50)),
        duration_text(h.quantile(0.90)),
        duration_text(h.quantile(0.99)),
        duration_text(h.max_ns)
    );
    let first = h.buckets.iter().position(|&n| n > 0).unwrap_or(0);
    let last = h.buckets.iter().rposition(|&n| n > 0).unwrap_or(0);
    let peak = h.buckets.iter().copied().max().unwrap_or(1).max(1);
    for i in first..=last {
        let (lo, hi) = Histogram::bucket_range(i);
        let n = h.buckets[i];
        let bar = (n * 40).div_ceil(peak) as usize;
        let range = format!("[{}, {})", duration_text(lo), duration_text(hi));
        let _ = writeln!(
            out,
            "  {range:<22} {n:>9} |{:<40}|",
            "@".repeat(bar.min(40))
        );
    }
    out.push(b'\n');
}

struct HistView {
    json: bool,
    by: Option<By>,
    top: usize,
    metrics: Vec<u8>,
    interval: Option<Duration>,
    last: Vec<(HistKey, HistValue)>,
    overflow: u64,
}

impl HistView {
    fn print(&self, out: &mut Vec<u8>, clock: &Clock) {
        if !self.json {
            let mut time = Vec::new();
            clock.write_local_time(&mut time, Clock::now_ktime_ns());
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&time));
        }
        let arranged = arrange(&self.last, self.by, self.top);
        let wanted = |m: u8| self.metrics.is_empty() || self.metrics.contains(&m);
        let mut any = false;
        for (m, key, h) in arranged.iter().filter(|(m, _, _)| wanted(*m)) {
            any = true;
            if self.json {
                write_json_histogram(out, *m, key, h);
            } else {
                write_human_histogram(out, *m, key, h);
            }
        }
        if !any && !self.json {
            out.extend_from_slice(b"(no finished states yet)\n\n");
        }
    }
}

impl View for HistView {
    fn record(&mut self, _data: &[u8], _clock: &Clock, _out: &mut Vec<u8>) {
        // The probe writes nothing to the ring in this mode.
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

pub async fn run(args: HistArgs) -> Result<()> {
    args.common.filters.check_pid()?;
    let mut config = ProbeConfig::empty();
    config.flags |= CONFIG_HISTOGRAMS;
    config.hist_by = args.by.map_or(hist_by::NONE, By::probe_value);
    args.common.filters.apply(&mut config);
    let mut options = args.common.probe.options(config);
    options.histogram_keys = args.max_keys;
    let probe = session::start_probe(&options)?;
    let mut view = HistView {
        json: args.common.json,
        by: args.by,
        top: args.top.max(1),
        metrics: args.metric.clone(),
        interval: args.interval,
        last: Vec::new(),
        overflow: 0,
    };
    session::run(
        probe,
        &mut view,
        SessionOptions::new(args.common.json, args.common.duration, Some(
                "tcptrace: aggregating TCP state durations in the kernel (Ctrl-C to print and stop)"
                    .into(),
            )),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let arranged = arrange(&raw, Some(By::Lport), 2);
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
        write_json_histogram(
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
