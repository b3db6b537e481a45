//! Human output: the columns of the per-event views and the summaries.
use std::{io::Write, net::IpAddr, time::Duration};

use tcptrace_common::tcp_state::{CLOSE_WAIT, FIN_WAIT2};

use super::{json::write_addr, ConnectionRecord, Endpoints, OwnerCgroup};
use crate::{
    clock::Clock,
    decode::{end_name, Timewait, Transition},
    probe::LossCounters,
    snapshot::{
        metric_name, Counts, Finding, Histogram, KeyValue, StuckCounts, StuckRow, TopKeys, STATES,
        STUCK_STATES,
    },
    state,
    summary::{RunContext, RunStats},
};

/// Width of `255.255.255.255:65535`.
pub const NARROW_ADDR: usize = 21;
/// Width of `[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535`.
pub const WIDE_ADDR: usize = 47;
const TRANSITION_WIDTH: usize = 32;

/// The columns of the tail and of `life`; the address columns widen for
/// the rest of the run when an address does not fit.
pub struct HumanFormat {
    addr_width: usize,
    /// `--wide`: the owner's container (or cgroup) as the last column.
    container_column: bool,
}

impl HumanFormat {
    pub fn new(wide: bool) -> Self {
        HumanFormat {
            addr_width: if wide { WIDE_ADDR } else { NARROW_ADDR },
            container_column: wide,
        }
    }

    pub fn addr_width(&self) -> usize {
        self.addr_width
    }

    /// The tail's header.
    pub fn write_header(&self, out: &mut Vec<u8>) {
        let w = self.addr_width;
        let _ = write!(
            out,
            "{:<15} {:>7} {:<15} {:<w$} {:<w$} {:<TRANSITION_WIDTH$} {:>9} {:>9}",
            "TIME", "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "TRANSITION", "IN-OLD", "AGE"
        );
        self.end_header(out);
    }

    fn end_header(&self, out: &mut Vec<u8>) {
        if self.container_column {
            out.extend_from_slice(b" CONTAINER");
        }
        out.push(b'\n');
    }

    /// The last column in `--wide`, then the line's end.
    fn end_line(&self, out: &mut Vec<u8>, cgroup: OwnerCgroup) {
        if self.container_column {
            out.push(b' ');
            write_container(out, cgroup);
        }
        out.push(b'\n');
    }

    pub fn write_transition(
        &mut self,
        out: &mut Vec<u8>,
        clock: &Clock,
        t: &Transition,
        cgroup: OwnerCgroup,
    ) {
        self.write_prefix(out, clock, t.ktime_ns, t.pid, t.comm(), t.endpoints());
        let start = out.len();
        out.extend_from_slice(state::name(t.old).as_bytes());
        out.extend_from_slice(b" -> ");
        out.extend_from_slice(state::name(t.new).as_bytes());
        match t.timewait {
            Timewait::Handoff => out.extend_from_slice(b" [timewait]"),
            Timewait::Unknown => out.extend_from_slice(b" [timewait?]"),
            Timewait::NotHandoff | Timewait::NotApplicable => {}
        }
        if let Some(end) = end_name(t.end) {
            out.extend_from_slice(b" (");
            out.extend_from_slice(end.as_bytes());
            out.push(b')');
        }
        pad_to(out, start, TRANSITION_WIDTH);
        out.push(b' ');
        write_duration_column(out, t.in_old_ns);
        out.push(b' ');
        write_duration_column(out, t.age_ns);
        self.end_line(out, cgroup);
    }

    /// `life`'s header.
    pub fn write_connection_header(&self, out: &mut Vec<u8>) {
        let w = self.addr_width;
        let end = if self.container_column {
            "END        "
        } else {
            "END"
        };
        let _ = write!(
            out,
            "{:<15} {:>7} {:<15} {:<w$} {:<w$} {:<6} {:>9} {:>9} {:>9} {:>9} {:>9} {end}",
            "TIME",
            "PID",
            "COMM",
            "LADDR:LPORT",
            "RADDR:RPORT",
            "CLOSER",
            "HANDSHAKE",
            "ESTAB",
            "CLOSING",
            "TIMEWAIT",
            "LIFETIME"
        );
        self.end_header(out);
    }

