//! The tcptrace probe.
//!
//! `inet_sock_set_state` (a BTF tracepoint on sock:inet_sock_set_state)
//! sees every TCP state change of a full socket. It keeps one record per
//! connection (when it entered its state, when it was born, established and
//! began closing, who owns it), filters in the kernel with the load-time
//! `CONFIG`, and writes what passes to the `EVENTS` ring buffer.
//!
//! The tracepoint never sees TIME_WAIT: tcp_time_wait() hands the
//! connection to a small `inet_timewait_sock` and closes the full socket.
//! Three more hooks follow that timewait socket (fentry is not available
//! everywhere, tracepoints are):
//! - `timer_start`: tcp_time_wait() arms the timewait socket's timer
//!   (function tw_timer_handler) just before closing the full socket, on
//!   the same CPU. The FIN_WAIT2/CLOSING/FIN_WAIT1 -> CLOSE that follows is
//!   a hand-off exactly when this CPU armed a timewait timer for the same
//!   ports just before; the record moves to `TIMEWAITS`.
//! - `kfree_skb`: the peer's FIN reaching a timewait socket in sub-state
//!   FIN_WAIT2 is consumed and freed with rx_sk = that socket, already in
//!   sub-state TIME_WAIT: the true FIN_WAIT2 -> TIME_WAIT.
//! - `timer_cancel`: the timer is detached when it expires (then its
//!   expiry is due: 60 s of TIME_WAIT, or tcp_fin_timeout in FIN_WAIT2) and
//!   when the socket is removed early (reuse, RST, namespace exit).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_jiffies64, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    },
    macros::{btf_tracepoint, fentry, fexit, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, FEntryContext, FExitContext},
};
use tcptrace_common::{
    closer, end_reason, hist_by, metric, tcp_state::*, ArmedTimewait, ArmedTimewaits,
    ConnectionEvent, Endpoints, HistKey, HistValue, ListenerOwner, PendingCancel, ProbeConfig,
    RecentConnect, SocketRecord, TransitionEvent, AF_INET, AF_INET6, ARMED_SLOTS, COMM_LEN,
    CONFIG_EMIT_CONNECTIONS, CONFIG_EMIT_TRANSITIONS, CONFIG_HANDOFF_ONLY, CONFIG_HIDE_HANDOFFS,
    CONFIG_HISTOGRAMS, CONFIG_IPV4, CONFIG_IPV6, CONFIG_LPORT_FILTER, CONFIG_NETNS_FILTER,
    CONFIG_PID_FILTER, CONFIG_PORT_EITHER, CONFIG_RPORT_FILTER, CONFIG_TIMEWAIT_EVENTS,
    CONFIG_TIMEWAIT_HOOK, CONN_CLOSING_KNOWN, CONN_ESTABLISHED_KNOWN, CONN_HANDSHAKE_KNOWN,
    CONN_OWNER_KNOWN, CONN_START_SEEN, CONN_TIME_WAIT_KNOWN, COUNTER_CONNECTIONS, COUNTER_COUNT,
    COUNTER_EMITTED, COUNTER_HANDOFFS_UNSEEN, COUNTER_HIST_OVERFLOW, COUNTER_READ_FAILED,
    COUNTER_RECORDS_ADDED, COUNTER_RECORDS_REMOVED, COUNTER_RING_FULL, COUNTER_SOCKET_MAP_FULL,
    COUNTER_TIMEWAIT_ENTRIES_LOST, COUNTER_TIMEWAIT_HANDOFFS, COUNTER_TIMEWAIT_MAP_FULL,
    EVENT_AGE_KNOWN, EVENT_IN_OLD_KNOWN, EVENT_OWNER_KNOWN, EVENT_TIMEWAIT_CHECKED,
    EVENT_TIMEWAIT_HANDOFF, EVENT_TIMEWAIT_SOCKET, HANDOFF_WINDOW_NS, HIST_BUCKETS,
    RECORD_SYN_RECV_DEFERRED,
};

