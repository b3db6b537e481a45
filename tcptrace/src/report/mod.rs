//! `tcptrace report -r FILE... -o report.html`: a capture as one
//! self-contained HTML page of charts and tables.
//!
//! One pass over the capture's records (`aggregate`), into fixed-size
//! per-second bins and small maps keyed by Copy values (no allocation per
//! record); then the charts (`charts`, inline SVG drawn by plotters) and
//! the page around them (`html`).
mod aggregate;
mod charts;
mod html;

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

pub use aggregate::Aggregate;

use crate::{
    capture::reader::{read_capture, ReplayTally, Side},
    clock::Clock,
    decode::Record,
    error::note,
    replay::{self, TimeBound},
};

/// `tcptrace report`.
#[derive(Clone, Debug)]
pub struct ReportOptions {
    /// One capture's files (a rotated capture's in any order).
    pub files: Vec<PathBuf>,
    /// Where the page goes; `-` for stdout.
    pub output: PathBuf,
    /// Transition kinds, processes, ports and peers shown (at least 1).
    pub top: usize,
    pub since: Option<TimeBound>,
    pub until: Option<TimeBound>,
}

/// What the page is made of, besides the aggregate.
pub(crate) struct CaptureFacts {
    pub tally: ReplayTally,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    /// The window actually covered (CLOCK_MONOTONIC).
    pub from_ktime: u64,
    pub to_ktime: u64,
    pub clock: Clock,
}

pub async fn run(options: ReportOptions) -> Result<()> {
    let mut readers = replay::open_all(&options.files)?;
    let Some(first) = readers.first() else {
        bail!("no capture file given");
    };
    let metadata = first.metadata.clone();
    let (since, until) = replay::window_of(options.since, options.until, &metadata);
    let origin = since.max(metadata.started_ktime_ns);
    // Both closures of the one pass add to it (one at a time).
    let aggregate = std::cell::RefCell::new(Aggregate::new(origin, until, &metadata));
    let mut tally = ReplayTally {
        metadata: metadata.clone(),
        ..ReplayTally::default()
    };
    for reader in &mut readers {
        read_capture(
            reader,
            &mut tally,
            |_, record: &Record| {
                aggregate.borrow_mut().add(record);
                Ok(())
            },
            |side| {
                if let Side::Losses(ktime, counters) = side {
                    aggregate.borrow_mut().add_losses(ktime, counters);
                }
            },
        )?;
    }
    if let Some(damage) = &tally.damage {
        note!("tcptrace: warning: {damage}; every record before it was read");
    }
    let bytes = options
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let mut aggregate = aggregate.into_inner();
    let to_ktime = until.min(tally.last_ktime_ns.max(aggregate.last_ktime()));
    aggregate.finish(to_ktime);
    let facts = CaptureFacts {
        clock: Clock::with_offset(metadata.realtime_minus_monotonic_ns as i128),
        tally,
        files: options.files.clone(),
        bytes,
        from_ktime: origin,
        to_ktime: to_ktime.max(origin),
    };
    let page = html::page(&aggregate, &facts, options.top.max(1));
    write_output(&options.output, page.as_bytes())
}

fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    if path == Path::new("-") {
        return crate::printer::write_stdout(bytes);
    }
    let mut file =
        File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.flush())
        .with_context(|| format!("{}: cannot write", path.display()))
}
