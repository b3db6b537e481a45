//! The `inet_sock_set_state` handler: every TCP state change of a full
//! socket, its record brought up to date, filtered and reported.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::BtfTracePointContext,
};
use tcptrace_common::{
    closer, end_reason, metric, tcp_state::*, Endpoints, ListenerOwner, RecentConnect,
    SocketRecord, TransitionEvent, COMM_LEN, CONFIG_EMIT_CONNECTIONS, CONFIG_EMIT_TRANSITIONS,
    CONFIG_HANDOFF_ONLY, CONFIG_HIDE_HANDOFFS, CONFIG_HISTOGRAMS, CONFIG_TIMEWAIT_HOOK,
    COUNTER_RECORDS_ADDED, COUNTER_RECORDS_REMOVED, COUNTER_SOCKET_MAP_FULL,
    COUNTER_TIMEWAIT_HANDOFFS, EVENT_AGE_KNOWN, EVENT_IN_OLD_KNOWN, EVENT_OWNER_IN_CGROUP,
    EVENT_OWNER_KNOWN, EVENT_TIMEWAIT_CHECKED, EVENT_TIMEWAIT_HANDOFF, RECORD_SYN_RECV_DEFERRED,
};

use crate::{
    config::{config_flags, current_cgroup, passes_filters, passes_filters_apart, wants, CONFIG},
    diagnostics,
    emit::{emit_timewait_transition, emit_transition},
    fields::{load_btf_field, local_port, socket_addresses},
    histograms::{dwell_metric, record_duration},
    lifetimes::{connection_over, record_lifetime},
    maps::{count, LISTENERS, NEW_RECORD, RECENT_CONNECT, SOCKETS},
    timewait::{hand_off, timewait_handoff, TimewaitChange},
};

pub const IPPROTO_TCP: u16 = 6;

/// What one run of the state program learned, kept once and handed by
/// reference to the steps it calls. Kernels before 6.13 give all frames of
/// a call chain 512 bytes together (6.1's verifier refuses more), and BPF
/// has four callee-saved registers: one big function spills most of its
/// locals. So the rarer steps (a socket's first sight, the hand-off, a
/// connection's end, histograms) are out of line and call only leaf
/// functions, one call deep; the common path stays inline, as each BPF
/// call costs about 15 ns (measured: 60 ns per run for four calls).
pub struct StateChange {
    sk: u64,
    now: u64,
    in_old_ns: u64,
    age_ns: u64,
    endpoints: Endpoints,
    pid: u32,
    comm: [u8; COMM_LEN],
    /// The owner's cgroup id (with EVENT_OWNER_KNOWN).
    cgroup: u64,
    old: u8,
    new: u8,
    /// EVENT_* bits of the transition being reported.
    event_flags: u8,
    /// The current task is the socket's owner (see `runs_in_owner_context`).
    owner_context: bool,
    /// This transition is reported later (`RECORD_SYN_RECV_DEFERRED`).
    deferred: bool,
    /// When the socket entered SYN_RECV, if that transition is reported
    /// now, before this one (0: nothing to report).
    syn_recv_at: u64,
}

