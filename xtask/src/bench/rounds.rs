//! One round of the bench: its namespace, tracer and churn, and what it
//! measured (`Round`, `Idle`).
use super::*;

/// Everything measured in one round.
#[derive(Debug, Default)]
pub(super) struct Round {
    pub(super) config: Option<Config>,
    /// Run by the `--against` binary.
    pub(super) against: bool,
    pub(super) number: usize,
    pub(super) connections: u64,
    pub(super) failed: u64,
    pub(super) rate: f64,
    /// Transitions the workload made (all of them, whatever the view shows).
    pub(super) workload_transitions: u64,
    pub(super) expected: u64,
    /// Records that match the table, counted up to the expected number.
    pub(super) delivered: u64,
    /// Records beyond or outside the table, by transition.
    pub(super) outside: BTreeMap<String, u64>,
    /// Expected transitions with no record, by transition.
    pub(super) missing: BTreeMap<String, u64>,
    pub(super) ring_full: u64,
    pub(super) recursion_misses: u64,
    /// Other counted losses (tcptrace's read failures, tcpstates' perf
    /// buffer losses).
    pub(super) other_losses: u64,
    pub(super) user_s: f64,
    pub(super) sys_s: f64,
    /// The ring-reading thread's run time while tracing (schedstat), ns.
    pub(super) reader_ns: u64,
    pub(super) voluntary_switches: u64,
    pub(super) peak_rss_kb: u64,
    pub(super) probe_runs: u64,
    pub(super) probe_ns: u64,
    /// Runs of the state-change program while statistics were on: the
    /// machine's transitions in the sample.
    pub(super) sampled_transitions: u64,
    pub(super) programs: Vec<Value>,
    pub(super) timewait_overflow: u64,
    /// R: bytes in the capture file per record it holds.
    pub(super) bytes_per_record: Option<f64>,
    pub(super) notes: Vec<String>,
}

impl Round {
    pub(super) fn counted_losses(&self) -> u64 {
        self.ring_full + self.recursion_misses + self.other_losses
    }

    /// Expected transitions neither delivered nor counted as lost.
    pub(super) fn unexplained(&self) -> u64 {
        (self.expected - self.delivered).saturating_sub(self.counted_losses())
    }

    pub(super) fn delivered_pct(&self) -> f64 {
        100.0 * self.delivered as f64 / self.expected.max(1) as f64
    }

    pub(super) fn outside_total(&self) -> u64 {
        self.outside.values().sum()
    }

    /// Tracer CPU (user + system) per reported record, in microseconds.
    pub(super) fn cpu_us_per_event(&self) -> f64 {
        let reported = self.delivered + self.outside_total();
        1e6 * (self.user_s + self.sys_s) / reported.max(1) as f64
    }

    /// The ring-reading thread's run time per reported record, in
    /// microseconds (for `record`, the writer thread's page-cache copies
    /// are not in it; they are in `cpu_us_per_event`).
    pub(super) fn reader_us_per_event(&self) -> f64 {
        let reported = self.delivered + self.outside_total();
        self.reader_ns as f64 / 1e3 / reported.max(1) as f64
    }

    /// Probe run time (all the tracer's programs) per transition, in
    /// nanoseconds, over the statistics sample.
    pub(super) fn probe_ns_per_transition(&self) -> f64 {
        self.probe_ns as f64 / self.sampled_transitions.max(1) as f64
    }

    pub(super) fn to_json(&self) -> Value {
        let config = self.config.expect("set");
        let mut v = json!({
            "config": round_name(config, self.against),
            "label": config.label(),
            "against": self.against,
            "round": self.number,
            "connections": self.connections,
            "failed": self.failed,
            "connections_per_s": self.rate,
        });
        if config != Config::A {
            let extra = json!({
                "workload_transitions": self.workload_transitions,
                "expected": self.expected,
                "delivered": self.delivered,
                "delivered_pct": self.delivered_pct(),
                "outside_table": self.outside,
                "missing": self.missing,
                "ring_reservation_failures": self.ring_full,
                "recursion_misses": self.recursion_misses,
                "other_counted_losses": self.other_losses,
                "unexplained": self.unexplained(),
                "user_s": self.user_s,
                "sys_s": self.sys_s,
                "cpu_us_per_event": self.cpu_us_per_event(),
                "reader_us_per_event": self.reader_us_per_event(),
                "voluntary_context_switches": self.voluntary_switches,
                "peak_rss_kb": self.peak_rss_kb,
                "probe_runs": self.probe_runs,
                "probe_run_time_ns": self.probe_ns,
                "sampled_transitions": self.sampled_transitions,
                "probe_ns_per_transition": self.probe_ns_per_transition(),
                "programs": self.programs,
            });
            if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
                a.extend(b);
            }
        }
        v["timewait_overflow"] = json!(self.timewait_overflow);
        if let Some(bytes) = self.bytes_per_record {
            v["bytes_per_record"] = json!(bytes);
        }
        v["notes"] = json!(self.notes);
        v
    }
}

