//! Reading a capture in place of the live probe (`-r FILE`): the same
//! views get the same records, filtered afterwards as the kernel would
//! have filtered them, within an optional time window.
use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Result};
use tcptrace_common::ProbeConfig;

use crate::{
    capture::{
        reader::{read_capture, Reader, ReplayTally, Side},
        Metadata,
    },
    cgroups::{CgroupFilter, Names},
    clock::Clock,
    decode::Record,
    error::note,
    filter,
    printer::Sink,
    session::View,
    summary::RunContext,
};

/// A bound of `--since` / `--until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeBound {
    /// A wall-clock time.
    At(SystemTime),
    /// This long after the capture began.
    AfterStart(Duration),
}

/// What `-r` reads and keeps.
#[derive(Clone)]
pub struct ReplayOptions {
    /// One capture's files (a rotated capture's in any order).
    pub files: Vec<PathBuf>,
    pub since: Option<TimeBound>,
    pub until: Option<TimeBound>,
    /// The filters the live command would have given the probe.
    pub filter: ProbeConfig,
    /// `--cgroup`, matched against the paths the capture names.
    pub cgroup: Option<CgroupFilter>,
}

/// Opens every file and puts them in capture order (start, then index).
pub fn open_all(files: &[PathBuf]) -> Result<Vec<Reader>> {
    let mut readers = Vec::new();
    for path in files {
        readers.push(Reader::open(path)?);
    }
    readers.sort_by_key(|r| (r.metadata.started_ktime_ns, r.metadata.file_index));
    if let Some(first) = readers.first() {
        if let Some(other) = readers.iter().find(|r| {
            r.metadata.boot_id != first.metadata.boot_id
                || r.metadata.started_ktime_ns != first.metadata.started_ktime_ns
        }) {
            bail!(
                "{} and {} are not files of one capture (read them one at a time)",
                first.path().display(),
                other.path().display()
            );
        }
    }
    Ok(readers)
}

/// The window as kernel times of the capture.
fn window(options: &ReplayOptions, metadata: &Metadata) -> (u64, u64) {
    window_of(options.since, options.until, metadata)
}

/// `--since` and `--until` as kernel times of the capture (0 and
/// `u64::MAX` when not given).
pub(crate) fn window_of(
    since: Option<TimeBound>,
    until: Option<TimeBound>,
    metadata: &Metadata,
) -> (u64, u64) {
    let to_ktime = |bound: TimeBound| match bound {
        TimeBound::AfterStart(d) => metadata
            .started_ktime_ns
            .saturating_add(d.as_nanos() as u64),
        TimeBound::At(t) => {
            let unix_ns = t
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128);
            (unix_ns - metadata.realtime_minus_monotonic_ns as i128).max(0) as u64
        }
    };
    (since.map_or(0, to_ktime), until.map_or(u64::MAX, to_ktime))
}

/// A capture opened for a view: its files are checked before the view
/// prints anything.
pub struct Replay {
    options: ReplayOptions,
    readers: Vec<Reader>,
}

impl Replay {
    pub fn open(options: ReplayOptions) -> Result<Replay> {
        let readers = open_all(&options.files)?;
        Ok(Replay { options, readers })
    }

    /// Feeds `view` every record of the capture the options keep, then
    /// lets it finish with a summary made of the capture's own counters.
    pub fn run(self, view: &mut impl View) -> Result<()> {
        run(&self.options, self.readers, view)
    }
}

fn run(options: &ReplayOptions, mut readers: Vec<Reader>, view: &mut impl View) -> Result<()> {
    let Some(first) = readers.first() else {
        bail!("no capture file given");
    };
    let metadata = first.metadata.clone();
    let clock = Clock::with_offset(metadata.realtime_minus_monotonic_ns as i128);
    let (since, until) = window(options, &metadata);
    let mut sink = Sink::stdout(1 << 20)?;
    let mut tally = ReplayTally {
        metadata,
        ..ReplayTally::default()
    };
    // The records and the cgroups' names both go to the view, in the
    // capture's order (one closure at a time).
    let view = std::cell::RefCell::new(view);
    let names = std::cell::RefCell::new(Names::empty());
    for reader in &mut readers {
        read_capture(
            reader,
            &mut tally,
            |data, record| {
                let (ktime, cgroup) = match record {
                    Record::Transition(t) => (t.ktime_ns, t.cgroup),
                    Record::Connection(c) => (c.event.ktime_ns, c.cgroup()),
                };
                let in_cgroup = || match &options.cgroup {
                    None => true,
                    Some(f) => names
                        .borrow()
                        .get(cgroup)
                        .is_some_and(|c| f.contains(&c.path)),
                };
                if (since..=until).contains(&ktime)
                    && filter::keeps(&options.filter, record)
                    && in_cgroup()
                {
                    view.borrow_mut().record(data, &clock, &mut sink.buf);
                }
                if sink.buf.len() >= 1 << 20 {
                    sink.flush()?;
                }
                Ok(())
            },
            |side| {
                if let Side::Cgroups(table) = side {
                    names.borrow_mut().learn(table);
                    view.borrow_mut().learn_cgroups(table);
                }
            },
        )?;
        sink.flush()?;
    }
    let view = view.into_inner();
    if let Some(damage) = &tally.damage {
        note!("tcptrace: warning: {damage}; every record before it was read");
    } else if tally.summary.is_none() {
        let last = readers.last().map(|r| r.path().display().to_string());
        note!(
            "tcptrace: warning: {}: no summary at the end: the recording did not stop \
             cleanly (killed?) or its last file is missing; every whole block was read",
            last.unwrap_or_default()
        );
    }
    if tally.records_unwritten > 0 {
        note!(
            "tcptrace: warning: the capture says {} records could not be written to it \
             (disk full or too slow)",
            tally.records_unwritten
        );
    }
    let summary = tally.summary.clone().unwrap_or_default();
    let n = |name: &str| summary[name].as_u64().unwrap_or(0);
    let ctx = RunContext {
        losses: tally.losses,
        timewait_detection: &tally.metadata.timewait_detection,
        hooks: tally.metadata.hooks.clone(),
        probe_handoffs: n("timewait_handoffs_seen_by_probe"),
        probe_emitted: n("emitted_by_probe"),
        probe_connections: n("connections_emitted_by_probe"),
        records_evicted: n("records_evicted"),
        run_stats: Vec::new(),
        capture_span: Some(Duration::from_nanos(
            until
                .min(tally.last_ktime_ns)
                .saturating_sub(since.max(tally.metadata.started_ktime_ns)),
        )),
    };
    view.finish(&ctx, &clock, &mut sink.buf)?;
    sink.flush()
}
