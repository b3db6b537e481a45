//! Following a connection through its timewait socket: the birth (timer
//! armed), the hand-off from the full socket, the peer's FIN
//! (FIN_WAIT2 -> TIME_WAIT inside it) and its end (expiry, reuse, kill).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_ns},
    programs::BtfTracePointContext,
};
use tcptrace_common::{
    closer, end_reason, metric, tcp_state::*, ArmedTimewait, Endpoints, SocketRecord, ARMED_SLOTS,
    CONFIG_HISTOGRAMS, CONFIG_TIMEWAIT_HOOK, COUNTER_HANDOFFS_UNSEEN, COUNTER_RECORDS_ADDED,
    COUNTER_RECORDS_REMOVED, COUNTER_TIMEWAIT_ENTRIES_LOST, COUNTER_TIMEWAIT_MAP_FULL,
    EVENT_IN_OLD_KNOWN, HANDOFF_WINDOW_NS,
};

use crate::{
    config::{config_flags, config_u32, config_u64, CONFIG},
    diagnostics,
    emit::emit_timewait_transition,
    fields::{load_btf_field, read_field, timewait_endpoints},
    histograms::{dwell_metric, record_duration},
    lifetimes::{connection_over, record_lifetime},
    maps::{count, ARMED_TIMEWAIT, PENDING_CANCEL, RECENT_CONNECT, STATE_ATTACHED_AT, TIMEWAITS},
};

/// A timewait socket removed within this long of a connect() on the same
/// CPU by the same task, towards the same port, was taken over by it. Both
/// happen in that one connect() call, microseconds apart on hardware; the
/// margin is for virtual CPUs, which the host may stop in between. Kept
/// narrower than the hand-off's: here a false match needs only the same
/// task and remote port, which a busy client has all the time.
pub const REUSE_WINDOW_NS: u64 = 20_000_000;

/// A timewait socket's birth seen by the fentry hook (see `twsk_hashdance`).
#[inline(always)]
pub fn try_twsk_hashdance(tw: u64) -> Result<(), i64> {
    let substate = read_field::<u8>(tw, &CONFIG.offsets.tw_substate)?;
    timewait_born(tw, substate, unsafe { bpf_ktime_get_ns() })
}

pub fn try_twsk_kill(tw: u64) -> Result<(), i64> {
    let offsets = &CONFIG.offsets;
    let timer = tw + config_u32(&offsets.tw_timer) as u64;
    let expires: u64 = read_field(timer, &offsets.timer_expires)?;
    let substate: u8 = read_field(tw, &offsets.tw_substate)?;
    let mut endpoints = Endpoints::EMPTY;
    timewait_endpoints(tw, &mut endpoints)?;
    let now = unsafe { bpf_ktime_get_ns() };
    let expired = unsafe { bpf_jiffies64() }.wrapping_sub(expires) as i64 >= 0;
    let reason = end_reason_of(expired, substate, now, endpoints.rport);
    end_timewait(tw, substate, reason, &endpoints, now);
    Ok(())
}

/// Why a timewait socket ends: its timer ran out (`expired`, or in
/// FIN_WAIT2 `fin_timeout`), or it was taken over by a connect() (`reused`)
/// or removed otherwise (`killed`).
#[inline(always)]
pub fn end_reason_of(expired: bool, substate: u8, now: u64, rport: u16) -> u8 {
    if expired {
        if substate == FIN_WAIT2 {
            end_reason::FIN_TIMEOUT
        } else {
            end_reason::EXPIRED
        }
    } else if reused_by_connect(now, rport) {
        end_reason::REUSED
    } else {
        end_reason::KILLED
    }
}

/// The timewait socket a timer belongs to, if it is a timewait timer.
#[inline(always)]
pub fn timewait_of(timer: u64) -> Option<u64> {
    // The tracepoint's timer_list pointer: a direct load.
    let function: u64 = load_btf_field(timer, &CONFIG.offsets.timer_function);
    if function != config_u64(&CONFIG.tw_timer_handler) {
        return None;
    }
    Some(timer - config_u32(&CONFIG.offsets.tw_timer) as u64)
}

pub fn try_timer_start(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let timer: u64 = ctx.arg(0);
    let rearmed = resolve_pending_cancel(timer);
    let Some(tw) = timewait_of(timer) else {
        return Ok(());
    };
    let offsets = &CONFIG.offsets;
    let substate: u8 = read_field(tw, &offsets.tw_substate)?;
    let now = unsafe { bpf_ktime_get_ns() };
    if rearmed {
        // The peer's FIN may just have moved it to TIME_WAIT (kfree_skb
        // usually sees that first).
        if let Some(record) = TIMEWAITS.get_ptr_mut(tw) {
            let record = unsafe { &mut *record };
            if record.state == FIN_WAIT2 && substate == TIME_WAIT {
                enter_time_wait(tw, record, now)?;
            }
        }
        return Ok(());
    }
    timewait_born(tw, substate, now)
}

