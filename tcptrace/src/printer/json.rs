//! JSON Lines: one schema per record type, each written here and nowhere
//! else. The per-event records (`transition`, `connection`) are written
//! byte by byte into the batch buffer (no allocation); the rarer ones
//! (`lost`, `summary`, the view snapshots) through serde_json, whose maps
//! keep the order written here (`preserve_order`).
use std::{collections::HashMap, io::Write, net::IpAddr, time::Duration};

use serde_json::{json, Map, Value};
use tcptrace_common::tcp_state::{CLOSE_WAIT, FIN_WAIT2, LAST_ACK, SYN_RECV, TIME_WAIT};

use super::{human::endpoint_text, ConnectionRecord, Endpoints, OwnerCgroup};
use crate::{
    clock::Clock,
    decode::{comm_bytes, end_name, Timewait, Transition},
    probe::LossCounters,
    snapshot::{
        metric_name, Counts, Facts, Finding, Histogram, Key, KeyValue, StuckCounts, StuckRow,
        TopKeys, NETSTAT_KEYS, STATES,
    },
    state,
    summary::{ConnectionTally, RunContext, RunStats},
};

/// `"pid":..,"comm":..,"owner_known":..,"cgroup_id":..,"cgroup":..,
/// "container":..`: who owns the socket.
pub fn write_owner(out: &mut Vec<u8>, pid: Option<u32>, comm: &[u8], cgroup: OwnerCgroup) {
    out.extend_from_slice(b"\"pid\":");
    out.extend_from_slice(itoa::Buffer::new().format(pid.unwrap_or(0)).as_bytes());
    out.extend_from_slice(b",\"comm\":");
    write_string(out, comm);
    out.extend_from_slice(b",\"owner_known\":");
    out.extend_from_slice(if pid.is_some() { b"true" } else { b"false" });
    out.extend_from_slice(b",\"cgroup_id\":");
    out.extend_from_slice(itoa::Buffer::new().format(cgroup.id).as_bytes());
    match cgroup.name {
        Some(name) => {
            out.extend_from_slice(b",\"cgroup\":");
            write_string(out, name.path.as_bytes());
            out.extend_from_slice(b",\"container\":");
            write_string(out, name.container.as_bytes());
        }
        None => out.extend_from_slice(b",\"cgroup\":null,\"container\":null"),
    }
}

/// The one endpoint writer: `"family":..,"laddr":..,"lport":..,
/// "raddr":..,"rport":..,"netns":..`.
pub fn write_endpoints(out: &mut Vec<u8>, ends: Endpoints, netns: u32) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(if ends.local.is_ipv6() {
        b"\"family\":\"ipv6\",\"laddr\":\""
    } else {
        b"\"family\":\"ipv4\",\"laddr\":\""
    });
    write_addr(out, ends.local);
    out.extend_from_slice(b"\",\"lport\":");
    out.extend_from_slice(num.format(ends.lport).as_bytes());
    out.extend_from_slice(b",\"raddr\":\"");
    write_addr(out, ends.remote);
    out.extend_from_slice(b"\",\"rport\":");
    out.extend_from_slice(num.format(ends.rport).as_bytes());
    out.extend_from_slice(b",\"netns\":");
    out.extend_from_slice(num.format(netns).as_bytes());
}

/// `{"type":"<kind>","time":..,"ktime_ns":..,` then the owner and the
/// endpoints, without the closing brace.
fn write_event_prefix(
    out: &mut Vec<u8>,
    kind: &[u8],
    clock: &Clock,
    ktime_ns: u64,
    pid: Option<u32>,
    comm: &[u8],
    cgroup: OwnerCgroup,
) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind);
    out.extend_from_slice(b"\",\"time\":\"");
    clock.write_rfc3339(out, ktime_ns);
    out.extend_from_slice(b"\",\"ktime_ns\":");
    out.extend_from_slice(itoa::Buffer::new().format(ktime_ns).as_bytes());
    out.push(b',');
    write_owner(out, pid, comm, cgroup);
    out.push(b',');
}