    /// One `life` row.
    pub fn write_connection(&mut self, out: &mut Vec<u8>, clock: &Clock, c: &ConnectionRecord) {
        self.write_prefix(out, clock, c.ktime_ns, c.pid, c.comm, c.ends);
        pad_right(out, c.closer.unwrap_or("-").as_bytes(), 6);
        for phase in [
            c.handshake_ns,
            c.established_ns,
            c.closing_ns,
            c.time_wait_ns,
        ] {
            out.push(b' ');
            write_duration_column(out, phase);
        }
        out.push(b' ');
        match c.lifetime_ns {
            Some(ns) => write_duration_column(out, Some(ns)),
            // Seen for this long, but it started before tracing did.
            None => {
                let mut cell = [0u8; 17];
                cell[0] = b'>';
                let len = 1 + duration_into(&mut cell[1..], c.seen_for_ns);
                pad_left(out, &cell[..len], 9);
            }
        }
        if self.container_column {
            // END is padded to its widest, `fin_timeout`, for the column after it.
            out.push(b' ');
            pad_right(out, c.end.unwrap_or("-").as_bytes(), 11);
        } else if let Some(end) = c.end {
            out.push(b' ');
            out.extend_from_slice(end.as_bytes());
        }
        self.end_line(out, c.cgroup);
    }

    /// TIME, PID, COMM and both endpoints, each followed by a space.
    pub fn write_prefix(
        &mut self,
        out: &mut Vec<u8>,
        clock: &Clock,
        ktime_ns: u64,
        pid: Option<u32>,
        comm: &[u8],
        ends: Endpoints,
    ) {
        clock.write_local_time(out, ktime_ns);
        out.push(b' ');
        match pid {
            Some(pid) => pad_left(out, itoa::Buffer::new().format(pid).as_bytes(), 7),
            None => pad_left(out, b"-", 7),
        }
        out.push(b' ');
        pad_right(out, if comm.is_empty() { b"-" } else { comm }, 15);
        out.push(b' ');
        self.write_endpoints(out, ends);
    }

    /// Both endpoints, each padded to the column and followed by a space.
    pub fn write_endpoints(&mut self, out: &mut Vec<u8>, ends: Endpoints) {
        // An address wider than the column widens it for the rest of the run
        // so that later lines stay aligned with each other.
        for (addr, port) in [(ends.local, ends.lport), (ends.remote, ends.rport)] {
            let start = out.len();
            write_endpoint(out, addr, port);
            let len = out.len() - start;
            if len > self.addr_width {
                self.addr_width = WIDE_ADDR.max(len);
            }
            pad_to(out, start, self.addr_width);
            out.push(b' ');
        }
    }
}

/// The owner's container as the human views show it: a container id cut
/// to 12 digits as `docker ps` does, a service's unit, else the cgroup's
/// path; `cgroup:<id>` for a cgroup never named, `-` when unknown.
pub fn write_container(out: &mut Vec<u8>, cgroup: OwnerCgroup) {
    match cgroup.name {
        Some(name) => out.extend_from_slice(short_container(&name.container).as_bytes()),
        None if cgroup.id != 0 => {
            out.extend_from_slice(b"cgroup:");
            out.extend_from_slice(itoa::Buffer::new().format(cgroup.id).as_bytes());
        }
        None => out.push(b'-'),
    }
}

/// `docker:<64 hex>` as `docker:<12 hex>`; other labels unchanged.
pub fn short_container(label: &str) -> &str {
    match label.split_once(':') {
        Some((kind, id)) if id.len() == 64 && !label.starts_with('/') => {
            &label[..kind.len() + 1 + 12]
        }
        _ => label,
    }
}

/// The one `addr:port` writer: `10.0.0.1:80`, `[fe80::1]:443`.
pub fn write_endpoint(out: &mut Vec<u8>, addr: IpAddr, port: u16) {
    if addr.is_ipv6() {
        out.push(b'[');
        write_addr(out, addr);
        out.push(b']');
    } else {
        write_addr(out, addr);
    }
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(port).as_bytes());
}

/// `addr:port` as a `String`, for the tables and sentences of the views.
pub fn endpoint_text(addr: IpAddr, port: u16) -> String {
    let mut text = Vec::with_capacity(WIDE_ADDR);
    write_endpoint(&mut text, addr, port);
    String::from_utf8(text).expect("addresses and ports are ASCII")
}

