//! Writing records to the ring buffer, and when to wake the reader.
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use tcptrace_common::{
    ConnectionEvent, Endpoints, SocketRecord, TransitionEvent, CONFIG_EMIT_TRANSITIONS,
    CONFIG_TIMEWAIT_EVENTS, COUNTER_CONNECTIONS, COUNTER_EMITTED, COUNTER_RING_FULL,
    EVENT_AGE_KNOWN, EVENT_IN_OLD_KNOWN, EVENT_OWNER_IN_CGROUP, EVENT_OWNER_KNOWN,
    EVENT_TIMEWAIT_SOCKET,
};

use crate::{
    config::{config_flags, config_u64, passes_filters_apart, CONFIG},
    maps::{count, EVENTS, LAST_WAKEUP},
    timewait::TimewaitChange,
};

#[inline(always)]
pub fn emit_transition(now: u64, event: impl FnOnce() -> TransitionEvent) {
    let Some(mut entry) = EVENTS.reserve::<TransitionEvent>(0) else {
        count(COUNTER_RING_FULL);
        return;
    };
    // Built in the ring's memory, not on the stack (the stack is 512
    // bytes for all frames together on kernels before 6.13).
    entry.write(event());
    entry.submit(wakeup_flag(now));
    count(COUNTER_EMITTED);
}

/// One finished connection (`life`), built like a transition in the ring's
/// memory.
#[inline(always)]
pub fn emit_connection(now: u64, event: impl FnOnce() -> ConnectionEvent) {
    let Some(mut entry) = EVENTS.reserve::<ConnectionEvent>(0) else {
        count(COUNTER_RING_FULL);
        return;
    };
    entry.write(event());
    entry.submit(wakeup_flag(now));
    count(COUNTER_CONNECTIONS);
}

/// Wake-ups cost a context switch each (and an IPI to the reader's CPU);
/// under load one per event would cost more than the event. Wake the
/// reader at most once per `wake_interval_ns`, or, when the ring fills past
/// `wake_bytes`, at most sixteen times as often: a reader that has fallen
/// behind is busy draining already, and waking it on every event would
/// only interrupt it. An event that stays unannounced is read at the next
/// wake-up or by the reader's catch-up read a few milliseconds after its
/// last wake.
#[inline(always)]
pub fn wakeup_flag(now: u64) -> u64 {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP as u64;
    };
    let interval = config_u64(&CONFIG.wake_interval_ns);
    let elapsed = now.wrapping_sub(unsafe { *last });
    let due = elapsed >= interval
        || (elapsed >= interval / 16
            && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config_u64(&CONFIG.wake_bytes));
    if due {
        unsafe { *last = now };
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Not inlined: its event would otherwise share the caller's BPF stack.
#[inline(never)]
pub fn emit_timewait_transition(
    change: &TimewaitChange,
    record: &SocketRecord,
    endpoints: &Endpoints,
) {
    let TimewaitChange {
        tw,
        now,
        in_old_ns,
        old,
        new,
        reason,
    } = *change;
    let flags = config_flags();
    if flags & CONFIG_EMIT_TRANSITIONS == 0 || flags & CONFIG_TIMEWAIT_EVENTS == 0 {
        return;
    }
    if !passes_filters_apart(endpoints, record.flags, record.pid) {
        return;
    }
    let mut event_flags =
        EVENT_TIMEWAIT_SOCKET | (record.flags & (EVENT_OWNER_KNOWN | EVENT_OWNER_IN_CGROUP));
    if in_old_ns.is_some() {
        event_flags |= EVENT_IN_OLD_KNOWN;
    }
    if record.flags & EVENT_AGE_KNOWN != 0 {
        event_flags |= EVENT_AGE_KNOWN;
    }
    emit_transition(now, || TransitionEvent {
        header: TransitionEvent::HEADER,
        ktime_ns: now,
        skaddr: tw,
        in_old_ns: in_old_ns.unwrap_or(0),
        age_ns: now.wrapping_sub(record.first_seen_ns),
        pid: record.pid,
        netns: endpoints.netns,
        family: endpoints.family,
        lport: endpoints.lport,
        rport: endpoints.rport,
        old,
        new,
        flags: event_flags,
        reason,
        _pad: [0; 6],
        comm: record.comm,
        laddr: endpoints.laddr,
        raddr: endpoints.raddr,
        cgroup: record.cgroup,
    });
}
