//! Medians over rounds and the printed and JSON summaries.
use super::*;

/// A configuration's letter, primed when the `--against` binary ran it.
pub(super) fn round_name(config: Config, against: bool) -> String {
    format!("{}{}", config.letter(), if against { "'" } else { "" })
}

pub(super) fn round_line(r: &Round) -> String {
    let config = r.config.unwrap();
    let mut line = format!(
        "round {} {:<2} {:<26} {:>7.0} conn/s ({} connections, {} failed)",
        r.number,
        round_name(config, r.against),
        config.label(),
        r.rate,
        r.connections,
        r.failed
    );
    if config != Config::A {
        line += &format!(
            "; {}/{} delivered, {} outside, {} ring full, {} recursion misses, {} other lost, \
             {} unexplained; cpu {:.2}+{:.2} s, rss {:.1} MiB",
            r.delivered,
            r.expected,
            r.outside_total(),
            r.ring_full,
            r.recursion_misses,
            r.other_losses,
            r.unexplained(),
            r.user_s,
            r.sys_s,
            r.peak_rss_kb as f64 / 1024.0
        );
        if !r.missing.is_empty() {
            line += &format!("; missing {:?}", r.missing);
        }
    }
    for note in &r.notes {
        line += &format!("; {note}");
    }
    line
}

/// Medians per configuration (and per binary, with `--against`).
pub(super) struct Summary<'a> {
    pub(super) rows: Vec<(Config, bool, Vec<&'a Round>)>,
}

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

impl<'a> Summary<'a> {
    pub(super) fn new(configs: &[Config], against: bool, results: &'a [Round]) -> Summary<'a> {
        let mut order: Vec<Config> = configs.to_vec();
        order.sort();
        order.dedup();
        let rows = order
            .into_iter()
            .flat_map(|c| {
                c.binaries(against).iter().map(move |&a| {
                    let rounds = results
                        .iter()
                        .filter(|r| r.config == Some(c) && r.against == a)
                        .collect();
                    (c, a, rounds)
                })
            })
            .collect();
        Summary { rows }
    }

    pub(super) fn med(rounds: &[&Round], f: impl Fn(&Round) -> f64) -> f64 {
        median(rounds.iter().map(|r| f(r)).collect())
    }

    pub(super) fn untraced_rate(&self) -> Option<f64> {
        self.rows
            .iter()
            .find(|(c, _, rounds)| *c == Config::A && !rounds.is_empty())
            .map(|(_, _, rounds)| Self::med(rounds, |r| r.rate))
    }

    pub(super) fn to_json(&self) -> Value {
        let base = self.untraced_rate();
        let rows: Vec<Value> = self
            .rows
            .iter()
            .filter(|(_, _, rounds)| !rounds.is_empty())
            .map(|(config, against, rounds)| {
                let m = |f: &dyn Fn(&Round) -> f64| Self::med(rounds, f);
                let rate = m(&|r| r.rate);
                let mut v = json!({
                    "config": round_name(*config, *against),
                    "label": config.label(),
                    "against": against,
                    "rounds": rounds.len(),
                    "connections_per_s": rate,
                    "ratio_to_untraced": base.map(|b| rate / b),
                });
                if *config != Config::A {
                    let extra = json!({
                        "expected": m(&|r| r.expected as f64),
                        "reported": m(&|r| r.delivered as f64),
                        "outside_table": m(&|r| r.outside_total() as f64),
                        "ring_reservation_failures": m(&|r| r.ring_full as f64),
                        "recursion_misses": m(&|r| r.recursion_misses as f64),
                        "other_counted_losses": m(&|r| r.other_losses as f64),
                        "unexplained": m(&|r| r.unexplained() as f64),
                        "unexplained_all_rounds": rounds.iter().map(|r| r.unexplained()).sum::<u64>(),
                        "delivered_pct": m(&|r| r.delivered_pct()),
                        "cpu_us_per_event": m(&|r| r.cpu_us_per_event()),
                        "reader_us_per_event": m(&|r| r.reader_us_per_event()),
                        "probe_ns_per_transition": m(&|r| r.probe_ns_per_transition()),
                        "peak_rss_kb": m(&|r| r.peak_rss_kb as f64),
                    });
                    if *config == Config::R {
                        v["bytes_per_record"] = json!(m(&|r| r.bytes_per_record.unwrap_or(f64::NAN)));
                    }
                    if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
                        a.extend(b);
                    }
                }
                v
            })
            .collect();
        json!(rows)
    }