/// A new timewait socket. Its record exists from now on, so that the
/// peer's FIN is followed even if it arrives (on another CPU) before the
/// full socket's hand-off fills in the owner, or if the hand-off's run is
/// skipped: then what is known of it is only what the socket says. The
/// hand-off follows on this CPU: this socket is remembered there for it.
#[inline(always)]
pub fn timewait_born(tw: u64, substate: u8, now: u64) -> Result<(), i64> {
    let offsets = &CONFIG.offsets;
    let mut record = SocketRecord::new(now, substate, closer::LOCAL);
    if substate == TIME_WAIT {
        record.time_wait_at_ns = now;
        record.flags = EVENT_IN_OLD_KNOWN;
        record.entry_pending = 1;
    }
    // A record left by a timewait socket whose end went unseen, at the same
    // address, is replaced: it counts as evicted.
    if TIMEWAITS.insert(tw, record, 0).is_err() {
        count(COUNTER_TIMEWAIT_MAP_FULL);
    } else {
        count(COUNTER_RECORDS_ADDED);
    }
    let lport: u16 = read_field(tw, &offsets.tw_num)?;
    let dport: u16 = read_field(tw, &offsets.tw_dport)?;
    let Some(armed) = ARMED_TIMEWAIT.get_ptr_mut(0) else {
        return Ok(());
    };
    let armed = unsafe { &mut *armed };
    // A free slot, or one whose hand-off is overdue (it was skipped); with
    // every slot waiting, the oldest gives way.
    let mut chosen = 0;
    let mut oldest = u64::MAX;
    for i in 0..ARMED_SLOTS {
        let at = armed.slots[i].ktime_ns;
        if at == 0 || now.wrapping_sub(at) >= HANDOFF_WINDOW_NS {
            chosen = i;
            break;
        }
        if at < oldest {
            oldest = at;
            chosen = i;
        }
    }
    let slot = &mut armed.slots[chosen];
    if slot.ktime_ns != 0 && armed_while_traced(slot.ktime_ns) {
        // That socket's hand-off never came (the kernel skipped the run).
        count(COUNTER_HANDOFFS_UNSEEN);
        diagnostics::handoff_unseen(slot.tw);
        if let Some(orphan) = TIMEWAITS.get_ptr_mut(slot.tw) {
            let orphan = unsafe { &mut *orphan };
            if orphan.entry_pending != 0 {
                orphan.entry_pending = 0;
                count(COUNTER_TIMEWAIT_ENTRIES_LOST);
            }
        }
    }
    *slot = ArmedTimewait {
        ktime_ns: now,
        tw,
        lport,
        rport: u16::from_be(dport),
        substate,
        _pad: [0; 3],
    };
    Ok(())
}

/// Whether a birth at `at` could have had its hand-off seen: the state
/// program was attached by then (see `STATE_ATTACHED_AT`).
#[inline(always)]
fn armed_while_traced(at: u64) -> bool {
    STATE_ATTACHED_AT
        .get(0)
        .is_some_and(|&attached| attached != 0 && at >= attached)
}

pub fn try_timer_cancel(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let timer: u64 = ctx.arg(0);
    let _ = resolve_pending_cancel(0);
    let Some(tw) = timewait_of(timer) else {
        return Ok(());
    };
    let offsets = &CONFIG.offsets;
    let expires: u64 = load_btf_field(timer, &offsets.timer_expires);
    let substate: u8 = read_field(tw, &offsets.tw_substate)?;
    // The slot is free (settled above); what is known of the socket is
    // gathered there, in map memory rather than on the small stack.
    let Some(slot) = PENDING_CANCEL.get_ptr_mut(0) else {
        return Ok(());
    };
    let pending = unsafe { &mut *slot };
    timewait_endpoints(tw, &mut pending.endpoints)?;
    let now = unsafe { bpf_ktime_get_ns() };
    // The timer wheel never runs a timer before its expiry: detached at or
    // after it, this is the expiry itself.
    let expired = unsafe { bpf_jiffies64() }.wrapping_sub(expires) as i64 >= 0;
    let reason = end_reason_of(expired, substate, now, pending.endpoints.rport);
    if expired {
        end_timewait(tw, substate, reason, &pending.endpoints, now);
        return Ok(());
    }
    pending.reason = reason;
    pending.timer = timer;
    pending.ktime_ns = now;
    pending.substate = substate;
    // Set last: a set `tw` marks the slot as pending.
    pending.tw = tw;
    Ok(())
}