pub fn pad_to(out: &mut Vec<u8>, start: usize, width: usize) {
    let len = out.len() - start;
    out.extend(std::iter::repeat_n(b' ', width.saturating_sub(len)));
}

pub fn pad_right(out: &mut Vec<u8>, text: &[u8], width: usize) {
    let start = out.len();
    out.extend_from_slice(text);
    pad_to(out, start, width);
}

pub fn pad_left(out: &mut Vec<u8>, text: &[u8], width: usize) {
    out.extend(std::iter::repeat_n(b' ', width.saturating_sub(text.len())));
    out.extend_from_slice(text);
}

/// A duration into a stack cell; its length.
fn duration_into(cell: &mut [u8], ns: u64) -> usize {
    let mut cursor = std::io::Cursor::new(cell);
    write_duration(&mut cursor, ns);
    cursor.position() as usize
}

/// A right-aligned 9-wide duration, `-` when unknown.
pub fn write_duration_column(out: &mut Vec<u8>, ns: Option<u64>) {
    let mut cell = [0u8; 16];
    let len = match ns {
        Some(ns) => duration_into(&mut cell, ns),
        None => {
            cell[0] = b'-';
            1
        }
    };
    pad_left(out, &cell[..len], 9);
}

/// `812ns`, `12.3us`, `4.56ms`, `1.234s`, `61.2s`
pub fn write_duration(out: &mut impl Write, ns: u64) {
    let _ = match ns {
        0..1_000 => write!(out, "{ns}ns"),
        1_000..1_000_000 => write!(out, "{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => write!(out, "{:.2}ms", ns as f64 / 1e6),
        _ => write!(out, "{:.3}s", ns as f64 / 1e9),
    };
}

/// `write_duration` as a `String`.
pub fn duration_text(ns: u64) -> String {
    let mut buf = Vec::new();
    write_duration(&mut buf, ns);
    String::from_utf8_lossy(&buf).into_owned()
}

/// `stuck`'s table: per state its sockets, then the count per owner.
pub fn write_stuck(
    out: &mut Vec<u8>,
    clock: &Clock,
    now: u64,
    min_age: Duration,
    limit: usize,
    rows: &[StuckRow],
    counts: &StuckCounts,
) {
    let (processes, groups) = (&counts.processes, counts.groups.as_ref());
    let mut local_time = Vec::new();
    clock.write_local_time(&mut local_time, now);
    let _ = writeln!(
        out,
        "{}  sockets in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK for {} or more",
        String::from_utf8_lossy(&local_time),
        age_text(min_age.as_nanos() as u64)
    );
    let width = rows
        .iter()
        .map(|r| endpoint_text(r.tuple.local, r.tuple.lport).len().max(21))
        .max()
        .unwrap_or(21);
    for s in STUCK_STATES {
        let of_state: Vec<&StuckRow> = rows.iter().filter(|r| r.state == s).collect();
        let what = match s {
            CLOSE_WAIT => "the peer closed, the owner has not",
            FIN_WAIT2 => "closed here, waiting for the peer's FIN",
            _ => "closed, waiting for the peer's last ACK",
        };
        let _ = writeln!(
            out,
            "\n{} ({what}): {}",
            state::name(s),
            match of_state.len() {
                0 => "none".to_string(),
                1 => "1 socket".to_string(),
                n => format!("{n} sockets"),
            }
        );
        if of_state.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:<width$} {:<width$} {:>10}",
            "PID", "COMM", "LOCAL", "REMOTE", "AGE"
        );
        for row in of_state.iter().take(limit) {
            let (pid, comm) = match row.owner {
                Some(o) => (o.pid.to_string(), o.comm_str()),
                None => ("-".into(), "-".into()),
            };
            let age = if row.age_at_least {
                format!(">={}", age_text(row.age_ns))
            } else {
                age_text(row.age_ns)
            };
            let _ = writeln!(
                out,
                "{pid:>8} {comm:<16} {:<width$} {:<width$} {age:>10}{}",
                endpoint_text(row.tuple.local, row.tuple.lport),
                endpoint_text(row.tuple.remote, row.tuple.rport),
                if row.orphaned { "  orphaned" } else { "" },
            );
        }
        if of_state.len() > limit {
            let _ = writeln!(out, "... and {} more", of_state.len() - limit);
        }
    }
    if !processes.is_empty() {
        let _ = writeln!(
            out,
            "\n{:>8} {:<16} {:>10} {:>9} {:>8} {:>18}",
            "PID", "COMM", "CLOSE_WAIT", "FIN_WAIT2", "LAST_ACK", "FIN_WAIT2 ORPHANED"
        );
        let mut by_count: Vec<_> = processes.iter().collect();
        by_count.sort_by_key(|(_, c)| std::cmp::Reverse(c.iter().sum::<u64>()));
        for (owner, c) in by_count {
            let (pid, comm) = match owner {
                Some(o) => (o.pid.to_string(), o.comm_str()),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{pid:>8} {comm:<16} {:>10} {:>9} {:>8} {:>18}",
                c[0], c[1], c[2], c[3]
            );
        }
    }
    if let Some(groups) = groups.filter(|g| !g.counts.is_empty()) {
        let width = groups
            .counts
            .keys()
            .map(|k| k.len())
            .max()
            .unwrap_or(0)
            .max(9);
        let _ = writeln!(
            out,
            "\n{:<width$} {:>10} {:>9} {:>8} {:>18}",
            groups.by.to_uppercase(),
            "CLOSE_WAIT",
            "FIN_WAIT2",
            "LAST_ACK",
            "FIN_WAIT2 ORPHANED"
        );
        let mut by_count: Vec<_> = groups.counts.iter().collect();
        by_count.sort_by_key(|(_, c)| std::cmp::Reverse(c.iter().sum::<u64>()));
        for (key, c) in by_count {
            let _ = writeln!(
                out,
                "{key:<width$} {:>10} {:>9} {:>8} {:>18}",
                c[0], c[1], c[2], c[3]
            );
        }
    }
}