const IPPROTO_TCP: u16 = 6;
/// A timewait socket removed within this long of a connect() on the same
/// CPU by the same task, towards the same port, was taken over by it. Both
/// happen in that one connect() call, microseconds apart on hardware; the
/// margin is for virtual CPUs, which the host may stop in between.
const REUSE_WINDOW_NS: u64 = HANDOFF_WINDOW_NS;

/// Userspace writes the real configuration here at load time.
#[no_mangle]
static CONFIG: ProbeConfig = ProbeConfig::empty();

/// Sized by userspace (`--ring-size`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// One record per live full socket, keyed by its kernel address; deleted at
/// the socket's final CLOSE because the address is soon reused. LRU so that
/// a full map evicts the oldest record instead of refusing new sockets.
#[map]
static SOCKETS: LruHashMap<u64, SocketRecord> = LruHashMap::with_max_entries(131_072, 0);

/// Each CPU's scratch record for a socket seen for the first time (map
/// memory: the stack is too small to hold it beside the rest).
#[map]
static NEW_RECORD: PerCpuArray<SocketRecord> = PerCpuArray::with_max_entries(1, 0);

/// The same records, moved over at the hand-off, for connections living in
/// a timewait socket (keyed by its address). LRU for the same reason.
#[map]
static TIMEWAITS: LruHashMap<u64, SocketRecord> = LruHashMap::with_max_entries(131_072, 0);

