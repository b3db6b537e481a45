//! What a run saw and lost: the running tally, `lost` records, the summary.
use std::{io::Write, time::Instant};

use serde_json::json;
use tcptrace_common::tcp_state;

use crate::{
    clock::Clock,
    decode::{Timewait, Transition},
    probe::LossCounters,
    state,
};

pub struct RunStats {
    started: Instant,
    pub events: u64,
    per_transition: [[u64; tcp_state::COUNT]; tcp_state::COUNT],
    pub timewait_handoffs: u64,
    pub bad_records: u64,
}

impl Default for RunStats {
    fn default() -> Self {
        Self::new()
    }
}

impl RunStats {
    pub fn new() -> Self {
        RunStats {
            started: Instant::now(),
            events: 0,
            per_transition: [[0; tcp_state::COUNT]; tcp_state::COUNT],
            timewait_handoffs: 0,
            bad_records: 0,
        }
    }

    #[inline]
    pub fn record(&mut self, t: &Transition) {
        self.events += 1;
        if let Some(row) = self.per_transition.get_mut(t.old as usize) {
            if let Some(cell) = row.get_mut(t.new as usize) {
                *cell += 1;
            }
        }
        if t.timewait == Timewait::Handoff {
            self.timewait_handoffs += 1;
        }
    }

    pub fn count(&self, old: u8, new: u8) -> u64 {
        self.per_transition[old as usize][new as usize]
    }

    fn transitions(&self) -> impl Iterator<Item = (u8, u8, u64)> + '_ {
        (0..tcp_state::COUNT as u8)
            .flat_map(move |old| (0..tcp_state::COUNT as u8).map(move |new| (old, new)))
            .map(|(old, new)| (old, new, self.count(old, new)))
            .filter(|&(_, _, n)| n > 0)
    }
}

/// Everything the summary reports besides the tally.
pub struct RunContext<'a> {
    pub losses: LossCounters,
    pub timewait_detection: &'a str,
    /// The kernel hooks attached ("tp_btf/timer_start", ...).
    pub hooks: Vec<String>,
    pub probe_handoffs: u64,
    /// Events the probe wrote into the ring; all of them should have been read.
    pub probe_emitted: u64,
    /// Connection records the probe wrote into the ring (`life`).
    pub probe_connections: u64,
    /// Per-connection records the kernel's LRU maps evicted.
    pub records_evicted: u64,
    /// (program, runs, run time ns) while kernel BPF stats are enabled.
    pub run_stats: Vec<(&'static str, u64, u64)>,
}

pub fn write_json_summary(out: &mut Vec<u8>, clock: &Clock, stats: &RunStats, ctx: &RunContext) {
    let transitions: serde_json::Map<String, serde_json::Value> = stats
        .transitions()
        .map(|(old, new, n)| {
            (
                format!("{}->{}", state::name(old), state::name(new)),
                json!(n),
            )
        })
        .collect();
    let mut record = json!({
        "type": "summary",
        "duration_ns": stats.started.elapsed().as_nanos() as u64,
        "events": stats.events,
        "transitions": transitions,
        "timewait_handoffs": stats.timewait_handoffs,
        "timewait_handoffs_seen_by_probe": ctx.probe_handoffs,
        "bad_records": stats.bad_records,
        "emitted_by_probe": ctx.probe_emitted,
    });
    add_loss_fields(&mut record, clock, ctx);
    let _ = serde_json::to_writer(&mut *out, &record);
    out.push(b'\n');
}

/// A command's own summary record, with the loss counters and probe
/// statistics every summary carries, as one JSON line.
pub fn write_json_record(
    out: &mut Vec<u8>,
    mut record: serde_json::Value,
    clock: &Clock,
    ctx: &RunContext,
) {
    add_loss_fields(&mut record, clock, ctx);
    let _ = serde_json::to_writer(&mut *out, &record);
    out.push(b'\n');
}