pub(super) struct Idle {
    pub(super) seconds: u64,
    pub(super) voluntary_switches: u64,
    pub(super) involuntary_switches: u64,
    pub(super) cpu_ticks: u64,
    pub(super) ticks_per_s: u64,
    pub(super) transitions: u64,
    pub(super) peak_rss_kb: u64,
}

impl Idle {
    pub(super) fn cpu_ms(&self) -> f64 {
        1000.0 * self.cpu_ticks as f64 / self.ticks_per_s as f64
    }

    pub(super) fn line(&self) -> String {
        format!(
            "idle: tcptrace --all --json, {} s with no traffic on its ports: {} voluntary \
             context switches ({:.1}/s), {} involuntary, CPU {:.0} ms (clock tick {:.0} ms), \
             {} records, peak RSS {:.1} MiB",
            self.seconds,
            self.voluntary_switches,
            self.voluntary_switches as f64 / self.seconds as f64,
            self.involuntary_switches,
            self.cpu_ms(),
            1000.0 / self.ticks_per_s as f64,
            self.transitions,
            self.peak_rss_kb as f64 / 1024.0
        )
    }

    pub(super) fn to_json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "voluntary_context_switches": self.voluntary_switches,
            "involuntary_context_switches": self.involuntary_switches,
            "cpu_ms": self.cpu_ms(),
            "records": self.transitions,
            "peak_rss_kb": self.peak_rss_kb,
        })
    }
}

impl Bench {
    pub(super) fn port_range(&self) -> String {
        format!("{}-{}", self.base_port, self.base_port + self.ports - 1)
    }

    pub(super) fn in_ports(&self, port: u16) -> bool {
        (self.base_port..self.base_port + self.ports).contains(&port)
    }

    pub(super) fn round(&mut self, config: Config, number: usize, against: bool) -> Result<Round> {
        let netns = Netns::new(number, config)?;
        let out_path = self.out_dir.join(format!(
            "round-{number}-{}{}.out",
            config.letter(),
            if against { "-against" } else { "" }
        ));
        let tracer_path = match (&self.against, against) {
            (Some(path), true) => path.clone(),
            _ => self.tracer.clone(),
        };
        let mut round = Round {
            config: Some(config),
            against,
            number,
            ..Default::default()
        };
        let mut tracer = match config {
            Config::A => None,
            // The views' events and summaries, read back from their JSON:
            // the bench parses the tracer's machine-readable output only.
            Config::B | Config::C | Config::E | Config::H | Config::F | Config::G => {
                let args: &[&str] = match config {
                    Config::B => &["--all", "--json"],
                    Config::C => &["--json"],
                    Config::E => &["--all", "--json", "--no-timewait-hook"],
                    Config::H => &["hist", "--json"],
                    Config::G => &["--floor-hooks", "--json"],
                    _ => &["--floor-probe", "--json"],
                };
                let range = self.port_range();
                let args = [args, &["--port", &range]].concat();
                Some(Tracer::tcptrace(&tracer_path, &args, &out_path)?)
            }
            Config::D => {
                let path = self.tcpstates.clone().map_err(anyhow::Error::msg)?;
                Some(Tracer::tcpstates(&path, &out_path)?)
            }
            // Its stdout (the summary, as JSON) goes to `out_path`.
            Config::R => Some(Tracer::tcptrace(
                &tracer_path,
                &[
                    "record",
                    "-w",
                    capture_path(&out_path).to_str().context("a UTF-8 path")?,
                    "--json",
                    "--port",
                    &self.port_range(),
                ],
                &out_path,
            )?),
        };

        let stats = tracer
            .is_some()
            .then(|| StatsWindow::start(Duration::from_secs_f64(self.seconds)));
        let out = netns
            .command(&self.peer)
            .args(["churn", "--seconds", &self.seconds.to_string()])
            .args(["--clients", &self.clients.to_string()])
            .args(["--ports", &self.ports.to_string()])
            .args(["--base-port", &self.base_port.to_string()])
            .args(["--closer", &self.closer, "--family", &self.family])
            .output()
            .context("running tcptrace-peer churn")?;
        if let Some(stats) = stats {
            stats.join()?;
        }
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "tcptrace-peer churn failed ({}): {report}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let field = |name: &str| -> Result<f64> {
            report
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .with_context(|| format!("no `{name}` line in the generator's report: {report}"))
        };
        round.connections = field("connections ")? as u64;
        round.failed = field("failed ")? as u64;
        round.rate = field("rate ")?;
        let served = field("served ")? as u64;
        if served != round.connections {
            round.notes.push(format!(
                "servers closed {served} of {} connections",
                round.connections
            ));
        }
        round.workload_transitions =
            expected_count(ALL_PER_CONNECTION, ALL_PER_PORT, &round, self.ports)
                .values()
                .sum();
        round.timewait_overflow = netns.netstat("TCPTimeWaitOverflow").unwrap_or(0);
        for (file, prefix, name) in [
            ("snmp", "Tcp", "RetransSegs"),
            ("netstat", "TcpExt", "TCPTimeouts"),
            ("netstat", "TcpExt", "TCPBacklogDrop"),
            ("netstat", "TcpExt", "ListenDrops"),
            ("netstat", "TcpExt", "TCPAbortOnClose"),
        ] {
            if let Some(n @ 1..) = netns.counter(file, prefix, name) {
                round.notes.push(format!("{name} {n}"));
            }
        }
        if let Some(n @ 1..) = netns.tcp_in_use() {
            round.notes.push(format!("{n} TCP sockets still open"));
        }
        if round.timewait_overflow > 0 {
            round.notes.push(format!(
                "{} timewait sockets not created (table full): hand-offs missing",
                round.timewait_overflow
            ));
        }