pub fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    // A BTF tracepoint: the kernel passes (sk, oldstate, newstate) directly,
    // with no record to build, and guards against recursion per program,
    // counting each skipped run.
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let offsets = &CONFIG.offsets;
    let protocol: u16 = load_btf_field(sk, &offsets.sk_protocol);
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let net: u64 = load_btf_field(sk, &offsets.skc_net);
    let (old, new) = (old as u8, new as u8);
    let mut change = StateChange {
        sk,
        now: unsafe { bpf_ktime_get_ns() },
        in_old_ns: 0,
        age_ns: 0,
        endpoints: Endpoints {
            netns: load_btf_field(net, &offsets.net_inum),
            family: load_btf_field(sk, &offsets.sk_family),
            lport: local_port(sk)?,
            rport: u16::from_be(load_btf_field::<u16>(sk, &offsets.sk_dport)),
            ..Endpoints::EMPTY
        },
        pid: 0,
        comm: [0; COMM_LEN],
        cgroup: 0,
        old,
        new,
        event_flags: 0,
        owner_context: runs_in_owner_context(old, new),
        deferred: false,
        syn_recv_at: 0,
    };
    let now = change.now;
    let flags = config_flags();
    if change.owner_context {
        note_owner(&mut change);
    }

    let closing_from_fin = new == CLOSE && (old == FIN_WAIT1 || old == FIN_WAIT2 || old == CLOSING);
    let mut handoff = None;
    if closing_from_fin && flags & CONFIG_TIMEWAIT_HOOK != 0 {
        change.event_flags |= EVENT_TIMEWAIT_CHECKED;
        handoff = timewait_handoff(now, change.endpoints.lport, change.endpoints.rport);
        if handoff.is_some() {
            change.event_flags |= EVENT_TIMEWAIT_HANDOFF;
            count(COUNTER_TIMEWAIT_HANDOFFS);
        }
    }
    // Durations and life records need the addresses whatever the filters.
    let aggregating = flags & (CONFIG_HISTOGRAMS | CONFIG_EMIT_CONNECTIONS) != 0;
    let mut have_addresses = false;
    if aggregating || handoff.is_some() {
        socket_addresses(sk, &mut change.endpoints)?;
        have_addresses = true;
    }

    // A socket's first transition: no lookup, as nothing can be known of
    // it yet (a record at its address is a dead socket's whose end went
    // unseen, and is replaced).
    let born =
        (old == CLOSE && (new == SYN_SENT || new == LISTEN)) || (old == LISTEN && new == SYN_RECV);
    let existing = if born { None } else { SOCKETS.get_ptr_mut(sk) };
    let record = match existing {
        Some(record) => {
            if let Some(which) = known_socket(&mut change, record, handoff.is_some()) {
                // Called from here, not from known_socket: one call deep.
                let record = unsafe { &*record };
                record_duration(which, change.in_old_ns, record, &change.endpoints);
            }
            Some(record)
        }
        None => first_sight(&mut change, born),
    };
    if change.syn_recv_at != 0 {
        if !have_addresses {
            socket_addresses(sk, &mut change.endpoints)?;
            have_addresses = true;
        }
        report_syn_recv(&change);
    }
    if let (CLOSE, Some(record)) = (new, record) {
        let record = unsafe { &mut *record };
        let endpoints = &change.endpoints;
        match handoff {
            Some((tw, substate)) => {
                let in_old_ns =
                    (change.event_flags & EVENT_IN_OLD_KNOWN != 0).then_some(change.in_old_ns);
                let mut handed = TimewaitChange {
                    tw,
                    now,
                    in_old_ns,
                    old,
                    new: substate,
                    reason: end_reason::NONE,
                };
                if hand_off(&handed, record) {
                    // CLOSING -> TIME_WAIT, or FIN_WAIT2 -> TIME_WAIT with
                    // the peer's FIN already in: in TIME_WAIT from now.
                    if let (FIN_WAIT2, Some(ns), true) =
                        (old, in_old_ns, flags & CONFIG_HISTOGRAMS != 0)
                    {
                        record_duration(metric::FIN_WAIT2, ns, record, endpoints);
                    }
                    handed.new = TIME_WAIT;
                    emit_timewait_transition(&handed, record, endpoints);
                }
            }
            None if old != LISTEN => {
                record_lifetime(record, endpoints, now);
                connection_over(record, endpoints, end_reason::NONE, now);
            }
            None => {}
        }
        // Final close: the address will soon be another socket's.
        if existing.is_some() && SOCKETS.remove(sk).is_ok() {
            count(COUNTER_RECORDS_REMOVED);
        }
    }
    if (new == CLOSE && old == LISTEN) || (new == LISTEN && change.owner_context) {
        track_listener(&change);
    }

    // Kernel-side filters: nothing filtered out reaches userspace.
    if flags & CONFIG_EMIT_TRANSITIONS == 0 || !wants(old, new) || change.deferred {
        return Ok(());
    }
    let event_flags = change.event_flags;
    if closing_from_fin && event_flags & EVENT_TIMEWAIT_CHECKED != 0 {
        let is_handoff = event_flags & EVENT_TIMEWAIT_HANDOFF != 0;
        if (flags & CONFIG_HANDOFF_ONLY != 0 && !is_handoff)
            || (flags & CONFIG_HIDE_HANDOFFS != 0 && is_handoff)
        {
            return Ok(());
        }
    }
    if !passes_filters(&change.endpoints, event_flags, change.pid) {
        return Ok(());
    }
    if !have_addresses {
        socket_addresses(sk, &mut change.endpoints)?;
    }
    let change = &change;
    let durations = (change.in_old_ns, change.age_ns);
    emit_transition(now, || {
        state_event(change, now, (old, new), event_flags, durations)
    });
    Ok(())
}