/// The loss counters and probe statistics every summary carries.
pub fn add_loss_fields(record: &mut serde_json::Value, clock: &Clock, ctx: &RunContext) {
    let mut time = Vec::new();
    clock.write_rfc3339(&mut time, Clock::now_ktime_ns());
    let fields = json!({
        "time": String::from_utf8_lossy(&time),
        "ring_reservation_failures": ctx.losses.ring_full,
        "recursion_misses": ctx.losses.recursion_misses,
        "timewait_hook_misses": ctx.losses.timewait_hook_misses,
        "read_failures": ctx.losses.read_failures,
        "socket_map_full": ctx.losses.socket_map_full,
        "timewait_entries_lost": ctx.losses.timewait_entries_lost,
        "handoffs_unseen": ctx.losses.handoffs_unseen,
        "records_evicted": ctx.records_evicted,
        "timewait_detection": ctx.timewait_detection,
        "hooks": ctx.hooks,
        "probe_stats": ctx.run_stats.iter().map(|&(program, runs, ns)| {
            json!({"program": program, "runs": runs, "run_time_ns": ns})
        }).collect::<Vec<_>>(),
    });
    if let (Some(record), serde_json::Value::Object(fields)) = (record.as_object_mut(), fields) {
        record.extend(fields);
    }
}

/// The loss lines of a human summary.
pub fn write_human_losses(out: &mut impl Write, ctx: &RunContext) {
    let _ = writeln!(
        out,
        "  lost: {} ring reservation failures, {} recursion misses",
        ctx.losses.ring_full, ctx.losses.recursion_misses
    );
    if ctx.losses.read_failures > 0 {
        let _ = writeln!(
            out,
            "  lost to failed socket reads: {}",
            ctx.losses.read_failures
        );
    }
    if ctx.losses.timewait_hook_misses > 0 {
        let _ = writeln!(
            out,
            "  timewait hooks skipped {} times (hand-offs then look like resets, \
             TIME_WAIT changes go unseen)",
            ctx.losses.timewait_hook_misses
        );
    }
    if ctx.losses.socket_map_full > 0 {
        let _ = writeln!(
            out,
            "  socket records refused: {}",
            ctx.losses.socket_map_full
        );
    }
    if ctx.records_evicted > 0 {
        let _ = writeln!(
            out,
            "  connection records evicted from the full kernel maps: {} (those connections \
             then look older than tracing)",
            ctx.records_evicted
        );
    }
    if ctx.losses.handoffs_unseen > 0 {
        let _ = writeln!(
            out,
            "  timewait hand-offs the kernel did not run the probe for: {} ({} TIME_WAIT entries lost with them)",
            ctx.losses.handoffs_unseen, ctx.losses.timewait_entries_lost
        );
    }
    let _ = writeln!(out, "  timewait detection: {}", ctx.timewait_detection);
    let _ = writeln!(out, "  hooks: {}", ctx.hooks.join(", "));
    for &(program, runs, ns) in ctx.run_stats.iter().filter(|s| s.1 > 0) {
        let per_run = ns as f64 / runs as f64;
        let _ = writeln!(
            out,
            "  probe {program}: {runs} runs, {per_run:.0} ns per run"
        );
    }
}

pub fn write_human_summary(out: &mut impl Write, stats: &RunStats, ctx: &RunContext) {
    let secs = stats.started.elapsed().as_secs_f64();
    let _ = writeln!(out, "tcptrace: {} events in {secs:.1} s", stats.events);
    for (old, new, n) in stats.transitions() {
        let label = format!("{} -> {}", state::name(old), state::name(new));
        let _ = writeln!(out, "  {label:<30} {n:>10}");
    }
    if stats.timewait_handoffs > 0 {
        let _ = writeln!(
            out,
            "  {:<30} {:>10}",
            "of which timewait hand-offs", stats.timewait_handoffs
        );
    }
    let read = stats.events + stats.bad_records;
    if ctx.probe_emitted != read {
        let _ = writeln!(
            out,
            "  the probe wrote {} events into the ring, {read} were read",
            ctx.probe_emitted
        );
    }
    if stats.bad_records > 0 {
        let _ = writeln!(out, "  malformed ring records: {}", stats.bad_records);
    }
    write_human_losses(out, ctx);
}