/// `{"type":"transition",...}`
pub fn write_transition(out: &mut Vec<u8>, clock: &Clock, t: &Transition, cgroup: OwnerCgroup) {
    write_event_prefix(
        out,
        b"transition",
        clock,
        t.ktime_ns,
        t.pid,
        t.comm(),
        cgroup,
    );
    write_endpoints(out, t.endpoints(), t.netns);
    out.extend_from_slice(b",\"old\":\"");
    out.extend_from_slice(state::name(t.old).as_bytes());
    out.extend_from_slice(b"\",\"new\":\"");
    out.extend_from_slice(state::name(t.new).as_bytes());
    out.extend_from_slice(b"\",\"in_old_ns\":");
    write_opt_u64(out, t.in_old_ns);
    out.extend_from_slice(b",\"age_ns\":");
    write_opt_u64(out, t.age_ns);
    out.extend_from_slice(b",\"timewait\":");
    out.extend_from_slice(match t.timewait {
        Timewait::Handoff => b"true",
        Timewait::NotHandoff | Timewait::NotApplicable => b"false",
        Timewait::Unknown => b"null",
    });
    out.extend_from_slice(b",\"timewait_socket\":");
    out.extend_from_slice(if t.timewait_socket { b"true" } else { b"false" });
    out.extend_from_slice(b",\"end\":");
    write_opt_str(out, end_name(t.end));
    out.extend_from_slice(b",\"sk\":\"0x");
    write_hex(out, t.skaddr);
    out.extend_from_slice(b"\"}\n");
}

/// `{"type":"connection",...}`
pub fn write_connection(out: &mut Vec<u8>, clock: &Clock, c: &ConnectionRecord) {
    write_event_prefix(
        out,
        b"connection",
        clock,
        c.ktime_ns,
        c.pid,
        c.comm,
        c.cgroup,
    );
    write_endpoints(out, c.ends, c.netns);
    out.extend_from_slice(b",\"closer\":");
    write_opt_str(out, c.closer);
    out.extend_from_slice(b",\"start_seen\":");
    out.extend_from_slice(if c.start_seen { b"true" } else { b"false" });
    for (name, value) in [
        (&b",\"handshake_ns\":"[..], c.handshake_ns),
        (b",\"established_ns\":", c.established_ns),
        (b",\"closing_ns\":", c.closing_ns),
        (b",\"time_wait_ns\":", c.time_wait_ns),
        (b",\"lifetime_ns\":", c.lifetime_ns),
        (b",\"seen_for_ns\":", Some(c.seen_for_ns)),
    ] {
        out.extend_from_slice(name);
        write_opt_u64(out, value);
    }
    out.extend_from_slice(b",\"end\":");
    write_opt_str(out, c.end);
    out.extend_from_slice(b"}\n");
}

/// A serde_json record as one line.
pub fn write_value(out: &mut Vec<u8>, record: &Value) {
    let _ = serde_json::to_writer(&mut *out, record);
    out.push(b'\n');
}

/// An RFC 3339 time as a JSON value.
pub fn time_value(clock: &Clock, ktime_ns: u64) -> Value {
    let mut time = Vec::new();
    clock.write_rfc3339(&mut time, ktime_ns);
    Value::String(String::from_utf8_lossy(&time).into_owned())
}

/// `{"type":"lost",...}`: the losses that grew since the previous check.
pub fn write_lost(out: &mut Vec<u8>, clock: &Clock, before: &LossCounters, now: &LossCounters) {
    let record = json!({
        "type": "lost",
        "time": time_value(clock, Clock::now_ktime_ns()),
        "ring_reservation_failures": now.ring_full - before.ring_full,
        "recursion_misses": now.recursion_misses - before.recursion_misses,
        "read_failures": now.read_failures - before.read_failures,
        "timewait_hook_misses": now.timewait_hook_misses - before.timewait_hook_misses,
        "timewait_entries_lost": now.timewait_entries_lost - before.timewait_entries_lost,
        "total_ring_reservation_failures": now.ring_full,
        "total_recursion_misses": now.recursion_misses,
    });
    write_value(out, &record);
}