/// The current task owns the socket: take its pid and comm, and remember a
/// connect() for recognising the reuse of a timewait socket.
#[inline(always)]
pub fn note_owner(change: &mut StateChange) {
    let pid_tgid = bpf_get_current_pid_tgid();
    change.pid = (pid_tgid >> 32) as u32;
    change.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let (cgroup, in_cgroup) = current_cgroup();
    change.cgroup = cgroup;
    change.event_flags |= EVENT_OWNER_KNOWN | in_cgroup;
    if change.old == CLOSE && change.new == SYN_SENT && config_flags() & CONFIG_TIMEWAIT_HOOK != 0 {
        if let Some(slot) = RECENT_CONNECT.get_ptr_mut(0) {
            unsafe {
                *slot = RecentConnect {
                    ktime_ns: change.now,
                    pid_tgid,
                    rport: change.endpoints.rport,
                    _pad: [0; 6],
                }
            };
        }
    }
}

/// A transition of a socket the probe has a record of: what the event says
/// about the previous state and the owner, and the record brought up to
/// date. Returns the histogram the time in the previous state goes to.
#[inline(always)]
pub fn known_socket(
    change: &mut StateChange,
    record: *mut SocketRecord,
    handing_off: bool,
) -> Option<u8> {
    let record = unsafe { &mut *record };
    let now = change.now;
    change.in_old_ns = now.wrapping_sub(record.state_since_ns);
    change.event_flags |= EVENT_IN_OLD_KNOWN;
    if record.flags & EVENT_AGE_KNOWN != 0 {
        change.age_ns = now.wrapping_sub(record.first_seen_ns);
        change.event_flags |= EVENT_AGE_KNOWN;
    }
    if change.owner_context {
        record.pid = change.pid;
        record.comm = change.comm;
        record.cgroup = change.cgroup;
        record.flags = (record.flags & !EVENT_OWNER_IN_CGROUP)
            | EVENT_OWNER_KNOWN
            | (change.event_flags & EVENT_OWNER_IN_CGROUP);
    } else if record.flags & EVENT_OWNER_KNOWN != 0 {
        change.pid = record.pid;
        change.comm = record.comm;
        change.cgroup = record.cgroup;
        change.event_flags |= record.flags & (EVENT_OWNER_KNOWN | EVENT_OWNER_IN_CGROUP);
    }
    let old = change.old;
    if record.flags & RECORD_SYN_RECV_DEFERRED != 0 {
        record.flags &= !RECORD_SYN_RECV_DEFERRED;
        change.syn_recv_at = record.state_since_ns;
    }
    if record.state != old {
        // A transition in between was never seen (a skipped run).
        diagnostics::unexpected_state(&change.endpoints, record.state, old, change.new);
    }
    note_phase(record, old, change.new, now);
    if change.new != CLOSE {
        record.state_since_ns = now;
    }
    // FIN_WAIT2 handed to a timewait socket is measured there.
    if config_flags() & CONFIG_HISTOGRAMS != 0 && !(old == FIN_WAIT2 && handing_off) {
        return dwell_metric(old);
    }
    None
}

/// First sight of a socket: born now if this is its first transition
/// (`born`), otherwise it predates the probe. Its record is built in this
/// CPU's scratch slot and stored unless the socket is closing; returns it.
#[inline(never)]
pub fn first_sight(change: &mut StateChange, born: bool) -> Option<*mut SocketRecord> {
    if born {
        change.event_flags |= EVENT_AGE_KNOWN;
    }
    let (old, new, now) = (change.old, change.new, change.now);
    if !change.owner_context && old == LISTEN {
        // A listener's child (LISTEN -> SYN_RECV): the process that
        // listens accepts it. Or a listener that predates the probe,
        // closing: its owner was seeded from procfs.
        if let Some(owner) = unsafe { LISTENERS.get(change.endpoints.lport) } {
            change.pid = owner.pid;
            change.comm = owner.comm;
            change.cgroup = owner.cgroup;
            change.event_flags |= EVENT_OWNER_KNOWN | (owner.flags & EVENT_OWNER_IN_CGROUP);
        }
    }
    if !born {
        diagnostics::predates_tracing(&change.endpoints, old, new);
    }
    let slot = NEW_RECORD.get_ptr_mut(0)?;
    let record = unsafe { &mut *slot };
    *record = SocketRecord::new(now, new, closer::UNKNOWN);
    record.pid = change.pid;
    record.comm = change.comm;
    record.cgroup = change.cgroup;
    // From now on the time in each state is known.
    record.flags = (change.event_flags
        & (EVENT_OWNER_KNOWN | EVENT_AGE_KNOWN | EVENT_OWNER_IN_CGROUP))
        | EVENT_IN_OLD_KNOWN;
    if old == LISTEN && new == SYN_RECV && change.endpoints.rport == 0 {
        // The kernel has not given the new socket its peer yet.
        record.flags |= RECORD_SYN_RECV_DEFERRED;
        change.deferred = true;
    }
    note_phase(record, old, new, now);
    if new != CLOSE {
        if SOCKETS.insert(change.sk, &*record, 0).is_err() {
            count(COUNTER_SOCKET_MAP_FULL);
        } else {
            count(COUNTER_RECORDS_ADDED);
        }
    }
    Some(slot)
}