/// A `lost` record for losses that grew since the previous check.
pub fn write_json_lost(
    out: &mut Vec<u8>,
    clock: &Clock,
    before: &LossCounters,
    now: &LossCounters,
) {
    let mut time = Vec::new();
    clock.write_rfc3339(&mut time, Clock::now_ktime_ns());
    let record = json!({
        "type": "lost",
        "time": String::from_utf8_lossy(&time),
        "ring_reservation_failures": now.ring_full - before.ring_full,
        "recursion_misses": now.recursion_misses - before.recursion_misses,
        "read_failures": now.read_failures - before.read_failures,
        "timewait_hook_misses": now.timewait_hook_misses - before.timewait_hook_misses,
        "timewait_entries_lost": now.timewait_entries_lost - before.timewait_entries_lost,
        "total_ring_reservation_failures": now.ring_full,
        "total_recursion_misses": now.recursion_misses,
    });
    let _ = serde_json::to_writer(&mut *out, &record);
    out.push(b'\n');
}

pub fn human_lost_line(before: &LossCounters, now: &LossCounters) -> String {
    format!(
        "tcptrace: lost {} events ({} ring reservation failures: raise --ring-size; {} recursion misses)",
        now.total() - before.total(),
        now.ring_full - before.ring_full,
        now.recursion_misses - before.recursion_misses
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{bytes_of, raw_event};
    use tcptrace_common::{tcp_state::*, AF_INET, EVENT_TIMEWAIT_CHECKED, EVENT_TIMEWAIT_HANDOFF};

    #[test]
    fn summary_counts_per_transition() {
        let mut stats = RunStats::new();
        let handoff = raw_event(
            AF_INET,
            FIN_WAIT2,
            CLOSE,
            EVENT_TIMEWAIT_CHECKED | EVENT_TIMEWAIT_HANDOFF,
        );
        let last_ack = raw_event(AF_INET, CLOSE_WAIT, LAST_ACK, 0);
        for ev in [&handoff, &handoff, &last_ack] {
            stats.record(&Transition::decode(bytes_of(ev)).unwrap());
        }
        let ctx = RunContext {
            losses: LossCounters {
                ring_full: 3,
                recursion_misses: 1,
                ..Default::default()
            },
            timewait_detection: "exact",
            hooks: vec!["tp_btf/inet_sock_set_state".into()],
            probe_handoffs: 5,
            probe_emitted: 3,
            probe_connections: 0,
            records_evicted: 0,
            run_stats: vec![("inet_sock_set_state", 10, 2000)],
        };
        let mut out = Vec::new();
        write_json_summary(&mut out, &Clock::new(), &stats, &ctx);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "summary");
        assert_eq!(v["events"], 3);
        assert_eq!(v["transitions"]["FIN_WAIT2->CLOSE"], 2);
        assert_eq!(v["transitions"]["CLOSE_WAIT->LAST_ACK"], 1);
        assert_eq!(v["timewait_handoffs"], 2);
        assert_eq!(v["ring_reservation_failures"], 3);
        assert_eq!(v["recursion_misses"], 1);
        assert_eq!(v["probe_stats"][0]["runs"], 10);

        let mut human = Vec::new();
        write_human_summary(&mut human, &stats, &ctx);
        let text = String::from_utf8(human).unwrap();
        assert!(text.contains("FIN_WAIT2 -> CLOSE"));
        assert!(text.contains("3 ring reservation failures, 1 recursion misses"));
        assert!(text.contains("probe inet_sock_set_state: 10 runs, 200 ns per run"));
    }

    #[test]
    fn lost_record_reports_growth() {
        let before = LossCounters {
            ring_full: 2,
            recursion_misses: 1,
            ..Default::default()
        };
        let now = LossCounters {
            ring_full: 7,
            recursion_misses: 1,
            ..Default::default()
        };
        let mut out = Vec::new();
        write_json_lost(&mut out, &Clock::new(), &before, &now);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "lost");
        assert_eq!(v["ring_reservation_failures"], 5);
        assert_eq!(v["total_ring_reservation_failures"], 7);
        assert!(human_lost_line(&before, &now).contains("lost 5 events"));
    }
}
