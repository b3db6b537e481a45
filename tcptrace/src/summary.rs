//! What a run saw and lost: the running tally, `lost` records, the summary.
use std::time::Instant;

use tcptrace_common::tcp_state;

use crate::{
    decode::{Timewait, Transition},
    probe::LossCounters,
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

    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The transitions seen, with their counts.
    pub fn transitions(&self) -> impl Iterator<Item = (u8, u8, u64)> + '_ {
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
    /// Read from a capture (`-r`): the time it spans (the run's length
    /// is then not the reading's).
    pub capture_span: Option<std::time::Duration>,
}

impl RunContext<'_> {
    /// How long the run lasted: live, since `stats` began; read back, the
    /// capture's span.
    pub fn duration(&self, stats: &RunStats) -> std::time::Duration {
        self.capture_span.unwrap_or_else(|| stats.elapsed())
    }
}

/// What `life` counted, for its summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectionTally {
    pub connections: u64,
    /// Per `closer` value: unknown, local, remote, reset.
    pub per_closer: [u64; 4],
    pub start_unseen: u64,
    pub bad_records: u64,
}

/// What `record` kept, for its summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureTally {
    pub transitions: u64,
    pub connections: u64,
    pub records_written: u64,
    /// Records read from the ring that the capture could not keep.
    pub records_unwritten: u64,
    pub bytes: u64,
    pub files: u64,
}

/// What a socket view (`stuck`, `census`) counted, for its summary.
#[derive(Clone, Copy, Debug, Default)]
pub struct TableTally {
    pub events: u64,
    pub sockets: usize,
    pub sockets_dropped: u64,
    pub bad_records: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{bytes_of, raw_event};
    use crate::{clock::Clock, printer};
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
            capture_span: None,
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
        printer::json::write_summary(&mut out, &Clock::new(), &stats, &ctx);
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
        printer::human::write_summary(&mut human, &stats, &ctx);
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
        printer::json::write_lost(&mut out, &Clock::new(), &before, &now);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "lost");
        assert_eq!(v["ring_reservation_failures"], 5);
        assert_eq!(v["total_ring_reservation_failures"], 7);
        assert!(printer::human::lost_line(&before, &now).contains("lost 5 events"));
    }
}