/// Settles a cancel seen earlier on this CPU. `timer` is the timer now being
/// started (0 for any other event): starting the cancelled one again is a
/// re-arm (returns true), anything else means the timewait socket is gone.
/// Inlined: `end_timewait` is then one call deep, not two.
#[inline(always)]
pub fn resolve_pending_cancel(timer: u64) -> bool {
    if config_flags() & CONFIG_TIMEWAIT_HOOK == 0 {
        return false;
    }
    let Some(slot) = PENDING_CANCEL.get_ptr_mut(0) else {
        return false;
    };
    let pending = unsafe { &mut *slot };
    if pending.tw == 0 {
        return false;
    }
    let tw = pending.tw;
    pending.tw = 0;
    if pending.timer == timer {
        return true;
    }
    end_timewait(
        tw,
        pending.substate,
        pending.reason,
        &pending.endpoints,
        pending.ktime_ns,
    );
    false
}

/// Whether the task removing a timewait socket is in the connect() that
/// reuses it (tcp_tw_reuse): the same task went CLOSE -> SYN_SENT on this
/// CPU just before, towards the same remote port.
#[inline(always)]
pub fn reused_by_connect(now: u64, rport: u16) -> bool {
    let Some(slot) = RECENT_CONNECT.get_ptr(0) else {
        return false;
    };
    let recent = unsafe { &*slot };
    recent.ktime_ns != 0
        && now.wrapping_sub(recent.ktime_ns) < REUSE_WINDOW_NS
        && recent.pid_tgid == bpf_get_current_pid_tgid()
        && recent.rport == rport
}

pub fn try_kfree_skb(ctx: &BtfTracePointContext) -> Result<(), i64> {
    // kfree_skb(skb, location, reason, rx_sk): rx_sk is the socket that
    // received the packet, if any.
    let rx_sk: u64 = ctx.arg(3);
    if rx_sk == 0 {
        return Ok(());
    }
    let state: u8 = read_field(rx_sk, &CONFIG.offsets.skc_state)?;
    if state != TIME_WAIT {
        return Ok(());
    }
    packet_at_timewait(rx_sk)
}

/// A packet reached timewait socket `tw` and was processed: if it was the
/// peer's FIN, the socket moved from sub-state FIN_WAIT2 to TIME_WAIT.
#[inline(always)]
pub fn packet_at_timewait(tw: u64) -> Result<(), i64> {
    let Some(record) = TIMEWAITS.get_ptr_mut(tw) else {
        return Ok(());
    };
    let record = unsafe { &mut *record };
    if record.state != FIN_WAIT2 {
        return Ok(());
    }
    let substate: u8 = read_field(tw, &CONFIG.offsets.tw_substate)?;
    if substate == TIME_WAIT {
        enter_time_wait(tw, record, unsafe { bpf_ktime_get_ns() })?;
    }
    Ok(())
}

/// An orphaned connection's timewait socket got the peer's FIN:
/// FIN_WAIT2 -> TIME_WAIT, the moment `netstat` starts showing TIME_WAIT.
#[inline(never)]
pub fn enter_time_wait(tw: u64, record: &mut SocketRecord, now: u64) -> Result<(), i64> {
    // Clock reads of two CPUs: a FIN seen a hair "before" its socket's
    // start is a FIN at its start (never a wrapped-around duration).
    let in_fin_wait2 = now.saturating_sub(record.state_since_ns);
    let known = record.flags & EVENT_IN_OLD_KNOWN != 0;
    record.state = TIME_WAIT;
    record.state_since_ns = now;
    record.time_wait_at_ns = now;
    record.flags |= EVENT_IN_OLD_KNOWN;
    let mut endpoints = Endpoints::EMPTY;
    timewait_endpoints(tw, &mut endpoints)?;
    let flags = config_flags();
    if known && flags & CONFIG_HISTOGRAMS != 0 {
        record_duration(metric::FIN_WAIT2, in_fin_wait2, record, &endpoints);
    }
    let in_old = known.then_some(in_fin_wait2);
    let change = TimewaitChange {
        tw,
        now,
        in_old_ns: in_old,
        old: FIN_WAIT2,
        new: TIME_WAIT,
        reason: end_reason::NONE,
    };
    emit_timewait_transition(&change, record, &endpoints);
    Ok(())
}