        if let Some(tracer) = tracer.as_mut() {
            tracer.settle();
            let programs = if config == Config::D {
                tracer.bpf_programs()
            } else {
                Vec::new()
            };
            let exit = tracer.stop()?;
            round.user_s = exit.user_s - tracer.ready_cpu.0;
            round.sys_s = exit.sys_s - tracer.ready_cpu.1;
            round.peak_rss_kb = exit.maxrss_kb;
            round.reader_ns = exit.reader_ns;
            round.voluntary_switches = exit.nvcsw;
            if !exit.success {
                bail!(
                    "the tracer exited with status {}: {}",
                    exit.status,
                    tracer.stderr_lines.join("\n")
                );
            }
            let counts = match config {
                Config::B | Config::C | Config::E | Config::H | Config::F | Config::G => {
                    self.read_tcptrace_json(&out_path, &mut round)?
                }
                Config::D => {
                    self.read_tcpstates(&out_path, &tracer.stderr_lines, &programs, &mut round)?
                }
                Config::R => self.read_capture(&out_path, &mut round)?,
                Config::A => unreachable!(),
            };
            let (per_connection, per_port) = config.expected();
            let expected = expected_count(&per_connection, per_port, &round, self.ports);
            round.expected = expected.values().sum();
            for (name, &n) in &counts {
                let want = expected.get(name.as_str()).copied().unwrap_or(0);
                round.delivered += n.min(want);
                if n > want {
                    round.outside.insert(name.clone(), n - want);
                }
            }
            for (name, &want) in &expected {
                let got = counts.get(*name).copied().unwrap_or(0);
                if got < want {
                    round.missing.insert(name.to_string(), want - got);
                }
            }
            if !self.keep {
                let _ = std::fs::remove_file(&out_path);
                let _ = std::fs::remove_file(capture_path(&out_path));
            }
        }
        drop(netns); // deletes the namespace
        self.wait_for_timewait_purge()?;
        Ok(round)
    }

    /// Waits until the timewait sockets of deleted namespaces are freed (the
    /// kernel purges them when the namespace goes), back to the level seen
    /// before the first round, or until the count stops falling (other
    /// namespaces on the machine may hold some).
    pub(super) fn wait_for_timewait_purge(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = u64::MAX;
        let mut steady_since = Instant::now();
        loop {
            let now = timewait_sockets()?;
            if now <= self.tw_baseline + 1000 {
                break;
            }
            if now < last {
                last = now;
                steady_since = Instant::now();
            } else if steady_since.elapsed() > Duration::from_secs(2) {
                break;
            }
            if Instant::now() > deadline {
                progress(&format!(
                    "{now} timewait sockets still allocated after 120 s"
                ));
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        // Let the namespace clean-up's workers finish.
        thread::sleep(Duration::from_millis(500));
        Ok(())
    }

    /// tcptrace --all --json with nothing to report: wake-ups and CPU.
    pub(super) fn idle(&mut self, seconds: u64) -> Result<Idle> {
        let out_path = self.out_dir.join("idle.out");
        let mut tracer = Tracer::tcptrace(
            &self.tracer,
            &["--all", "--json", "--port", &self.port_range()],
            &out_path,
        )?;
        thread::sleep(Duration::from_secs(1));
        let before = task_counters(tracer.pid)?;
        thread::sleep(Duration::from_secs(seconds));
        let after = task_counters(tracer.pid)?;
        let exit = tracer.stop()?;
        let lines = std::fs::read_to_string(&out_path)
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains("\"type\":\"transition\""))
                    .count()
            })
            .unwrap_or(0);
        if !self.keep {
            let _ = std::fs::remove_file(&out_path);
        }
        let _ = &self.root;
        Ok(Idle {
            seconds,
            voluntary_switches: after.voluntary - before.voluntary,
            involuntary_switches: after.involuntary - before.involuntary,
            cpu_ticks: after.cpu_ticks - before.cpu_ticks,
            ticks_per_s: clock_ticks(),
            transitions: lines as u64,
            peak_rss_kb: exit.maxrss_kb,
        })
    }
}

/// Where R's capture goes, beside its summary.
pub(super) fn capture_path(out_path: &Path) -> PathBuf {
    out_path.with_extension("tcpt")
}