/// Reports a socket's deferred LISTEN -> SYN_RECV (see
/// `RECORD_SYN_RECV_DEFERRED`) with the remote end this transition knows,
/// at the time it happened and before this transition's own event.
#[inline(never)]
pub fn report_syn_recv(change: &StateChange) {
    if config_flags() & CONFIG_EMIT_TRANSITIONS == 0 || !wants(LISTEN, SYN_RECV) {
        return;
    }
    if !passes_filters_apart(&change.endpoints, change.event_flags, change.pid) {
        return;
    }
    let at = change.syn_recv_at;
    let flags = (change.event_flags & EVENT_OWNER_KNOWN) | EVENT_AGE_KNOWN;
    emit_transition(at, || {
        state_event(change, at, (LISTEN, SYN_RECV), flags, (0, 0))
    });
}

/// A full socket's transition as the ring carries it, from what the state
/// program learned; `durations` is (in_old_ns, age_ns).
#[inline(always)]
pub fn state_event(
    change: &StateChange,
    at: u64,
    (old, new): (u8, u8),
    flags: u8,
    (in_old_ns, age_ns): (u64, u64),
) -> TransitionEvent {
    TransitionEvent {
        header: TransitionEvent::HEADER,
        ktime_ns: at,
        skaddr: change.sk,
        in_old_ns,
        age_ns,
        pid: change.pid,
        netns: change.endpoints.netns,
        family: change.endpoints.family,
        lport: change.endpoints.lport,
        rport: change.endpoints.rport,
        old,
        new,
        flags,
        reason: end_reason::NONE,
        _pad: [0; 6],
        comm: change.comm,
        laddr: change.endpoints.laddr,
        raddr: change.endpoints.raddr,
        cgroup: change.cgroup,
    }
}

/// Keeps `LISTENERS` (the owner of each listening port) up to date at
/// listen() and at a listener's close.
#[inline(never)]
pub fn track_listener(change: &StateChange) {
    let port = change.endpoints.lport;
    if change.new == CLOSE {
        // Other processes may listen on the same port (SO_REUSEPORT): only
        // the owner's own listener takes the entry with it.
        let same_owner =
            unsafe { LISTENERS.get(port) }.is_some_and(|owner| owner.pid == change.pid);
        if same_owner {
            let _ = LISTENERS.remove(port);
        }
    } else {
        let owner = ListenerOwner {
            pid: change.pid,
            flags: change.event_flags & EVENT_OWNER_IN_CGROUP,
            _pad: [0; 3],
            comm: change.comm,
            cgroup: change.cgroup,
        };
        let _ = LISTENERS.insert(port, owner, 0);
    }
}

/// Keeps the phase boundaries `life` reports.
#[inline(always)]
pub fn note_phase(record: &mut SocketRecord, old: u8, new: u8, now: u64) {
    record.state = new;
    if new == ESTABLISHED {
        record.established_at_ns = now;
    }
    if old == ESTABLISHED {
        record.closing_at_ns = now;
        record.closer = match new {
            FIN_WAIT1 => closer::LOCAL,
            CLOSE_WAIT => closer::REMOTE,
            _ => closer::RESET,
        };
    } else if new == CLOSE && record.closer == closer::UNKNOWN {
        // Seen only at its end (it predates tracing): what the end says.
        record.closer = match old {
            FIN_WAIT1 | FIN_WAIT2 | CLOSING => closer::LOCAL,
            CLOSE_WAIT | LAST_ACK => closer::REMOTE,
            _ => closer::RESET,
        };
    }
}

/// Transitions that only a system call of the owning process performs
/// (connect, listen, close/shutdown): the current task is the owner.
#[inline(always)]
pub fn runs_in_owner_context(old: u8, new: u8) -> bool {
    (old == CLOSE && (new == SYN_SENT || new == LISTEN)) || new == FIN_WAIT1 || new == LAST_ACK
}