    pub(super) fn print(&self, tcpstates: &std::result::Result<PathBuf, String>) {
        let base = self.untraced_rate();
        println!();
        println!(
            "{:<27} {:>8} {:>6} {:>10} {:>10} {:>7} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7}",
            "median of rounds",
            "conn/s",
            "vs A",
            "expected",
            "reported",
            "outside",
            "ring",
            "recur",
            "UNEXPL",
            "deliv %",
            "cpu/ev",
            "rdr/ev",
            "probe",
            "RSS"
        );
        println!(
            "{:<27} {:>8} {:>6} {:>10} {:>10} {:>7} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>7} {:>7}",
            "", "", "", "", "", "", "full", "miss", "loss", "", "us", "us", "ns/tr", "MiB"
        );
        for (config, against, rounds) in &self.rows {
            let name = format!("{:<2} {}", round_name(*config, *against), config.label());
            if rounds.is_empty() {
                let why = match (config, tcpstates) {
                    (Config::D, Err(why)) => format!("unavailable: {why}"),
                    _ => "not run".into(),
                };
                println!("{name:<27} {why}");
                continue;
            }
            let m = |f: &dyn Fn(&Round) -> f64| Self::med(rounds, f);
            let rate = m(&|r| r.rate);
            let ratio = match base {
                Some(b) => format!("{:.0}%", 100.0 * rate / b),
                None => "-".into(),
            };
            if *config == Config::A {
                println!("{name:<27} {rate:>8.0} {ratio:>6}");
                continue;
            }
            println!(
                "{name:<27} {rate:>8.0} {ratio:>6} {:>10.0} {:>10.0} {:>7.0} {:>6.0} {:>6.0} {:>7.0} {:>8.3} {:>8.3} {:>8.3} {:>7.0} {:>7.1}",
                m(&|r| r.expected as f64),
                m(&|r| r.delivered as f64),
                m(&|r| r.outside_total() as f64),
                m(&|r| r.ring_full as f64),
                m(&|r| r.recursion_misses as f64),
                m(&|r| r.unexplained() as f64),
                m(&|r| r.delivered_pct()),
                m(&|r| r.cpu_us_per_event()),
                m(&|r| r.reader_us_per_event()),
                m(&|r| r.probe_ns_per_transition()),
                m(&|r| r.peak_rss_kb as f64) / 1024.0,
            );
        }
        println!();
        for (config, against, rounds) in self
            .rows
            .iter()
            .filter(|(c, _, r)| *c != Config::A && !r.is_empty())
        {
            let unexplained: u64 = rounds.iter().map(|r| r.unexplained()).sum();
            let expected: u64 = rounds.iter().map(|r| r.expected).sum();
            let counted: u64 = rounds.iter().map(|r| r.counted_losses()).sum();
            let made: u64 = rounds.iter().map(|r| r.workload_transitions).sum();
            println!(
                "{}: over {} round(s), {unexplained} of {expected} expected transitions lost \
                 unexplained, {counted} counted as lost ({:.2} per 100,000 of the workload's \
                 {made} transitions)",
                round_name(*config, *against),
                rounds.len(),
                1e5 * counted as f64 / made.max(1) as f64
            );
        }
        for (_, against, rounds) in self
            .rows
            .iter()
            .filter(|(c, _, r)| *c == Config::R && !r.is_empty())
        {
            let bytes = Self::med(rounds, |r| r.bytes_per_record.unwrap_or(f64::NAN));
            println!(
                "{}: {bytes:.1} bytes per record on disk (median)",
                round_name(Config::R, *against)
            );
        }
        println!(
            "reported: records matching the expected table; outside: other records; cpu/ev: \
             tracer user+sys CPU per record (rusage: tick-sampled, charged softirq work included); rdr/ev: run time of the thread that drains the ring per record (schedstat, exact); probe ns/tr: BPF run time (kernel stats, all the \
             tracer's programs) per transition, kernel stats sampled over the middle third of \
             each round; RSS: peak (VmHWM)"
        );
    }
}