/// `{"type":"summary",...}` of a command: its own `fields`, then the loss
/// counters and probe statistics every summary carries.
pub fn write_summary_record(
    out: &mut Vec<u8>,
    mut fields: Map<String, Value>,
    clock: &Clock,
    ctx: &RunContext,
) {
    let mut record = Map::with_capacity(fields.len() + 13);
    record.insert("type".into(), json!("summary"));
    record.append(&mut fields);
    record.insert("time".into(), time_value(clock, Clock::now_ktime_ns()));
    for (name, value) in [
        ("ring_reservation_failures", ctx.losses.ring_full),
        ("recursion_misses", ctx.losses.recursion_misses),
        ("timewait_hook_misses", ctx.losses.timewait_hook_misses),
        ("read_failures", ctx.losses.read_failures),
        ("socket_map_full", ctx.losses.socket_map_full),
        ("timewait_entries_lost", ctx.losses.timewait_entries_lost),
        ("handoffs_unseen", ctx.losses.handoffs_unseen),
        ("records_evicted", ctx.records_evicted),
    ] {
        record.insert(name.into(), json!(value));
    }
    record.insert("timewait_detection".into(), json!(ctx.timewait_detection));
    record.insert("hooks".into(), json!(ctx.hooks));
    let probe_stats = ctx
        .run_stats
        .iter()
        .map(|&(program, runs, ns)| json!({"program": program, "runs": runs, "run_time_ns": ns}))
        .collect();
    record.insert("probe_stats".into(), Value::Array(probe_stats));
    write_value(out, &Value::Object(record));
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The tail's summary.
pub fn write_summary(out: &mut Vec<u8>, clock: &Clock, stats: &RunStats, ctx: &RunContext) {
    let transitions: Map<String, Value> = stats
        .transitions()
        .map(|(old, new, n)| {
            (
                format!("{}->{}", state::name(old), state::name(new)),
                json!(n),
            )
        })
        .collect();
    let fields = json!({
        "duration_ns": ctx.duration(stats).as_nanos() as u64,
        "events": stats.events,
        "transitions": transitions,
        "timewait_handoffs": stats.timewait_handoffs,
        "timewait_handoffs_seen_by_probe": ctx.probe_handoffs,
        "bad_records": stats.bad_records,
        "emitted_by_probe": ctx.probe_emitted,
    });
    write_summary_record(out, object(fields), clock, ctx);
}

/// `record`'s summary.
pub fn write_capture_summary(
    out: &mut Vec<u8>,
    clock: &Clock,
    tally: &crate::summary::CaptureTally,
    ctx: &RunContext,
) {
    let fields = json!({
        // As in the tail's summary: transitions read from the ring.
        "events": tally.transitions,
        "transitions": tally.transitions,
        "connections": tally.connections,
        "records_written": tally.records_written,
        "records_unwritten": tally.records_unwritten,
        "bytes_written": tally.bytes,
        "files": tally.files,
        "emitted_by_probe": ctx.probe_emitted,
        "connections_emitted_by_probe": ctx.probe_connections,
    });
    write_summary_record(out, object(fields), clock, ctx);
}

/// `life`'s summary.
pub fn write_connection_summary(
    out: &mut Vec<u8>,
    clock: &Clock,
    tally: &ConnectionTally,
    ctx: &RunContext,
) {
    let [unknown, local, remote, reset] = tally.per_closer;
    let fields = json!({
        "connections": tally.connections,
        "closer": {"local": local, "remote": remote, "reset": reset, "unknown": unknown},
        "start_unseen": tally.start_unseen,
        "connections_emitted_by_probe": ctx.probe_connections,
        "bad_records": tally.bad_records,
    });
    write_summary_record(out, object(fields), clock, ctx);
}

/// `hist`'s summary.
pub fn write_histogram_summary(
    out: &mut Vec<u8>,
    clock: &Clock,
    over_key_limit: u64,
    ctx: &RunContext,
) {
    let fields = json!({"histograms_over_key_limit": over_key_limit});
    write_summary_record(out, object(fields), clock, ctx);
}

/// The socket views' summary (`stuck`, `census`).
pub fn write_table_summary(
    out: &mut Vec<u8>,
    clock: &Clock,
    table: &crate::summary::TableTally,
    ctx: &RunContext,
) {
    let fields = json!({
        "events": table.events,
        "sockets": table.sockets,
        "sockets_dropped": table.sockets_dropped,
        "bad_records": table.bad_records,
    });
    write_summary_record(out, object(fields), clock, ctx);
}

// ---- the views' snapshots ----

/// Per refresh of `stuck`: `{"type":"stuck_snapshot",...}`, one
/// `{"type":"stuck",...}` per socket and one `{"type":"stuck_process",...}`
/// per owner.
pub fn write_stuck(
    out: &mut Vec<u8>,
    clock: &Clock,
    now: u64,
    min_age: Duration,
    rows: &[StuckRow],
    counts: &StuckCounts,
) {
    let (processes, groups) = (&counts.processes, counts.groups.as_ref());
    let count = |s: u8| rows.iter().filter(|r| r.state == s).count();
    write_value(
        out,
        &json!({
            "type": "stuck_snapshot",
            "time": time_value(clock, now),
            "min_age_ns": min_age.as_nanos() as u64,
            "sockets": rows.len(),
            "close_wait": count(CLOSE_WAIT),
            "fin_wait2": count(FIN_WAIT2),
            "last_ack": count(LAST_ACK),
        }),
    );
    let mut num = itoa::Buffer::new();
    for row in rows {
        out.extend_from_slice(b"{\"type\":\"stuck\",\"state\":\"");
        out.extend_from_slice(state::name(row.state).as_bytes());
        out.extend_from_slice(b"\",");
        let cgroup = OwnerCgroup {
            id: row.owner.map_or(0, |o| o.cgroup),
            name: row.cgroup.as_ref(),
        };
        write_owner(
            out,
            row.owner.map(|o| o.pid),
            row.owner.as_ref().map_or(&[][..], |o| comm_bytes(&o.comm)),
            cgroup,
        );
        out.extend_from_slice(b",\"orphaned\":");
        out.extend_from_slice(if row.orphaned { b"true," } else { b"false," });
        let t = &row.tuple;
        let ends = Endpoints {
            local: t.local,
            lport: t.lport,
            remote: t.remote,
            rport: t.rport,
        };
        write_endpoints(out, ends, t.netns);
        out.extend_from_slice(b",\"age_ns\":");
        out.extend_from_slice(num.format(row.age_ns).as_bytes());
        out.extend_from_slice(b",\"age_at_least\":");
        out.extend_from_slice(if row.age_at_least {
            b"true}\n"
        } else {
            b"false}\n"
        });
    }
    for (owner, c) in processes {
        write_value(
            out,
            &json!({
                "type": "stuck_process",
                "pid": owner.map_or(0, |o| o.pid),
                "comm": owner.map_or(String::new(), |o| o.comm_str()),
                "owner_known": owner.is_some(),
                "close_wait": c[0],
                "fin_wait2": c[1],
                "last_ack": c[2],
                "fin_wait2_orphaned": c[3],
            }),
        );
    }
    for (key, c) in groups.iter().flat_map(|g| &g.counts) {
        write_value(
            out,
            &json!({
                "type": "stuck_group",
                "by": groups.map(|g| g.by),
                "key": key,
                "close_wait": c[0],
                "fin_wait2": c[1],
                "last_ack": c[2],
                "fin_wait2_orphaned": c[3],
            }),
        );
    }
}

fn census_key(key: &Key) -> Value {
    match key {
        Key::Port(p) => json!(p),
        Key::Addr(a) => json!(a.to_string()),
        Key::Comm(c) => json!(c),
    }
}

/// `{"type":"census",...}`: `netns` is `None` for every namespace; `top`
/// the `--by` name and its keys.
pub fn write_census(
    out: &mut Vec<u8>,
    clock: &Clock,
    now: u64,
    netns: Option<u32>,
    counts: &Counts,
    top_keys: Option<(&str, &TopKeys)>,
) {
    let states: Map<String, Value> = STATES
        .iter()
        .map(|&s| {
            (
                state::name(s).to_string(),
                json!(counts.per_state[s as usize]),
            )
        })
        .collect();
    let mut record = json!({
        "type": "census",
        "time": time_value(clock, now),
        "netns": netns,
        "total": counts.total(),
        "states": states,
        "fin_wait2": {"full": counts.fin_wait2_full, "timewait": counts.timewait_fin_wait2},
        "timewait_sockets": {
            "total": counts.timewait_sockets(),
            "FIN_WAIT2": counts.timewait_fin_wait2,
            "TIME_WAIT": counts.timewait_time_wait,
        },
    });
    if let Some((by, keys)) = top_keys {
        let top: Map<String, Value> = keys
            .iter()
            .map(|(s, keys)| {
                let list: Vec<Value> = keys
                    .iter()
                    .map(|(k, c)| json!({"key": census_key(k), "count": c}))
                    .collect();
                (state::name(*s).to_string(), json!(list))
            })
            .collect();
        record["by"] = json!(by);
        record["top"] = Value::Object(top);
    }
    write_value(out, &record);
}

fn histogram_key(key: &KeyValue) -> Value {
    match key {
        KeyValue::All => Value::Null,
        KeyValue::Port(p) => json!(p),
        KeyValue::Pid(p) => json!(p),
        KeyValue::Addr(a) => json!(a.to_string()),
        KeyValue::Comm(c) => json!(c),
        KeyValue::Other => json!("other"),
    }
}

/// `{"type":"histogram",...}`
pub fn write_histogram(out: &mut Vec<u8>, m: u8, key: &KeyValue, h: &Histogram) {
    let buckets: Vec<_> = h
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(i, &n)| {
            let (lo, hi) = Histogram::bucket_range(i);
            json!({"ge_ns": lo, "lt_ns": hi, "count": n})
        })
        .collect();
    let record = json!({
        "type": "histogram",
        "metric": metric_name(m),
        "key": histogram_key(key),
        "count": h.count,
        "p50_ns": h.quantile(0.50),
        "p90_ns": h.quantile(0.90),
        "p99_ns": h.quantile(0.99),
        "max_ns": h.max_ns,
        "buckets": buckets,
    });
    write_value(out, &record);
}

