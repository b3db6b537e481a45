//! Following a connection through its timewait socket: the hand-off from
//! the full socket (where the timewait socket is found, see
//! `timewait_successor`), the peer's FIN (FIN_WAIT2 -> TIME_WAIT inside it)
//! and its end (expiry, reuse, kill).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel},
    programs::BtfTracePointContext,
};
use tcptrace_common::{
    closer, end_reason, metric, tcp_state::*, Endpoints, PendingCancel, SocketRecord, AF_INET6,
    CONFIG_HISTOGRAMS, CONFIG_TIMEWAIT_HOOK, COUNTER_RECORDS_ADDED, COUNTER_RECORDS_REMOVED,
    COUNTER_TIMEWAIT_MAP_FULL, EVENT_IN_OLD_KNOWN,
};

use crate::{
    config::{config_flags, config_u32, config_u64, CONFIG},
    emit::emit_timewait_transition,
    fields::{load_btf_field, load_word, read_at, read_field, timewait_endpoints},
    histograms::{dwell_metric, record_duration},
    lifetimes::{connection_over, record_lifetime},
    maps::{count, PENDING_CANCEL, RECENT_CONNECT, TIMEWAITS},
};

/// A timewait socket removed within this long of a connect() on the same
/// CPU by the same task, towards the same port, was taken over by it. Both
/// happen in that one connect() call, microseconds apart on hardware; the
/// margin is for virtual CPUs, which the host may stop in between. Kept
/// narrower than the hand-off's: here a false match needs only the same
/// task and remote port, which a busy client has all the time.
pub const REUSE_WINDOW_NS: u64 = 20_000_000;

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

pub fn try_timer_cancel(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let timer: u64 = ctx.arg(0);
    resolve_pending_cancel();
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

/// Settles a cancel seen earlier on this CPU, at the next timer cancel or
/// packet free here. mod_timer() cancels a pending timer and starts it
/// again at once, with interrupts off: a timer pending again now, still
/// the same connection's (a freed timewait socket's memory may hold a new
/// one), was re-armed (the socket lives on); otherwise the socket is gone.
/// Inlined: `end_timewait` is then one call deep, not two.
#[inline(always)]
pub fn resolve_pending_cancel() {
    if config_flags() & CONFIG_TIMEWAIT_HOOK == 0 {
        return;
    }
    let Some(slot) = PENDING_CANCEL.get_ptr_mut(0) else {
        return;
    };
    let pending = unsafe { &mut *slot };
    if pending.tw == 0 {
        return;
    }
    let tw = pending.tw;
    pending.tw = 0;
    if rearmed(tw, pending) {
        // The peer's FIN may just have moved it to TIME_WAIT (where no
        // packet hook sees that first).
        if let Some(record) = TIMEWAITS.get_ptr_mut(tw) {
            let record = unsafe { &mut *record };
            if record.state == FIN_WAIT2
                && read_field::<u8>(tw, &CONFIG.offsets.tw_substate) == Ok(TIME_WAIT)
            {
                let _ = enter_time_wait(tw, record, unsafe { bpf_ktime_get_ns() });
            }
        }
        return;
    }
    end_timewait(
        tw,
        pending.substate,
        pending.reason,
        &pending.endpoints,
        pending.ktime_ns,
    );
}

/// Whether the cancelled timer is pending again for the same connection.
#[inline(always)]
fn rearmed(tw: u64, pending: &PendingCancel) -> bool {
    let offsets = &CONFIG.offsets;
    let queued = read_field::<u64>(pending.timer, &offsets.timer_pprev).unwrap_or(0) != 0;
    // Ports as one word: the remote port then the local one.
    let ports = read_field::<u32>(tw, &offsets.tw_dport).unwrap_or(0);
    let endpoints = &pending.endpoints;
    queued && ports == u32::from(endpoints.rport.to_be()) | (u32::from(endpoints.lport) << 16)
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
    // A record at this address is a dead socket's whose end went unseen:
    // replaced, it counts as evicted.
    if TIMEWAITS.insert(tw, *record, 0).is_err() {
        count(COUNTER_TIMEWAIT_MAP_FULL);
    } else {
        count(COUNTER_RECORDS_ADDED);
    }
    entered
}

/// The timewait socket that took over full socket `sk` at this
/// FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE, if tcp_time_wait() handed it over:
/// (address, sub-state). Just before closing the full socket, it puts the
/// new timewait socket in the socket's place, at the head of its bucket of
/// the established hash (inet_twsk_hashdance), on this CPU. Found there as
/// the same connection (namespace, family, ports, remote address) in
/// TIME_WAIT. A few entries are looked at: another CPU may have put a
/// socket in front of it since. No program on every timer of the machine
/// is needed for the birth.
#[inline(never)]
pub fn timewait_successor(sk: u64, net: u64, endpoints: &Endpoints) -> Option<(u64, u8)> {
    let offsets = &CONFIG.offsets;
    let hashinfo: u64 = if config_u32(&offsets.net_hashinfo) != 0 {
        read_field(net, &offsets.net_hashinfo).ok()?
    } else {
        config_u64(&CONFIG.tcp_hashinfo)
    };
    if hashinfo == 0 {
        return None;
    }
    let ehash: u64 = read_field(hashinfo, &offsets.hashinfo_ehash).ok()?;
    let mask: u32 = read_field(hashinfo, &offsets.hashinfo_ehash_mask).ok()?;
    let hash: u32 = load_btf_field(sk, &offsets.skc_hash);
    // struct inet_ehash_bucket is one hlist_nulls_head: its first node.
    let bucket = ehash + u64::from(hash & mask) * 8;
    let mut node: u64 = unsafe { bpf_probe_read_kernel(bucket as *const u64) }.ok()?;
    let ports = u32::from(endpoints.rport.to_be()) | (u32::from(endpoints.lport) << 16);
    let raddr = if endpoints.family == AF_INET6 {
        load_word(sk, config_u32(&offsets.sk_v6_daddr) + 8)
    } else {
        u64::from(load_btf_field::<u32>(sk, &offsets.sk_daddr))
    };
    let node_offset = u64::from(config_u32(&offsets.skc_nulls_node));
    for _ in 0..4 {
        // The chain ends in a "nulls" marker (odd).
        if node & 1 != 0 || node == 0 {
            return None;
        }
        let tw = node - node_offset;
        if read_field::<u8>(tw, &offsets.skc_state) == Ok(TIME_WAIT)
            && read_field::<u32>(tw, &offsets.tw_dport) == Ok(ports)
            && read_field::<u64>(tw, &offsets.skc_net) == Ok(net)
            && read_field::<u16>(tw, &offsets.sk_family) == Ok(endpoints.family)
        {
            let theirs = if endpoints.family == AF_INET6 {
                read_at::<u64>(tw, config_u32(&offsets.sk_v6_daddr) + 8).ok()
            } else {
                read_field::<u32>(tw, &offsets.tw_daddr).ok().map(u64::from)
            };
            if theirs == Some(raddr) {
                return Some((tw, read_field::<u8>(tw, &offsets.tw_substate).ok()?));
            }
        }
        node = unsafe { bpf_probe_read_kernel(node as *const u64) }.ok()?;
    }
    None
}
