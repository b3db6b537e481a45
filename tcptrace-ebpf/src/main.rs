//! The tcptrace probe.
//!
//! `inet_sock_set_state` (a BTF tracepoint on sock:inet_sock_set_state)
//! sees every TCP state change. It keeps one record per
//! live socket (when it entered its state, when it was born, who owns it),
//! filters in the kernel with the load-time `CONFIG`, and writes what passes
//! to the `EVENTS` ring buffer with one reserve/submit.
//!
//! `timer_start` recognises the timewait hand-off: tcp_time_wait() arms the
//! new timewait socket's timer (function tw_timer_handler) and only then
//! closes the full socket, on the same CPU and in the same context. The
//! FIN_WAIT2/CLOSING/FIN_WAIT1 -> CLOSE that follows is a hand-off exactly
//! when this CPU armed a timewait timer for the same ports just before.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
use tcptrace_common::{
    tcp_state::*, ArmedTimewait, ListenerOwner, ProbeConfig, SocketRecord, TransitionEvent,
    AF_INET, AF_INET6, COMM_LEN, CONFIG_HANDOFF_ONLY, CONFIG_IPV4, CONFIG_IPV6,
    CONFIG_LPORT_FILTER, CONFIG_PID_FILTER, CONFIG_PORT_EITHER, CONFIG_RPORT_FILTER,
    CONFIG_TIMEWAIT_HOOK, COUNTER_COUNT, COUNTER_EMITTED, COUNTER_READ_FAILED, COUNTER_RING_FULL,
    COUNTER_SOCKET_MAP_FULL, COUNTER_TIMEWAIT_HANDOFFS, EVENT_AGE_KNOWN, EVENT_IN_OLD_KNOWN,
    EVENT_OWNER_KNOWN, EVENT_TIMEWAIT_CHECKED, EVENT_TIMEWAIT_HANDOFF,
};

const IPPROTO_TCP: u16 = 6;
/// A timewait timer armed longer ago than this on this CPU did not come from
/// the hand-off being reported (which follows it within microseconds).
const HANDOFF_WINDOW_NS: u64 = 1_000_000;

/// Userspace writes the real configuration here at load time.
#[no_mangle]
static CONFIG: ProbeConfig = ProbeConfig::empty();

/// Sized by userspace (`--ring-size`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// One record per live socket, keyed by its kernel address; deleted at the
/// socket's final CLOSE because the address is soon reused. LRU so that a
/// full map evicts the oldest record instead of refusing new sockets.
#[map]
static SOCKETS: LruHashMap<u64, SocketRecord> = LruHashMap::with_max_entries(131_072, 0);

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
static ARMED_TIMEWAIT: PerCpuArray<ArmedTimewait> = PerCpuArray::with_max_entries(1, 0);

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

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    if try_inet_sock_set_state(&ctx).is_err() {
        // Only reads of the socket fail; the event is lost, and counted.
        count(COUNTER_READ_FAILED);
    }
    0
}

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> u32 {
    let _ = try_timer_start(&ctx);
    0
}

fn try_timer_start(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let timer: u64 = ctx.arg(0);
    let offsets = &CONFIG.offsets;
    let function: u64 = read_field(timer, &offsets.timer_function)?;
    if function != config_u64(&CONFIG.tw_timer_handler) {
        return Ok(());
    }
    let tw = timer - config_u32(&offsets.tw_timer) as u64;
    let lport: u16 = read_field(tw, &offsets.tw_num)?;
    let dport: u16 = read_field(tw, &offsets.tw_dport)?;
    if let Some(slot) = ARMED_TIMEWAIT.get_ptr_mut(0) {
        unsafe {
            *slot = ArmedTimewait {
                ktime_ns: bpf_ktime_get_ns(),
                lport,
                rport: u16::from_be(dport),
                _pad: 0,
            };
        }
    }
    Ok(())
}