/// `{"type":"doctor",...}`: the raw numbers and the findings.
pub fn write_doctor(out: &mut Vec<u8>, f: &Facts, findings: &[Finding], netns: u32) {
    let s = &f.sysctls;
    let c = &f.counts;
    let pick = |m: &HashMap<String, u64>| -> Value {
        NETSTAT_KEYS
            .iter()
            .map(|k| (k.to_string(), json!(m.get(*k))))
            .collect::<Map<_, _>>()
            .into()
    };
    let record = json!({
        "type": "doctor",
        "kernel": f.kernel,
        "hooks": f.hooks.as_ref().map(|(hooks, _)| hooks),
        "timewait_detection": f.hooks.as_ref().map(|(_, detection)| detection),
        "netns": netns,
        "sysctls": {
            "tcp_tw_reuse": s.tcp_tw_reuse,
            "tcp_fin_timeout": s.tcp_fin_timeout,
            "tcp_max_tw_buckets": s.tcp_max_tw_buckets,
            "ip_local_port_range": s.ip_local_port_range.map(|(a, b)| json!([a, b])),
            "tcp_syncookies": s.tcp_syncookies,
            "tcp_tw_recycle": s.tcp_tw_recycle,
            "tcp_tw_recycle_exists": s.tcp_tw_recycle.is_some(),
        },
        "sockets": {
            "timewait": c.timewait_sockets(),
            "time_wait": c.per_state[TIME_WAIT as usize],
            "timewait_fin_wait2": c.timewait_fin_wait2,
            "fin_wait2_full": c.fin_wait2_full,
            "fin_wait2": c.per_state[FIN_WAIT2 as usize],
            "syn_recv": c.per_state[SYN_RECV as usize],
            "total": c.total(),
        },
        "ephemeral": f.ports.as_ref().map(|p| json!({
            "range_size": p.range_size,
            "timewait_in_range": p.timewait_in_range,
            "max_per_peer": p.max_per_peer,
            "peer": p.peer.map(|(a, port)| endpoint_text(a, port)),
        })),
        "netstat": pick(&f.netstat),
        "netstat_delta": f.netstat_delta.as_ref().map(pick),
        "observed": f.observed.as_ref().map(|(window, o)| json!({
            "seconds": window.as_secs_f64(),
            "handoffs": o.handoffs,
            "time_wait_entries": o.time_wait_entries,
            "expired": o.expired,
            "fin_timeout": o.fin_timeout,
            "reused": o.reused,
            "killed": o.killed,
        })),
        "findings": findings.iter().map(|x| json!({
            "topic": x.topic, "text": x.text, "advice": x.advice,
        })).collect::<Vec<_>>(),
    });
    write_value(out, &record);
}