/// Owner of each listening port (filled at listen() and by userspace at
/// start-up for listeners that already existed).
#[map]
static LISTENERS: HashMap<u16, ListenerOwner> = HashMap::with_max_entries(4096, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// ktime of the last forced wake-up of the reader (one slot, all CPUs).
#[map]
static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static ARMED_TIMEWAIT: PerCpuArray<ArmedTimewaits> = PerCpuArray::with_max_entries(1, 0);

#[map]
static PENDING_CANCEL: PerCpuArray<PendingCancel> = PerCpuArray::with_max_entries(1, 0);

#[map]
static RECENT_CONNECT: PerCpuArray<RecentConnect> = PerCpuArray::with_max_entries(1, 0);

/// Duration histograms, per metric and `--by` key; per CPU so that no
/// update needs an atomic. Sized by userspace; once full, new keys go to
/// the metric's "other" histogram.
#[map]
static HISTOGRAMS: PerCpuHashMap<HistKey, HistValue> = PerCpuHashMap::with_max_entries(1024, 0);

/// A zeroed histogram to insert from (too big for the BPF stack).
#[map]
static HIST_ZERO: PerCpuArray<HistValue> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn config_flags() -> u32 {
    // Volatile reads: the static's initializer is a placeholder that
    // userspace replaces, so the compiler must not fold it.
    unsafe { core::ptr::read_volatile(&CONFIG.flags) }
}

#[inline(always)]
fn config_u64(field: &u64) -> u64 {
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
fn config_u32(field: &u32) -> u32 {
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
fn wants(old: u8, new: u8) -> bool {
    let mask = unsafe { core::ptr::read_volatile(&CONFIG.transitions[(old & 15) as usize]) };
    new < 16 && mask & (1 << new) != 0
}

#[inline(always)]
fn port_allowed(bitmap: &[u64; 1024], port: u16) -> bool {
    let word = unsafe { core::ptr::read_volatile(&bitmap[(port >> 6) as usize]) };
    word & (1u64 << (port & 63)) != 0
}

#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        unsafe { *counter += 1 };
    }
}

/// Loads a field of an object a BTF tracepoint was handed (or reached
/// through one), directly: the verifier knows the pointer's BTF type and
/// the offset (a frozen read-only global), checks the access against that
/// type, and makes the load fault-safe. Cheaper than a
/// bpf_probe_read_kernel call; only for fields inside the pointed-to type
/// itself (not, say, inet_sock's fields through a struct sock pointer).
#[inline(always)]
fn load_btf_field<T: Copy>(base: u64, offset: &u32) -> T {
    unsafe { core::ptr::read_volatile((base + config_u32(offset) as u64) as *const T) }
}

/// A full socket's local port: skc_num (a direct load), or at a -> CLOSE,
/// where the kernel has cleared it already, inet_sock.inet_sport (beyond
/// struct sock: a helper read).
#[inline(always)]
fn local_port(sk: u64) -> Result<u16, i64> {
    let num: u16 = load_btf_field(sk, &CONFIG.offsets.tw_num);
    if num != 0 {
        return Ok(num);
    }
    Ok(u16::from_be(read_field::<u16>(
        sk,
        &CONFIG.offsets.sk_sport,
    )?))
}

/// Reads a field of a kernel object at an offset userspace took from BTF.
#[inline(always)]
fn read_field<T>(base: u64, offset: &u32) -> Result<T, i64> {
    Ok(unsafe { bpf_probe_read_kernel((base + config_u32(offset) as u64) as *const T)? })
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    if let Err(err) = try_inet_sock_set_state(&ctx) {
        // Only reads of the socket fail; the event is lost, and counted.
        count(COUNTER_READ_FAILED);
        diagnostics::read_failed(err);
    }
    0
}

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> u32 {
    let _ = try_timer_start(&ctx);
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> u32 {
    let _ = try_timer_cancel(&ctx);
    0
}

/// Where BPF trampolines are allowed, the timewait socket's birth and end
/// are hooked in the timewait code itself, which runs only for timewait
/// sockets, instead of on every timer of the machine. Birth: tcp_time_wait()
/// arms the new socket's timer, then inserts it with
/// inet_twsk_hashdance(tw, sk, ...) just before the full socket's
/// -> CLOSE, on the same CPU.
#[fentry(function = "inet_twsk_hashdance")]
pub fn twsk_hashdance(ctx: FEntryContext) -> u32 {
    let tw: u64 = ctx.arg(0);
    if let Ok(substate) = read_field::<u8>(tw, &CONFIG.offsets.tw_substate) {
        let _ = timewait_born(tw, substate, unsafe { bpf_ktime_get_ns() });
    }
    0
}

/// End: inet_twsk_kill(tw) unhashes a timewait socket exactly once, from
/// its timer's handler (expiry) or when it is removed early (reuse, RST,
/// namespace exit).
#[fentry(function = "inet_twsk_kill")]
pub fn twsk_kill(ctx: FEntryContext) -> u32 {
    let tw: u64 = ctx.arg(0);
    let _ = try_twsk_kill(tw);
    0
}

fn try_twsk_kill(tw: u64) -> Result<(), i64> {
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
fn end_reason_of(expired: bool, substate: u8, now: u64, rport: u16) -> u8 {
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

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> u32 {
    let _ = resolve_pending_cancel(0);
    let _ = try_kfree_skb(&ctx);
    0
}

/// The peer's FIN at a timewait socket where kfree_skb has no rx_sk
/// (before Linux 6.11) and trampolines are allowed: after
/// tcp_timewait_state_process(tw, skb, th), which runs only for packets to
/// timewait sockets (cheaper than a hook on every freed packet), the
/// socket's sub-state says whether that packet was the FIN.
#[fexit(function = "tcp_timewait_state_process")]
pub fn timewait_state_process(ctx: FExitContext) -> u32 {
    let tw: u64 = ctx.arg(0);
    let _ = packet_at_timewait(tw);
    0
}

/// The timewait socket a timer belongs to, if it is a timewait timer.
#[inline(always)]
fn timewait_of(timer: u64) -> Option<u64> {
    // The tracepoint's timer_list pointer: a direct load.
    let function: u64 = load_btf_field(timer, &CONFIG.offsets.timer_function);
    if function != config_u64(&CONFIG.tw_timer_handler) {
        return None;
    }
    Some(timer - config_u32(&CONFIG.offsets.tw_timer) as u64)
}

fn try_timer_start(ctx: &BtfTracePointContext) -> Result<(), i64> {
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
fn timewait_born(tw: u64, substate: u8, now: u64) -> Result<(), i64> {
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
    if slot.ktime_ns != 0 {
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

fn try_timer_cancel(ctx: &BtfTracePointContext) -> Result<(), i64> {
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
fn resolve_pending_cancel(timer: u64) -> bool {
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
fn reused_by_connect(now: u64, rport: u16) -> bool {
    let Some(slot) = RECENT_CONNECT.get_ptr(0) else {
        return false;
    };
    let recent = unsafe { &*slot };
    recent.ktime_ns != 0
        && now.wrapping_sub(recent.ktime_ns) < REUSE_WINDOW_NS
        && recent.pid_tgid == bpf_get_current_pid_tgid()
        && recent.rport == rport
}

fn try_kfree_skb(ctx: &BtfTracePointContext) -> Result<(), i64> {
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
fn packet_at_timewait(tw: u64) -> Result<(), i64> {
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
fn enter_time_wait(tw: u64, record: &mut SocketRecord, now: u64) -> Result<(), i64> {
    let in_fin_wait2 = now.wrapping_sub(record.state_since_ns);
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
fn end_timewait(tw: u64, substate: u8, reason: u8, endpoints: &Endpoints, now: u64) {
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
    let dwell = now.wrapping_sub(record.state_since_ns);
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

/// Namespace, family, ports and addresses of a timewait socket.
#[inline(always)]
fn timewait_endpoints(tw: u64, endpoints: &mut Endpoints) -> Result<(), i64> {
    let offsets = &CONFIG.offsets;
    endpoints.family = read_field(tw, &offsets.sk_family)?;
    endpoints.lport = read_field(tw, &offsets.tw_num)?;
    endpoints.rport = u16::from_be(read_field(tw, &offsets.tw_dport)?);
    endpoints.netns = netns_of(tw)?;
    // Read straight into place: a copy would need room on the stack.
    let (laddr, raddr) = if endpoints.family == AF_INET6 {
        (&offsets.sk_v6_saddr, &offsets.sk_v6_daddr)
    } else {
        endpoints.laddr = [0; 16];
        endpoints.raddr = [0; 16];
        (&offsets.tw_saddr, &offsets.tw_daddr)
    };
    let len = if endpoints.family == AF_INET6 { 16 } else { 4 };
    read_bytes(tw, laddr, &mut endpoints.laddr[..len])?;
    read_bytes(tw, raddr, &mut endpoints.raddr[..len])
}

/// Reads bytes of a kernel object at an offset userspace took from BTF.
#[inline(always)]
fn read_bytes(base: u64, offset: &u32, dest: &mut [u8]) -> Result<(), i64> {
    unsafe { bpf_probe_read_kernel_buf((base + config_u32(offset) as u64) as *const u8, dest) }
        .map_err(|e| e as i64)
}

/// Inode number of the network namespace of a socket (full or timewait).
#[inline(always)]
fn netns_of(sk: u64) -> Result<u32, i64> {
    let net: u64 = read_field(sk, &CONFIG.offsets.skc_net)?;
    read_field(net, &CONFIG.offsets.net_inum)
}

/// What happened in a timewait socket, for `emit_timewait_transition`.
struct TimewaitChange {
    tw: u64,
    now: u64,
    /// Time in `old`, when known.
    in_old_ns: Option<u64>,
    old: u8,
    new: u8,
    reason: u8,
}

/// Not inlined: its event would otherwise share the caller's BPF stack.
#[inline(never)]
fn emit_timewait_transition(change: &TimewaitChange, record: &SocketRecord, endpoints: &Endpoints) {
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
    let owner_known = record.flags & EVENT_OWNER_KNOWN != 0;
    if !passes_filters_apart(endpoints, owner_known, record.pid) {
        return;
    }
    let mut event_flags = EVENT_TIMEWAIT_SOCKET | (record.flags & EVENT_OWNER_KNOWN);
    if in_old_ns.is_some() {
        event_flags |= EVENT_IN_OLD_KNOWN;
    }
    if record.flags & EVENT_AGE_KNOWN != 0 {
        event_flags |= EVENT_AGE_KNOWN;
    }
    emit_transition(now, || TransitionEvent {
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
    });
}

/// The filters every record passes before it reaches userspace.
/// `passes_filters` as a call of its own, for the rarer paths: their
/// frames stay small (see `StateChange`), the state change's path pays no
/// call.
#[inline(never)]
fn passes_filters_apart(endpoints: &Endpoints, owner_known: bool, pid: u32) -> bool {
    passes_filters(endpoints, owner_known, pid)
}

#[inline(always)]
fn passes_filters(endpoints: &Endpoints, owner_known: bool, pid: u32) -> bool {
    let flags = config_flags();
    let family_ok = match endpoints.family {
        AF_INET => flags & CONFIG_IPV4 != 0,
        AF_INET6 => flags & CONFIG_IPV6 != 0,
        _ => false,
    };
    if !family_ok {
        return false;
    }
    if flags & CONFIG_NETNS_FILTER != 0 && endpoints.netns != config_u32(&CONFIG.netns) {
        return false;
    }
    let (sport, dport) = (endpoints.lport, endpoints.rport);
    if flags & CONFIG_PORT_EITHER != 0 {
        if !port_allowed(&CONFIG.lports, sport) && !port_allowed(&CONFIG.rports, dport) {
            return false;
        }
    } else {
        if flags & CONFIG_LPORT_FILTER != 0 && !port_allowed(&CONFIG.lports, sport) {
            return false;
        }
        if flags & CONFIG_RPORT_FILTER != 0 && !port_allowed(&CONFIG.rports, dport) {
            return false;
        }
    }
    !(flags & CONFIG_PID_FILTER != 0 && (!owner_known || pid != config_u32(&CONFIG.pid)))
}

#[inline(always)]
fn emit_transition(now: u64, event: impl FnOnce() -> TransitionEvent) {
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

/// Wake-ups cost a context switch each (and an IPI to the reader's CPU);
/// under load one per event would cost more than the event. Wake the
/// reader at most once per `wake_interval_ns`, or, when the ring fills past
/// `wake_bytes`, at most sixteen times as often: a reader that has fallen
/// behind is busy draining already, and waking it on every event would
/// only interrupt it. An event that stays unannounced is read at the next
/// wake-up or by the reader's catch-up read a few milliseconds after its
/// last wake.
#[inline(always)]
fn wakeup_flag(now: u64) -> u64 {
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

/// The timewait socket this ->CLOSE hands the connection to, if it is
/// tcp_time_wait() handing over: (address, sub-state).
#[inline(always)]
fn timewait_handoff(now: u64, lport: u16, rport: u16) -> Option<(u64, u8)> {
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

/// Transitions that only a system call of the owning process performs
/// (connect, listen, close/shutdown): the current task is the owner.
#[inline(always)]
fn runs_in_owner_context(old: u8, new: u8) -> bool {
    (old == CLOSE && (new == SYN_SENT || new == LISTEN)) || new == FIN_WAIT1 || new == LAST_ACK
}

/// What the time spent in `state` counts towards, if anything.
#[inline(always)]
fn dwell_metric(state: u8) -> Option<u8> {
    match state {
        TIME_WAIT => Some(metric::TIME_WAIT),
        SYN_SENT | SYN_RECV => Some(metric::HANDSHAKE),
        ESTABLISHED => Some(metric::ESTABLISHED),
        CLOSE_WAIT => Some(metric::CLOSE_WAIT),
        FIN_WAIT2 => Some(metric::FIN_WAIT2),
        LAST_ACK => Some(metric::LAST_ACK),
        _ => None,
    }
}

/// Floor of log2, 0 for 0 and 1 (BPF has no count-leading-zeros).
#[inline(always)]
fn log2(mut v: u64) -> usize {
    let mut r = 0usize;
    let mut shift = 32u32;
    while shift > 0 {
        if v >> shift != 0 {
            v >>= shift;
            r += shift as usize;
        }
        shift >>= 1;
    }
    r
}

/// Adds one duration to its histogram (per metric and `--by` key).
#[inline(never)]
fn record_duration(which: u8, ns: u64, record: &SocketRecord, endpoints: &Endpoints) {
    if !passes_filters_apart(endpoints, record.flags & EVENT_OWNER_KNOWN != 0, record.pid) {
        return;
    }
    let mut key = HistKey {
        metric: which,
        family: 0,
        other: 0,
        _pad: [0; 5],
        value: [0; 16],
    };
    match config_u32(&CONFIG.hist_by) {
        hist_by::LPORT => key.value[..2].copy_from_slice(&endpoints.lport.to_ne_bytes()),
        hist_by::RPORT => key.value[..2].copy_from_slice(&endpoints.rport.to_ne_bytes()),
        hist_by::RADDR => {
            key.family = endpoints.family as u8;
            key.value = endpoints.raddr;
        }
        hist_by::COMM => key.value = record.comm,
        hist_by::PID => key.value[..4].copy_from_slice(&record.pid.to_ne_bytes()),
        _ => {}
    }
    let value = match HISTOGRAMS.get_ptr_mut(key) {
        Some(value) => value,
        None => {
            let Some(zero) = HIST_ZERO.get_ptr(0) else {
                return;
            };
            let zero = unsafe { &*zero };
            // Another CPU may insert the same key first: that is fine.
            let _ = HISTOGRAMS.insert(key, zero, BPF_NOEXIST as u64);
            match HISTOGRAMS.get_ptr_mut(key) {
                Some(value) => value,
                None => {
                    // Full: this key's durations go to the metric's "other".
                    count(COUNTER_HIST_OVERFLOW);
                    key = HistKey {
                        metric: which,
                        family: 0,
                        other: 1,
                        _pad: [0; 5],
                        value: [0; 16],
                    };
                    let _ = HISTOGRAMS.insert(key, zero, BPF_NOEXIST as u64);
                    match HISTOGRAMS.get_ptr_mut(key) {
                        Some(value) => value,
                        None => return,
                    }
                }
            }
        }
    };
    let value = unsafe { &mut *value };
    let bucket = log2(ns);
    if bucket < HIST_BUCKETS {
        value.buckets[bucket] += 1;
    }
    value.count += 1;
    value.sum_ns += ns;
    if ns > value.max_ns {
        value.max_ns = ns;
    }
}

/// A connection is over: its lifetime histogram.
#[inline(always)]
fn record_lifetime(record: &SocketRecord, endpoints: &Endpoints, now: u64) {
    if config_flags() & CONFIG_HISTOGRAMS != 0 && record.flags & EVENT_AGE_KNOWN != 0 {
        let lifetime = now.wrapping_sub(record.first_seen_ns);
        record_duration(metric::LIFETIME, lifetime, record, endpoints);
    }
}

/// A connection is over: its `life` record. Calls no other out-of-line
/// function (see `StateChange` on stack depth).
#[inline(never)]
fn connection_over(record: &SocketRecord, endpoints: &Endpoints, end: u8, now: u64) {
    let flags = config_flags();
    let start_seen = record.flags & EVENT_AGE_KNOWN != 0;
    let lifetime = now.wrapping_sub(record.first_seen_ns);
    if flags & CONFIG_EMIT_CONNECTIONS == 0 {
        return;
    }
    let owner_known = record.flags & EVENT_OWNER_KNOWN != 0;
    if !passes_filters_apart(endpoints, owner_known, record.pid) {
        return;
    }
    let mut conn_flags = 0u8;
    if owner_known {
        conn_flags |= CONN_OWNER_KNOWN;
    }
    if start_seen {
        conn_flags |= CONN_START_SEEN;
    }
    let (est, closing, tw) = (
        record.established_at_ns,
        record.closing_at_ns,
        record.time_wait_at_ns,
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
    let Some(mut entry) = EVENTS.reserve::<ConnectionEvent>(0) else {
        count(COUNTER_RING_FULL);
        return;
    };
    entry.write(ConnectionEvent {
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
    });
    entry.submit(wakeup_flag(now));
    count(COUNTER_CONNECTIONS);
}

/// The socket's addresses as the tracepoint's own record would have them.
/// Loaded as 8- and 4-byte words: a byte array through a volatile load is
/// taken apart byte by byte, which costs time and stack.
#[inline(always)]
fn socket_addresses(sk: u64, endpoints: &mut Endpoints) -> Result<(), i64> {
    let offsets = &CONFIG.offsets;
    let (laddr, raddr) = (
        endpoints.laddr.as_mut_ptr() as *mut u64,
        endpoints.raddr.as_mut_ptr() as *mut u64,
    );
    // SAFETY: laddr and raddr are 16 bytes each; unaligned writes.
    unsafe {
        if endpoints.family == AF_INET6 {
            let l = config_u32(&offsets.sk_v6_saddr);
            let r = config_u32(&offsets.sk_v6_daddr);
            laddr.write_unaligned(load_word(sk, l));
            laddr.add(1).write_unaligned(load_word(sk, l + 8));
            raddr.write_unaligned(load_word(sk, r));
            raddr.add(1).write_unaligned(load_word(sk, r + 8));
        } else {
            // The bound local address (skc_rcv_saddr, inside struct sock: a
            // direct load) equals inet_saddr once a TCP socket has an address.
            let l: u32 = load_btf_field(sk, &offsets.tw_saddr);
            let r: u32 = load_btf_field(sk, &offsets.sk_daddr);
            laddr.write_unaligned(u64::from(l));
            laddr.add(1).write_unaligned(0);
            raddr.write_unaligned(u64::from(r));
            raddr.add(1).write_unaligned(0);
        }
    }
    Ok(())
}

/// An 8-byte word of a BTF-typed object at `offset` (see `load_btf_field`).
#[inline(always)]
fn load_word(base: u64, offset: u32) -> u64 {
    unsafe { core::ptr::read_volatile((base + offset as u64) as *const u64) }
}

/// Moves a connection's record to its new timewait socket at the hand-off.
/// `record.state_since_ns` is still when the full socket entered `old`.
/// `change.new` is the timewait socket's sub-state. Returns whether the
/// connection is in TIME_WAIT from now (the caller reports that).
#[inline(never)]
fn hand_off(change: &TimewaitChange, record: &mut SocketRecord) -> bool {
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

/// What one run of the state program learned, kept once and handed by
/// reference to the steps it calls. Kernels before 6.13 give all frames of
/// a call chain 512 bytes together (6.1's verifier refuses more), and BPF
/// has four callee-saved registers: one big function spills most of its
/// locals. So the rarer steps (a socket's first sight, the hand-off, a
/// connection's end, histograms) are out of line and call only leaf
/// functions, one call deep; the common path stays inline, as each BPF
/// call costs about 15 ns (measured: 60 ns per run for four calls).
struct StateChange {
    sk: u64,
    now: u64,
    in_old_ns: u64,
    age_ns: u64,
    endpoints: Endpoints,
    pid: u32,
    comm: [u8; COMM_LEN],
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

fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
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
    if !passes_filters(
        &change.endpoints,
        event_flags & EVENT_OWNER_KNOWN != 0,
        change.pid,
    ) {
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
fn note_owner(change: &mut StateChange) {
    let pid_tgid = bpf_get_current_pid_tgid();
    change.pid = (pid_tgid >> 32) as u32;
    change.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    change.event_flags |= EVENT_OWNER_KNOWN;
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
fn known_socket(
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
        record.flags |= EVENT_OWNER_KNOWN;
    } else if record.flags & EVENT_OWNER_KNOWN != 0 {
        change.pid = record.pid;
        change.comm = record.comm;
        change.event_flags |= EVENT_OWNER_KNOWN;
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
fn first_sight(change: &mut StateChange, born: bool) -> Option<*mut SocketRecord> {
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
            change.event_flags |= EVENT_OWNER_KNOWN;
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
    // From now on the time in each state is known.
    record.flags =
        (change.event_flags & (EVENT_OWNER_KNOWN | EVENT_AGE_KNOWN)) | EVENT_IN_OLD_KNOWN;
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
fn report_syn_recv(change: &StateChange) {
    if config_flags() & CONFIG_EMIT_TRANSITIONS == 0 || !wants(LISTEN, SYN_RECV) {
        return;
    }
    let owner_known = change.event_flags & EVENT_OWNER_KNOWN != 0;
    if !passes_filters_apart(&change.endpoints, owner_known, change.pid) {
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
fn state_event(
    change: &StateChange,
    at: u64,
    (old, new): (u8, u8),
    flags: u8,
    (in_old_ns, age_ns): (u64, u64),
) -> TransitionEvent {
    TransitionEvent {
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
    }
}

/// Keeps `LISTENERS` (the owner of each listening port) up to date at
/// listen() and at a listener's close.
#[inline(never)]
fn track_listener(change: &StateChange) {
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
            _pad: 0,
            comm: change.comm,
        };
        let _ = LISTENERS.insert(port, owner, 0);
    }
}

/// Keeps the phase boundaries `life` reports.
#[inline(always)]
fn note_phase(record: &mut SocketRecord, old: u8, new: u8, now: u64) {
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

/// The probe's rare paths, told to `--probe-log` through aya-log. Off by
/// default: userspace then sets AYA_LOG_LEVEL (a read-only global) to 0, the
/// verifier sees every log call's branch as never taken and drops it, and
/// the hot path pays nothing. Each message is out of line so that its
/// formatting never shares a frame with the caller.
mod diagnostics {
    use aya_log_ebpf::{info, warn};
    use tcptrace_common::Endpoints;

    // Sockets are named by their ports: the verifier does not let a
    // socket pointer be formatted as a number. States are written
    // `state:N`, which userspace turns into the state's name (strings
    // cost the verifier far more than numbers).

    #[inline(never)]
    pub fn read_failed(err: i64) {
        warn!(
            &(),
            "reading a socket failed (error {}): its transition is lost", err
        );
    }

    #[inline(never)]
    pub fn unexpected_state(ports: &Endpoints, recorded: u8, old: u8, new: u8) {
        warn!(
            &(),
            "socket {}->{}: state:{} -> state:{}, but it was last seen entering state:{} (a transition in between went unseen)",
            ports.lport,
            ports.rport,
            old,
            new,
            recorded
        );
    }

    #[inline(never)]
    pub fn predates_tracing(ports: &Endpoints, old: u8, new: u8) {
        info!(
            &(),
            "socket {}->{}: first seen at state:{} -> state:{}: it predates tracing (or its record was evicted)",
            ports.lport,
            ports.rport,
            old,
            new
        );
    }

    #[inline(never)]
    pub fn handoff_unseen(tw: u64) {
        warn!(
            &(),
            "timewait socket {:x}: born without its hand-off (the kernel skipped the state-change program)",
            tw
        );
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
