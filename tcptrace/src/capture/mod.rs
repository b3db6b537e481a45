//! Capture files: what `tcptrace record` writes and `-r` reads back.
//!
//! A capture keeps the probe's ring records as they are (no formatting per
//! event), in blocks, after a metadata block that says where and how they
//! were taken; loss counters follow every second, and a summary ends a
//! capture that was stopped properly. `format` has the layout.
pub mod format;
pub mod reader;
pub mod writer;

use serde_json::{json, Value};

use crate::probe::LossCounters;

/// What a capture says about itself (its metadata block).
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub tcptrace_version: String,
    pub kernel_release: String,
    pub hostname: String,
    pub boot_id: String,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC when the capture began: turns
    /// the records' kernel times into wall-clock times.
    pub realtime_minus_monotonic_ns: i64,
    /// CLOCK_MONOTONIC when the capture began.
    pub started_ktime_ns: u64,
    pub command_line: Vec<String>,
    /// The in-kernel filters, as the command line gave them.
    pub filters: Value,
    /// The kernel hooks attached ("tp_btf/inet_sock_set_state", ...).
    pub hooks: Vec<String>,
    /// How precisely timewait sockets were followed (as in the summary).
    pub timewait_detection: String,
    /// 0 for the first file of a rotated capture, then 1, 2, ...
    pub file_index: u64,
    /// Sockets per state when the capture began (`census`'s counts), so
    /// that populations over time start from the truth.
    pub sockets_at_start: Value,
}

impl Metadata {
    pub fn to_json(&self) -> Value {
        json!({
            "format_version": format::FORMAT_VERSION,
            "tcptrace_version": self.tcptrace_version,
            "kernel_release": self.kernel_release,
            "hostname": self.hostname,
            "boot_id": self.boot_id,
            "realtime_minus_monotonic_ns": self.realtime_minus_monotonic_ns,
            "started_ktime_ns": self.started_ktime_ns,
            "command_line": self.command_line,
            "filters": self.filters,
            "hooks": self.hooks,
            "timewait_detection": self.timewait_detection,
            "file_index": self.file_index,
            "sockets_at_start": self.sockets_at_start,
        })
    }

    pub fn from_json(v: &Value) -> Result<Self, String> {
        let text = |name: &str| v[name].as_str().unwrap_or_default().to_string();
        let strings = |name: &str| -> Vec<String> {
            let items = v[name].as_array().map(Vec::as_slice).unwrap_or_default();
            items
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        };
        let number = |name: &str| {
            v[name]
                .as_u64()
                .ok_or_else(|| format!("no {name} (a number)"))
        };
        Ok(Metadata {
            tcptrace_version: text("tcptrace_version"),
            kernel_release: text("kernel_release"),
            hostname: text("hostname"),
            boot_id: text("boot_id"),
            realtime_minus_monotonic_ns: v["realtime_minus_monotonic_ns"]
                .as_i64()
                .ok_or("no realtime_minus_monotonic_ns (a number)")?,
            started_ktime_ns: number("started_ktime_ns")?,
            command_line: strings("command_line"),
            filters: v["filters"].clone(),
            hooks: strings("hooks"),
            timewait_detection: text("timewait_detection"),
            file_index: v["file_index"].as_u64().unwrap_or(0),
            sockets_at_start: v["sockets_at_start"].clone(),
        })
    }

    /// This host, now (the fields `record` knows before the probe loads).
    pub fn of_this_host() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let clock = crate::clock::Clock::new();
        Metadata {
            tcptrace_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: read("/proc/sys/kernel/osrelease"),
            hostname: read("/proc/sys/kernel/hostname"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            realtime_minus_monotonic_ns: clock.realtime_minus_monotonic_ns() as i64,
            started_ktime_ns: crate::clock::Clock::now_ktime_ns(),
            command_line: std::env::args().collect(),
            ..Metadata::default()
        }
    }
}

/// The loss counters as a `Losses` block holds them, with what the capture
/// itself could not keep.
pub fn losses_json(losses: &LossCounters, unwritten: u64) -> Value {
    json!({
        "ring_reservation_failures": losses.ring_full,
        "recursion_misses": losses.recursion_misses,
        "timewait_hook_misses": losses.timewait_hook_misses,
        "read_failures": losses.read_failures,
        "socket_map_full": losses.socket_map_full,
        "handoffs_unseen": losses.handoffs_unseen,
        "timewait_entries_lost": losses.timewait_entries_lost,
        "records_unwritten": unwritten,
    })
}

/// The kernel's counters back from a `Losses` block.
pub fn losses_from_json(v: &Value) -> LossCounters {
    let n = |name: &str| v[name].as_u64().unwrap_or(0);
    LossCounters {
        ring_full: n("ring_reservation_failures"),
        recursion_misses: n("recursion_misses"),
        timewait_hook_misses: n("timewait_hook_misses"),
        read_failures: n("read_failures"),
        socket_map_full: n("socket_map_full"),
        handoffs_unseen: n("handoffs_unseen"),
        timewait_entries_lost: n("timewait_entries_lost"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let m = Metadata {
            tcptrace_version: "0.1.0".into(),
            kernel_release: "6.18.0".into(),
            hostname: "h".into(),
            boot_id: "b".into(),
            realtime_minus_monotonic_ns: 1_700_000_000_000_000_000,
            started_ktime_ns: 42,
            command_line: vec!["tcptrace".into(), "record".into()],
            filters: json!({"port": [80]}),
            hooks: vec!["tp_btf/inet_sock_set_state".into()],
            timewait_detection: "exact".into(),
            file_index: 3,
            sockets_at_start: json!({"TIME_WAIT": 5}),
        };
        let back = Metadata::from_json(&m.to_json()).unwrap();
        assert_eq!(back.to_json(), m.to_json());
        assert!(Metadata::from_json(&json!({})).is_err());
    }
}