/// Wake-ups cost a context switch each; under load one per event would
/// cost more than the event. Wake the reader at most once per
/// `wake_interval_ns`, or sooner when the ring fills past `wake_bytes`.
/// An event that stays unannounced is read at the next wake-up or by the
/// reader's catch-up read a couple of milliseconds after its last wake.
#[inline(always)]
fn wakeup_flag(now: u64) -> u64 {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else {
        return BPF_RB_FORCE_WAKEUP as u64;
    };
    let interval = config_u64(&CONFIG.wake_interval_ns);
    let due = now.wrapping_sub(unsafe { *last }) >= interval
        || EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= config_u64(&CONFIG.wake_bytes);
    if due {
        unsafe { *last = now };
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Whether this ->CLOSE is tcp_time_wait() handing the connection over.
#[inline(always)]
fn is_timewait_handoff(now: u64, lport: u16, rport: u16) -> bool {
    let Some(slot) = ARMED_TIMEWAIT.get_ptr_mut(0) else {
        return false;
    };
    let slot = unsafe { &mut *slot };
    let matched = slot.ktime_ns != 0
        && now.wrapping_sub(slot.ktime_ns) < HANDOFF_WINDOW_NS
        && slot.lport == lport
        && slot.rport == rport;
    if matched {
        slot.ktime_ns = 0;
    }
    matched
}

/// Transitions that only a system call of the owning process performs
/// (connect, listen, close/shutdown): the current task is the owner.
#[inline(always)]
fn runs_in_owner_context(old: u8, new: u8) -> bool {
    (old == CLOSE && (new == SYN_SENT || new == LISTEN)) || new == FIN_WAIT1 || new == LAST_ACK
}

/// Reads a field of a kernel object at an offset userspace took from BTF.
#[inline(always)]
fn read_field<T>(base: u64, offset: &u32) -> Result<T, i64> {
    Ok(unsafe { bpf_probe_read_kernel((base + config_u32(offset) as u64) as *const T)? })
}

/// The socket's addresses as the tracepoint's own record would have them.
#[inline(always)]
fn socket_addresses(sk: u64, family: u16) -> Result<([u8; 16], [u8; 16]), i64> {
    let offsets = &CONFIG.offsets;
    let mut laddr = [0u8; 16];
    let mut raddr = [0u8; 16];
    if family == AF_INET6 {
        laddr = read_field(sk, &offsets.sk_v6_saddr)?;
        raddr = read_field(sk, &offsets.sk_v6_daddr)?;
    } else {
        let l: [u8; 4] = read_field(sk, &offsets.sk_saddr)?;
        let r: [u8; 4] = read_field(sk, &offsets.sk_daddr)?;
        laddr[..4].copy_from_slice(&l);
        raddr[..4].copy_from_slice(&r);
    }
    Ok((laddr, raddr))
}

fn try_inet_sock_set_state(ctx: &BtfTracePointContext) -> Result<(), i64> {
    // A BTF tracepoint: the kernel passes (sk, oldstate, newstate) directly,
    // with no record to build, and guards against recursion per program,
    // counting each skipped run.
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let offsets = &CONFIG.offsets;
    let protocol: u16 = read_field(sk, &offsets.sk_protocol)?;
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let family: u16 = read_field(sk, &offsets.sk_family)?;
    let sport = u16::from_be(read_field::<u16>(sk, &offsets.sk_sport)?);
    let dport = u16::from_be(read_field::<u16>(sk, &offsets.sk_dport)?);
    let now = unsafe { bpf_ktime_get_ns() };
    let old = old as u8;
    let new = new as u8;
    let flags = config_flags();

    let mut event_flags = 0u8;
    let mut in_old_ns = 0u64;
    let mut age_ns = 0u64;
    let mut pid = 0u32;
    let mut comm = [0u8; COMM_LEN];

    let owner_context = runs_in_owner_context(old, new);
    if owner_context {
        pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        event_flags |= EVENT_OWNER_KNOWN;
    }

    match SOCKETS.get_ptr_mut(sk) {
        Some(record) => {
            let record = unsafe { &mut *record };
            in_old_ns = now.wrapping_sub(record.state_since_ns);
            event_flags |= EVENT_IN_OLD_KNOWN;
            if record.flags & EVENT_AGE_KNOWN != 0 {
                age_ns = now.wrapping_sub(record.first_seen_ns);
                event_flags |= EVENT_AGE_KNOWN;
            }
            if owner_context {
                record.pid = pid;
                record.comm = comm;
                record.flags |= EVENT_OWNER_KNOWN;
            } else if record.flags & EVENT_OWNER_KNOWN != 0 {
                pid = record.pid;
                comm = record.comm;
                event_flags |= EVENT_OWNER_KNOWN;
            }
            record.state_since_ns = now;
            if new == CLOSE {
                // Final close: the address will soon be another socket's.
                let _ = SOCKETS.remove(sk);
            }
        }
        None => {
            // First sight of this socket: born now if this is its first
            // transition, otherwise it predates the probe.
            let born = (old == CLOSE && (new == SYN_SENT || new == LISTEN))
                || (old == LISTEN && new == SYN_RECV);
            if born {
                event_flags |= EVENT_AGE_KNOWN;
            }
            if !owner_context && old == LISTEN {
                // A listener's child (LISTEN -> SYN_RECV): the process that
                // listens accepts it. Or a listener that predates the probe,
                // closing: its owner was seeded from procfs.
                if let Some(owner) = unsafe { LISTENERS.get(sport) } {
                    pid = owner.pid;
                    comm = owner.comm;
                    event_flags |= EVENT_OWNER_KNOWN;
                }
            }
            if new != CLOSE {
                let record = SocketRecord {
                    first_seen_ns: now,
                    state_since_ns: now,
                    pid,
                    flags: event_flags & (EVENT_OWNER_KNOWN | EVENT_AGE_KNOWN),
                    _pad: [0; 3],
                    comm,
                };
                if SOCKETS.insert(sk, record, 0).is_err() {
                    count(COUNTER_SOCKET_MAP_FULL);
                }
            }
        }
    }

    if new == CLOSE && old == LISTEN {
        // Other processes may listen on the same port (SO_REUSEPORT): only
        // the owner's own listener takes the entry with it.
        let same_owner = unsafe { LISTENERS.get(sport) }.is_some_and(|owner| owner.pid == pid);
        if same_owner {
            let _ = LISTENERS.remove(sport);
        }
    } else if new == LISTEN && owner_context {
        let owner = ListenerOwner { pid, _pad: 0, comm };
        let _ = LISTENERS.insert(sport, owner, 0);
    }

    let closing_from_fin = new == CLOSE && (old == FIN_WAIT1 || old == FIN_WAIT2 || old == CLOSING);
    if closing_from_fin && flags & CONFIG_TIMEWAIT_HOOK != 0 {
        event_flags |= EVENT_TIMEWAIT_CHECKED;
        if is_timewait_handoff(now, sport, dport) {
            event_flags |= EVENT_TIMEWAIT_HANDOFF;
            count(COUNTER_TIMEWAIT_HANDOFFS);
        }
    }

    // Kernel-side filters: nothing filtered out reaches userspace.
    if !wants(old, new) {
        return Ok(());
    }
    if closing_from_fin
        && flags & CONFIG_HANDOFF_ONLY != 0
        && event_flags & EVENT_TIMEWAIT_CHECKED != 0
        && event_flags & EVENT_TIMEWAIT_HANDOFF == 0
    {
        return Ok(());
    }
    let family_ok = match family {
        AF_INET => flags & CONFIG_IPV4 != 0,
        AF_INET6 => flags & CONFIG_IPV6 != 0,
        _ => false,
    };
    if !family_ok {
        return Ok(());
    }
    if flags & CONFIG_PORT_EITHER != 0 {
        if !port_allowed(&CONFIG.lports, sport) && !port_allowed(&CONFIG.rports, dport) {
            return Ok(());
        }
    } else {
        if flags & CONFIG_LPORT_FILTER != 0 && !port_allowed(&CONFIG.lports, sport) {
            return Ok(());
        }
        if flags & CONFIG_RPORT_FILTER != 0 && !port_allowed(&CONFIG.rports, dport) {
            return Ok(());
        }
    }
    if flags & CONFIG_PID_FILTER != 0
        && (event_flags & EVENT_OWNER_KNOWN == 0 || pid != config_u32(&CONFIG.pid))
    {
        return Ok(());
    }

    let (laddr, raddr) = socket_addresses(sk, family)?;
    let Some(mut entry) = EVENTS.reserve::<TransitionEvent>(0) else {
        count(COUNTER_RING_FULL);
        return Ok(());
    };
    entry.write(TransitionEvent {
        ktime_ns: now,
        skaddr: sk,
        in_old_ns,
        age_ns,
        pid,
        family: family,
        lport: sport,
        rport: dport,
        old,
        new,
        flags: event_flags,
        _pad: [0; 3],
        comm,
        laddr,
        raddr,
    });
    entry.submit(wakeup_flag(now));
    count(COUNTER_EMITTED);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