/// The end of a timewait socket: its connection is over. Out of line, and
/// calling only leaf functions, to keep each call chain's stack short.
#[inline(never)]
pub fn end_timewait(tw: u64, substate: u8, reason: u8, endpoints: &Endpoints, now: u64) {
    let flags = config_flags();
    let record = match TIMEWAITS.get_ptr(tw) {
        Some(record) => unsafe { *record },
        // Born before tracing started: what it is, from the socket itself.
        None => SocketRecord::new(now, substate, closer::LOCAL),
    };
    if TIMEWAITS.remove(tw).is_ok() {
        count(COUNTER_RECORDS_REMOVED);
    }
    let old = if record.state == TIME_WAIT {
        TIME_WAIT
    } else {
        FIN_WAIT2
    };
    // `now` may be a cancel's clock read, taken before a TIME_WAIT entry
    // another CPU recorded: an end at the entry, not 2^64 ns after it.
    let dwell = now.saturating_sub(record.state_since_ns);
    let known = record.flags & EVENT_IN_OLD_KNOWN != 0;
    if let (true, true, Some(which)) = (flags & CONFIG_HISTOGRAMS != 0, known, dwell_metric(old)) {
        record_duration(which, dwell, &record, endpoints);
    }
    record_lifetime(&record, endpoints, now);
    connection_over(&record, endpoints, reason, now);
    let in_old = known.then_some(dwell);
    let change = TimewaitChange {
        tw,
        now,
        in_old_ns: in_old,
        old,
        new: CLOSE,
        reason,
    };
    emit_timewait_transition(&change, &record, endpoints);
}

/// What happened in a timewait socket, for `emit_timewait_transition`.
pub struct TimewaitChange {
    pub tw: u64,
    pub now: u64,
    /// Time in `old`, when known.
    pub in_old_ns: Option<u64>,
    pub old: u8,
    pub new: u8,
    pub reason: u8,
}

/// The timewait socket this ->CLOSE hands the connection to, if it is
/// tcp_time_wait() handing over: (address, sub-state).
#[inline(always)]
pub fn timewait_handoff(now: u64, lport: u16, rport: u16) -> Option<(u64, u8)> {
    let armed = ARMED_TIMEWAIT.get_ptr_mut(0)?;
    let armed = unsafe { &mut *armed };
    for i in 0..ARMED_SLOTS {
        let slot = &mut armed.slots[i];
        if slot.ktime_ns != 0
            && now.wrapping_sub(slot.ktime_ns) < HANDOFF_WINDOW_NS
            && slot.lport == lport
            && slot.rport == rport
        {
            slot.ktime_ns = 0;
            return Some((slot.tw, slot.substate));
        }
    }
    None
}

/// Moves a connection's record to its new timewait socket at the hand-off.
/// `record.state_since_ns` is still when the full socket entered `old`.
/// `change.new` is the timewait socket's sub-state. Returns whether the
/// connection is in TIME_WAIT from now (the caller reports that).
#[inline(never)]
pub fn hand_off(change: &TimewaitChange, record: &mut SocketRecord) -> bool {
    let TimewaitChange {
        tw,
        now,
        in_old_ns,
        old,
        new: substate,
        ..
    } = *change;
    let existing = TIMEWAITS.get_ptr_mut(tw);
    if let Some(born) = existing {
        let born = unsafe { &mut *born };
        if substate == FIN_WAIT2 && born.state == TIME_WAIT {
            // The peer's FIN reached the new timewait socket (on another
            // CPU) before this hand-off: TIME_WAIT was reported already,
            // without an owner. Keep its start, add what the full socket knew.
            let (since, entered) = (born.state_since_ns, born.time_wait_at_ns);
            *born = *record;
            born.state = TIME_WAIT;
            born.state_since_ns = since;
            born.time_wait_at_ns = entered;
            born.flags |= EVENT_IN_OLD_KNOWN;
            return false;
        }
    }
    record.state = substate;
    record.entry_pending = 0;
    let entered = substate == TIME_WAIT;
    if entered {
        record.state_since_ns = now;
        record.time_wait_at_ns = now;
        record.flags |= EVENT_IN_OLD_KNOWN;
    } else if old != FIN_WAIT2 {
        record.state_since_ns = now;
        record.flags |= EVENT_IN_OLD_KNOWN;
    } else if in_old_ns.is_none() {
        // FIN_WAIT2 goes on in the timewait socket, from a start not seen.
        record.flags &= !EVENT_IN_OLD_KNOWN;
    }
    match existing {
        // Born a moment ago in timer_start: fill it in where it is (an
        // update would pop a new LRU node and free the old one).
        Some(born) => unsafe { *born = *record },
        None => {
            if TIMEWAITS.insert(tw, *record, 0).is_err() {
                count(COUNTER_TIMEWAIT_MAP_FULL);
            } else {
                count(COUNTER_RECORDS_ADDED);
            }
        }
    }
    entered
}
