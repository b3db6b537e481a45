//! `tcptrace record -w FILE`: the probe's records into a capture file, as
//! they come out of the ring (one copy into a batch, no formatting), for
//! every view to read back later with `-r`.
use std::{sync::atomic::Ordering, time::Duration};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::{
    capture::{
        format::BlockKind,
        losses_json,
        writer::{CaptureWriter, Rotation},
        Metadata,
    },
    clock::Clock,
    error::note,
    options::Output,
    printer,
    probe::{Probe, ProbeOptions},
    session::{self, SessionOptions, View},
    sockets::{self, Scope},
    state,
    summary::{CaptureTally, RunContext},
};

/// `tcptrace record`.
pub struct RecordOptions {
    pub probe: ProbeOptions,
    pub output: Output,
    pub rotation: Rotation,
    /// Memory for batches waiting for the disk.
    pub queue_bytes: u64,
    /// The filters as given, for the capture's metadata.
    pub filters: Value,
}

struct RecordView {
    writer: CaptureWriter,
    json: bool,
    transitions: u64,
    connections: u64,
    /// Unwritten records already reported on stderr.
    unwritten_reported: u64,
    error_reported: bool,
}

impl RecordView {
    /// Says on stderr, as it happens, what the capture could not keep.
    fn report_unwritten(&mut self) {
        let counts = &self.writer.counts;
        if !self.error_reported {
            if let Some(err) = counts
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                note!("tcptrace: {err}; records that cannot be written are counted");
                self.error_reported = true;
            }
        }
        let unwritten = counts.records_unwritten.load(Ordering::Relaxed);
        if unwritten > self.unwritten_reported {
            note!(
                "tcptrace: {} records could not be written (the disk is too slow or full); \
                 {unwritten} in all",
                unwritten - self.unwritten_reported
            );
            self.unwritten_reported = unwritten;
        }
    }
}

impl View for RecordView {
    #[inline]
    fn record(&mut self, data: &[u8], _clock: &Clock, _out: &mut Vec<u8>) {
        // The kind byte leads every record (`RecordHeader`).
        match data.first() {
            Some(&tcptrace_common::record_kind::CONNECTION) => self.connections += 1,
            Some(&tcptrace_common::record_kind::CGROUP) => {}
            _ => self.transitions += 1,
        }
        self.writer.record(data);
    }

    /// Cgroups' names go into the capture as the probe wrote them.
    fn takes_cgroup_records(&self) -> bool {
        true
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    fn refresh(&mut self, probe: &Probe, _clock: &Clock, _out: &mut Vec<u8>) -> Result<()> {
        self.writer.flush();
        let unwritten = self.writer.counts.records_unwritten.load(Ordering::Relaxed);
        let losses = losses_json(&probe.loss_counters()?, unwritten);
        self.writer.json_block(BlockKind::Losses, &losses);
        self.report_unwritten();
        Ok(())
    }

    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        let counts = std::sync::Arc::clone(&self.writer.counts);
        let mut summary = losses_json(&ctx.losses, 0);
        let extra = json!({
            "transitions": self.transitions,
            "connections": self.connections,
            "emitted_by_probe": ctx.probe_emitted,
            "connections_emitted_by_probe": ctx.probe_connections,
            "timewait_handoffs_seen_by_probe": ctx.probe_handoffs,
            "records_evicted": ctx.records_evicted,
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            summary[k] = v.clone();
        }
        self.writer.flush();
        summary["records_unwritten"] = json!(counts.records_unwritten.load(Ordering::Relaxed));
        self.writer.json_block(BlockKind::Summary, &summary);
        self.writer.finish();
        self.report_unwritten();
        let tally = CaptureTally {
            transitions: self.transitions,
            connections: self.connections,
            records_written: counts.records_written.load(Ordering::Relaxed),
            records_unwritten: counts.records_unwritten.load(Ordering::Relaxed),
            bytes: counts.bytes_written.load(Ordering::Relaxed),
            files: counts.files.load(Ordering::Relaxed),
        };
        if self.json {
            printer::json::write_capture_summary(out, clock, &tally, ctx);
        } else {
            let mut text = Vec::new();
            printer::human::write_capture_summary(&mut text, &tally, ctx);
            printer::write_stderr(&text);
        }
        Ok(())
    }
}

/// Sockets per state now, in every namespace: where the capture's
/// populations start.
fn sockets_now() -> Value {
    let mut counts = serde_json::Map::new();
    if let Ok(walked) = sockets::walk(Scope::All) {
        for s in walked {
            let name = state::name(s.state);
            let n = counts.get(name).and_then(Value::as_u64).unwrap_or(0);
            counts.insert(name.into(), json!(n + 1));
        }
    }
    Value::Object(counts)
}

/// Refuses early, before the probe loads, if the file cannot be made.
/// (A FIFO is left alone: opening it would be its reader's first EOF.)
fn check_writable(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
        return Ok(());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}

pub async fn run(options: RecordOptions) -> Result<()> {
    check_writable(&options.rotation.path)?;
    let mut metadata = Metadata::of_this_host();
    metadata.sockets_at_start = sockets_now();
    let probe = session::start_probe(&options.probe)?;
    metadata.hooks = probe.hooks.iter().map(|hook| hook.name()).collect();
    metadata.timewait_detection = probe.timewait.describe();
    metadata.filters = options.filters;
    let path = options.rotation.path.display().to_string();
    let writer = CaptureWriter::create(options.rotation, metadata, options.queue_bytes)?;
    let mut view = RecordView {
        writer,
        json: options.output.json,
        transitions: 0,
        connections: 0,
        unwritten_reported: 0,
        error_reported: false,
    };
    let banner = format!(
        "tcptrace: recording TCP state transitions and connections to {path}{}",
        match options.output.duration {
            Some(d) => format!(" for {:.1} s", d.as_secs_f64()),
            None => " (Ctrl-C to stop)".into(),
        }
    );
    session::run(
        probe,
        &mut view,
        SessionOptions::new(options.output.json, options.output.duration, Some(banner)),
    )
    .await
}
