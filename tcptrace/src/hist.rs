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
use tcptrace_common::{hist_by, HistKey, HistValue, ProbeConfig, AF_INET6, CONFIG_HISTOGRAMS};

pub use crate::snapshot::{metric_name, Histogram, KeyValue, METRICS};
use crate::{
    cli::{parse_seconds, Common},
    clock::Clock,
    decode::comm_bytes,
    error::UsageError,
    printer,
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

impl KeyValue {
    pub(crate) fn from_probe(key: &HistKey, by: Option<By>) -> Self {
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
