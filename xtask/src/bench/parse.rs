//! Reading what the tracers wrote: tcptrace's records and summaries,
//! tcpstates' lines.
use super::*;

/// The value of `"key":"value"` in a JSON line tcptrace wrote.
pub(super) fn json_str_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":\"");
    let start = line.find(&pattern)? + pattern.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// The numbers that start the comma/space-separated phrases of `text`.
pub(super) fn leading_numbers(text: &str) -> Vec<u64> {
    text.split([',', ':'])
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect()
}

impl Bench {
    /// R: the capture read back (`-r --all --json`) for the transitions and
    /// the losses it kept, the recorder's own summary for what it cost.
    pub(super) fn read_capture(
        &self,
        out_path: &Path,
        round: &mut Round,
    ) -> Result<BTreeMap<String, u64>> {
        let capture = rounds::capture_path(out_path);
        let replay = out_path.with_extension("replay");
        let out =
            File::create(&replay).with_context(|| format!("creating {}", replay.display()))?;
        let status = Command::new(&self.tracer)
            .args(["-r"])
            .arg(&capture)
            .args(["--all", "--json"])
            .stdout(out)
            .status()
            .context("reading the capture back")?;
        if !status.success() {
            bail!("tcptrace -r {} failed: {status}", capture.display());
        }
        let counts = self.read_tcptrace_json(&replay, round)?;
        if !self.keep {
            let _ = std::fs::remove_file(&replay);
        }
        let text = std::fs::read_to_string(out_path)?;
        let summary: Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "summary")
            .context("the recorder printed no summary")?;
        let unwritten = summary["records_unwritten"].as_u64().unwrap_or(0);
        round.other_losses += unwritten;
        if unwritten > 0 {
            round.notes.push(format!("{unwritten} records not written"));
        }
        let records = summary["records_written"].as_u64().unwrap_or(0);
        let bytes = std::fs::metadata(&capture).map(|m| m.len()).unwrap_or(0);
        round.bytes_per_record = Some(bytes as f64 / records.max(1) as f64);
        round.programs.clear();
        round.probe_runs = 0;
        round.probe_ns = 0;
        for p in summary["probe_stats"].as_array().into_iter().flatten() {
            round.probe_runs += p["runs"].as_u64().unwrap_or(0);
            round.probe_ns += p["run_time_ns"].as_u64().unwrap_or(0);
            round.programs.push(p.clone());
        }
        round.sampled_transitions = state_program_runs(&round.programs);
        Ok(counts)
    }

    /// tcptrace --json: transitions counted from the file, losses and probe
    /// run time from its summary record.
    pub(super) fn read_tcptrace_json(
        &self,
        path: &Path,
        round: &mut Round,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        let mut summary = None;
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for line in BufReader::with_capacity(1 << 20, file).lines() {
            let line = line?;
            if line.starts_with("{\"type\":\"transition\"") {
                // "old":"X" cannot occur inside a JSON string (its quotes
                // would be escaped), so a substring search is exact.
                let (Some(old), Some(new)) =
                    (json_str_field(&line, "old"), json_str_field(&line, "new"))
                else {
                    bail!("transition record without old/new: {line}");
                };
                *counts.entry(format!("{old}->{new}")).or_insert(0) += 1;
            } else if line.starts_with("{\"type\":\"histogram\"") {
                // `hist`: one record per histogram, cumulative at exit.
                let record: Value = serde_json::from_str(&line)?;
                let metric = record["metric"]
                    .as_str()
                    .context("histogram without metric")?;
                *counts.entry(format!("hist:{metric}")).or_insert(0) +=
                    record["count"].as_u64().unwrap_or(0);
            } else if line.contains("\"type\":\"summary\"") {
                summary = Some(serde_json::from_str::<Value>(&line)?);
            }
        }
        let summary = summary.context("tcptrace printed no summary record")?;
        let num = |key: &str| summary[key].as_u64().unwrap_or(0);
        round.ring_full = num("ring_reservation_failures");
        round.recursion_misses = num("recursion_misses");
        // Read failures, and TIME_WAIT entries lost with a hand-off the
        // kernel skipped (the probe sees the orphaned timewait socket).
        round.other_losses = num("read_failures") + num("timewait_entries_lost");
        let unseen = num("handoffs_unseen");
        if unseen > 0 {
            round.notes.push(format!(
                "{unseen} hand-offs the state program never ran for"
            ));
        }
        let events: u64 = counts
            .iter()
            .filter(|(name, _)| !name.starts_with("hist:"))
            .map(|(_, n)| n)
            .sum();
        if (summary.get("events").is_some() && num("events") != events)
            || num("emitted_by_probe") != events
        {
            round.notes.push(format!(
                "file has {events} transitions, summary says {} events, {} emitted by the probe",
                num("events"),
                num("emitted_by_probe")
            ));
        }
        for p in summary["probe_stats"].as_array().into_iter().flatten() {
            round.probe_runs += p["runs"].as_u64().unwrap_or(0);
            round.probe_ns += p["run_time_ns"].as_u64().unwrap_or(0);
            round.programs.push(p.clone());
        }
        let hook_misses = num("timewait_hook_misses");
        if hook_misses > 0 {
            round
                .notes
                .push(format!("timer hook skipped {hook_misses} times"));
        }
        round.sampled_transitions = state_program_runs(&round.programs);
        Ok(counts)
    }

    /// tcpstates: one line per transition (`... OLD -> NEW MS`) for every
    /// TCP socket on the machine; keep those on the workload's ports.
    /// Losses: its "lost N events on CPU #C" lines and the kernel's
    /// recursion-miss counter of its program.
    pub(super) fn read_tcpstates(
        &self,
        path: &Path,
        stderr: &[String],
        programs: &[(u64, u64, u64)],
        round: &mut Round,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        let mut unrelated = 0u64;
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        for line in BufReader::with_capacity(1 << 20, file).lines() {
            let line = line?;
            // SKADDR PID COMM LADDR LPORT RADDR RPORT OLD -> NEW MS, read
            // from the end (COMM may hold spaces).
            let words: Vec<&str> = line.split_whitespace().collect();
            let n = words.len();
            if n < 9 || words[n - 3] != "->" {
                continue;
            }
            let (Ok(lport), Ok(rport)) = (words[n - 7].parse::<u16>(), words[n - 5].parse::<u16>())
            else {
                continue;
            };
            if !self.in_ports(lport) && !self.in_ports(rport) {
                unrelated += 1;
                continue;
            }
            *counts
                .entry(format!("{}->{}", words[n - 4], words[n - 2]))
                .or_insert(0) += 1;
        }
        for line in stderr {
            if let Some(rest) = line.trim().strip_prefix("lost ") {
                round.other_losses += leading_numbers(rest).first().copied().unwrap_or(0);
            }
        }
        for &(runs, ns, misses) in programs {
            // Its one program is the state-change handler.
            round.sampled_transitions += runs;
            round.probe_runs += runs;
            round.probe_ns += ns;
            round.recursion_misses += misses;
            round
                .programs
                .push(json!({"runs": runs, "run_time_ns": ns, "recursion_misses": misses}));
        }
        if unrelated > 0 {
            round
                .notes
                .push(format!("{unrelated} transitions of other sockets ignored"));
        }
        Ok(counts)
    }
}
