//! The end of a connection: its lifetime histogram and its `life` record.
use tcptrace_common::{
    metric, ConnectionEvent, Endpoints, SocketRecord, CONFIG_EMIT_CONNECTIONS, CONFIG_HISTOGRAMS,
    CONN_CLOSING_KNOWN, CONN_ESTABLISHED_KNOWN, CONN_HANDSHAKE_KNOWN, CONN_OWNER_KNOWN,
    CONN_START_SEEN, CONN_TIME_WAIT_KNOWN, EVENT_AGE_KNOWN, EVENT_OWNER_KNOWN,
};

use crate::{
    config::{config_flags, passes_filters_apart},
    emit::emit_connection,
    histograms::record_duration,
};

/// A connection is over: its lifetime histogram.
#[inline(always)]
pub fn record_lifetime(record: &SocketRecord, endpoints: &Endpoints, now: u64) {
    if config_flags() & CONFIG_HISTOGRAMS != 0 && record.flags & EVENT_AGE_KNOWN != 0 {
        let lifetime = now.wrapping_sub(record.first_seen_ns);
        record_duration(metric::LIFETIME, lifetime, record, endpoints);
    }
}

/// A connection is over: its `life` record. Calls no other out-of-line
/// function (see `StateChange` on stack depth).
#[inline(never)]
pub fn connection_over(record: &SocketRecord, endpoints: &Endpoints, end: u8, now: u64) {
    let flags = config_flags();
    let start_seen = record.flags & EVENT_AGE_KNOWN != 0;
    let lifetime = now.wrapping_sub(record.first_seen_ns);
    if flags & CONFIG_EMIT_CONNECTIONS == 0 {
        return;
    }
    let owner_known = record.flags & EVENT_OWNER_KNOWN != 0;
    if !passes_filters_apart(endpoints, record.flags, record.pid) {
        return;
    }
    let mut conn_flags = 0u8;
    if owner_known {
        conn_flags |= CONN_OWNER_KNOWN;
    }
    if start_seen {
        conn_flags |= CONN_START_SEEN;
    }
    // A TIME_WAIT entry seen on another CPU may carry a clock read a
    // microsecond after this end's: the end is then its start, so that the
    // phases still add up to the lifetime (and nothing wraps around).
    let (est, closing, tw) = (
        record.established_at_ns,
        record.closing_at_ns,
        record.time_wait_at_ns.min(now),
    );
    let mut handshake_ns = 0;
    if start_seen && est != 0 {
        handshake_ns = est.wrapping_sub(record.first_seen_ns);
        conn_flags |= CONN_HANDSHAKE_KNOWN;
    }
    let mut established_ns = 0;
    if est != 0 && closing != 0 {
        established_ns = closing.wrapping_sub(est);
        conn_flags |= CONN_ESTABLISHED_KNOWN;
    }
    let mut closing_ns = 0;
    if closing != 0 {
        let closing_end = if tw != 0 { tw } else { now };
        closing_ns = closing_end.wrapping_sub(closing);
        conn_flags |= CONN_CLOSING_KNOWN;
    }
    let mut time_wait_ns = 0;
    if tw != 0 {
        time_wait_ns = now.wrapping_sub(tw);
        conn_flags |= CONN_TIME_WAIT_KNOWN;
    }
    emit_connection(now, || ConnectionEvent {
        header: ConnectionEvent::HEADER,
        ktime_ns: now,
        handshake_ns,
        established_ns,
        closing_ns,
        time_wait_ns,
        lifetime_ns: lifetime,
        pid: record.pid,
        netns: endpoints.netns,
        family: endpoints.family,
        lport: endpoints.lport,
        rport: endpoints.rport,
        closer: record.closer,
        flags: conn_flags,
        end,
        _pad: [0; 7],
        comm: record.comm,
        laddr: endpoints.laddr,
        raddr: endpoints.raddr,
        cgroup: record.cgroup,
    });
}