pub fn write_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(text) => {
            out.push(b'"');
            escape_into(out, text);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// An address as text; IPv4 without the formatting machinery (hot path).
pub fn write_addr(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            let mut num = itoa::Buffer::new();
            let [a, b, c, d] = a.octets();
            out.extend_from_slice(num.format(a).as_bytes());
            for octet in [b, c, d] {
                out.push(b'.');
                out.extend_from_slice(num.format(octet).as_bytes());
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// Lower-case hex without leading zeros.
pub(crate) fn write_hex(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [b'0'; 16];
    let mut i = buf.len();
    let mut v = value;
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

pub fn write_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string from bytes that are normally ASCII (a task's comm). Bytes
/// that are not valid UTF-8 become U+FFFD.
pub fn write_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    match std::str::from_utf8(bytes) {
        Ok(text) => escape_into(out, text),
        Err(_) => escape_into(out, &String::from_utf8_lossy(bytes)),
    }
    out.push(b'"');
}

fn escape_into(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 | 0x7f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::printer::fixtures::{clock, transition, ALL_KNOWN};
    use crate::printer::human::write_endpoint;
    use tcptrace_common::{tcp_state::*, *};

    #[test]
    fn json_record_has_every_field() {
        let t = transition(
            AF_INET,
            FIN_WAIT2,
            CLOSE,
            ALL_KNOWN | EVENT_TIMEWAIT_CHECKED | EVENT_TIMEWAIT_HANDOFF,
        );
        let mut out = Vec::new();
        write_transition(&mut out, &clock(), &t, Default::default());
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "transition");
        assert_eq!(v["time"], "2026-11-25T17:58:01.000000123Z");
        assert_eq!(v["ktime_ns"], 1_000_000_123u64);
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["laddr"], "127.0.0.1");
        assert_eq!(v["lport"], 45678);
        assert_eq!(v["raddr"], "10.1.2.3");
        assert_eq!(v["rport"], 80);
        assert_eq!(v["old"], "FIN_WAIT2");
        assert_eq!(v["new"], "CLOSE");
        assert_eq!(v["in_old_ns"], 1_500_000);
        assert_eq!(v["age_ns"], 2_000_000_000u64);
        assert_eq!(v["timewait"], true);
        assert_eq!(v["sk"], "0xffff888100001234");
    }

    #[test]
    fn json_unknowns_are_null() {
        let t = transition(AF_INET6, FIN_WAIT2, CLOSE, 0);
        let mut out = Vec::new();
        write_transition(&mut out, &clock(), &t, Default::default());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["laddr"], "::1");
        assert_eq!(v["raddr"], "2001:db8::7");
        assert_eq!(v["pid"], 0);
        assert_eq!(v["owner_known"], false);
        assert_eq!(v["comm"], "");
        assert!(v["in_old_ns"].is_null() && v["age_ns"].is_null());
        assert!(v["timewait"].is_null());
    }

    #[test]
    fn json_escapes_comm() {
        let mut out = Vec::new();
        write_string(&mut out, b"a\"b\\c\x01\xff");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\u0001\u{fffd}\""
        );
    }

    #[test]
    fn hex_and_addresses() {
        let text = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(&|o| write_hex(o, 0)), "0");
        assert_eq!(
            text(&|o| write_hex(o, 0xffff_8881_0abc_0000)),
            "ffff88810abc0000"
        );
        assert_eq!(
            text(&|o| write_addr(o, "10.0.255.1".parse().unwrap())),
            "10.0.255.1"
        );
        assert_eq!(
            text(&|o| write_endpoint(o, "fe80::1".parse().unwrap(), 443)),
            "[fe80::1]:443"
        );
    }
}