/// bcc-style: one line per non-empty bucket range with an ASCII bar.
pub fn write_histogram(out: &mut Vec<u8>, m: u8, key: &KeyValue, h: &Histogram) {
    let label = match key {
        KeyValue::All => metric_name(m).to_string(),
        key => format!("{} [{}]", metric_name(m), key.label()),
    };
    let _ = writeln!(
        out,
        "@{label}: count {}, p50 {}, p90 {}, p99 {}, max {}",
        h.count,
        duration_text(h.quantile(0.50)),
        duration_text(h.quantile(0.90)),
        duration_text(h.quantile(0.99)),
        duration_text(h.max_ns)
    );
    let first = h.buckets.iter().position(|&n| n > 0).unwrap_or(0);
    let last = h.buckets.iter().rposition(|&n| n > 0).unwrap_or(0);
    let peak = h.buckets.iter().copied().max().unwrap_or(1).max(1);
    for i in first..=last {
        let (lo, hi) = Histogram::bucket_range(i);
        let n = h.buckets[i];
        let bar = (n * 40).div_ceil(peak) as usize;
        let range = format!("[{}, {})", duration_text(lo), duration_text(hi));
        let _ = writeln!(
            out,
            "  {range:<22} {n:>9} |{:<40}|",
            "@".repeat(bar.min(40))
        );
    }
    out.push(b'\n');
}

/// `census`'s table: `netns` is `None` for every namespace; `top` the
/// `--by` name and its keys.
pub fn write_census(
    out: &mut Vec<u8>,
    clock: &Clock,
    now: u64,
    netns: Option<u32>,
    counts: &Counts,
    top_keys: Option<(&str, &TopKeys)>,
) {
    let mut local_time = Vec::new();
    clock.write_local_time(&mut local_time, now);
    let _ = writeln!(
        out,
        "{}  TCP sockets{}",
        String::from_utf8_lossy(&local_time),
        match netns {
            None => " in every network namespace".to_string(),
            Some(n) => format!(" in network namespace {n}"),
        }
    );
    let _ = writeln!(out, "{:<12} {:>9}", "STATE", "COUNT");
    for s in STATES {
        let n = counts.per_state[s as usize];
        let _ = write!(out, "{:<12} {n:>9}", state::name(s));
        if s == FIN_WAIT2 && n > 0 {
            let _ = write!(
                out,
                "  ({} full sockets, {} orphaned in timewait sockets)",
                counts.fin_wait2_full, counts.timewait_fin_wait2
            );
        }
        out.push(b'\n');
    }
    let _ = writeln!(out, "{:<12} {:>9}", "total", counts.total());
    let _ = writeln!(
        out,
        "timewait sockets: {} (sub-state TIME_WAIT {}, FIN_WAIT2 {})",
        counts.timewait_sockets(),
        counts.timewait_time_wait,
        counts.timewait_fin_wait2
    );
    if let Some((by, keys)) = top_keys {
        for (s, keys) in keys {
            let _ = writeln!(out, "\nTOP {} BY {}", state::name(*s), by);
            if keys.is_empty() {
                let _ = writeln!(out, "  (none)");
            }
            for (k, c) in keys {
                let _ = writeln!(out, "{c:>9}  {}", k.label());
            }
        }
    }
}

/// The doctor's sentences, each with its advice.
pub fn write_doctor(out: &mut Vec<u8>, findings: &[Finding]) {
    for x in findings {
        let _ = writeln!(out, "{}: {}", x.topic, x.text);
        if let Some(a) = &x.advice {
            let _ = writeln!(out, "  advice: {a}");
        }
    }
}

/// `12.3s`, `4m05s`, `2h03m`
pub fn age_text(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    match s {
        0..60 => format!("{:.1}s", ns as f64 / 1e9),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The loss lines of every human summary.
pub fn write_losses(out: &mut impl Write, ctx: &RunContext) {
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

/// The tail's summary.
pub fn write_summary(out: &mut impl Write, stats: &RunStats, ctx: &RunContext) {
    let secs = ctx.duration(stats).as_secs_f64();
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
    // Read back from a capture, the filters and window chose what was read.
    if ctx.probe_emitted != read && ctx.capture_span.is_none() {
        let _ = writeln!(
            out,
            "  the probe wrote {} events into the ring, {read} were read",
            ctx.probe_emitted
        );
    }
    if stats.bad_records > 0 {
        let _ = writeln!(out, "  malformed ring records: {}", stats.bad_records);
    }
    write_losses(out, ctx);
}

/// `life`'s summary.
pub fn write_connection_summary(
    out: &mut impl Write,
    tally: &crate::summary::ConnectionTally,
    ctx: &RunContext,
) {
    let [_, local, remote, reset] = tally.per_closer;
    let _ = writeln!(
        out,
        "tcptrace: {} connections ({local} closed locally first, {remote} by the peer, \
         {reset} reset; {} started before tracing)",
        tally.connections, tally.start_unseen
    );
    write_malformed(out, tally.bad_records);
    write_losses(out, ctx);
}

/// `record`'s summary.
pub fn write_capture_summary(
    out: &mut impl Write,
    tally: &crate::summary::CaptureTally,
    ctx: &RunContext,
) {
    let per_record = tally.bytes as f64 / tally.records_written.max(1) as f64;
    let _ = writeln!(
        out,
        "tcptrace: recorded {} transitions and {} connections: {} records, {} bytes in {} file{} ({per_record:.0} bytes per record)",
        tally.transitions,
        tally.connections,
        tally.records_written,
        tally.bytes,
        tally.files,
        if tally.files == 1 { "" } else { "s" },
    );
    if tally.records_unwritten > 0 {
        let _ = writeln!(
            out,
            "tcptrace: {} records could not be written (disk too slow or full)",
            tally.records_unwritten
        );
    }
    write_losses(out, ctx);
}

/// Ring records the decoder refused (never misread), if any.
fn write_malformed(out: &mut impl Write, bad_records: u64) {
    if bad_records > 0 {
        let _ = writeln!(out, "tcptrace: {bad_records} malformed ring records");
    }
}

/// `hist`'s summary.
pub fn write_histogram_summary(out: &mut impl Write, over_key_limit: u64, ctx: &RunContext) {
    if over_key_limit > 0 {
        let _ = writeln!(
            out,
            "tcptrace: {over_key_limit} durations went to \"other\": more keys than --max-keys"
        );
    }
    write_losses(out, ctx);
}

/// The socket views' summary: said only when something was missed.
pub fn write_table_summary(
    out: &mut impl Write,
    table: &crate::summary::TableTally,
    max_sockets: usize,
    ctx: &RunContext,
) {
    let sockets_dropped = table.sockets_dropped;
    write_malformed(out, table.bad_records);
    if sockets_dropped > 0 {
        let _ = writeln!(
            out,
            "tcptrace: {sockets_dropped} sockets not tracked: more than {max_sockets} at once"
        );
    }
    if ctx.losses.total() > 0 {
        write_losses(out, ctx);
    }
}

/// The stderr line for losses that grew since the previous check.
pub fn lost_line(before: &LossCounters, now: &LossCounters) -> String {
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
    use crate::{
        cgroups::Cgroup,
        printer::fixtures::{clock, transition, ALL_KNOWN},
    };
    use tcptrace_common::{tcp_state::*, *};

    #[test]
    fn human_line_marks_handoff() {
        let t = transition(
            AF_INET,
            FIN_WAIT2,
            CLOSE,
            ALL_KNOWN | EVENT_TIMEWAIT_CHECKED | EVENT_TIMEWAIT_HANDOFF,
        );
        let mut human = HumanFormat::new(false);
        let mut out = Vec::new();
        human.write_transition(&mut out, &clock(), &t, Default::default());
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "17:58:01.000000    4242 curl            127.0.0.1:45678       10.1.2.3:80           \
             FIN_WAIT2 -> CLOSE [timewait]       1.50ms    2.000s\n"
        );
    }

    #[test]
    fn human_line_widens_for_ipv6_and_dashes_unknowns() {
        let t = transition(AF_INET6, CLOSE_WAIT, LAST_ACK, 0);
        let mut human = HumanFormat::new(false);
        let mut out = Vec::new();
        human.write_transition(&mut out, &clock(), &t, Default::default());
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains("      - -               [::1]:45678"),
            "{line}"
        );
        assert!(line.contains("[2001:db8::7]:80"));
        assert!(line.trim_end().ends_with("-         -"), "{line}");
        assert_eq!(human.addr_width, NARROW_ADDR, "short IPv6 addresses fit");
        let mut wide = HumanFormat::new(true);
        let mut header = Vec::new();
        wide.write_header(&mut header);
        assert!(header.len() > 2 * WIDE_ADDR);
        let _ = &mut wide;
    }

    #[test]
    fn wide_lines_end_with_the_owners_container() {
        let t = transition(AF_INET, CLOSE_WAIT, LAST_ACK, ALL_KNOWN);
        let mut wide = HumanFormat::new(true);
        let mut header = Vec::new();
        wide.write_header(&mut header);
        assert!(
            header.ends_with(b" AGE CONTAINER\n"),
            "{}",
            String::from_utf8_lossy(&header)
        );
        let docker = Cgroup::new(
            "/system.slice/docker-3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899.scope",
        );
        let service = Cgroup::new("/system.slice/nginx.service");
        for (cgroup, shown) in [
            (
                OwnerCgroup {
                    id: 9,
                    name: Some(&docker),
                },
                " docker:3f4e5d6c7b8a\n",
            ),
            (
                OwnerCgroup {
                    id: 9,
                    name: Some(&service),
                },
                " nginx.service\n",
            ),
            (OwnerCgroup { id: 9, name: None }, " cgroup:9\n"),
            (OwnerCgroup::default(), " -\n"),
        ] {
            let mut out = Vec::new();
            wide.write_transition(&mut out, &clock(), &t, cgroup);
            let line = String::from_utf8(out).unwrap();
            assert!(line.ends_with(shown), "{line:?} ends with {shown:?}");
        }
        // Narrow lines have no such column.
        let mut out = Vec::new();
        HumanFormat::new(false).write_transition(&mut out, &clock(), &t, OwnerCgroup::default());
        let narrow = String::from_utf8(out).unwrap();
        assert!(
            narrow.ends_with("2.000s\n"),
            "{narrow:?}: AGE is the last column"
        );
    }

    #[test]
    fn durations() {
        let text = |ns| {
            let mut out = Vec::new();
            write_duration(&mut out, ns);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(812), "812ns");
        assert_eq!(text(12_345), "12.3us");
        assert_eq!(text(4_560_000), "4.56ms");
        assert_eq!(text(61_200_000_000), "61.200s");
    }
}
