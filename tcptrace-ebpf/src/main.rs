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
//! The state program finds that timewait socket at the full socket's
//! FIN_WAIT2/CLOSING/FIN_WAIT1 -> CLOSE, where tcp_time_wait() has just put
//! it in the socket's place in the established hash, and moves the
//! connection's record to `TIMEWAITS` (`timewait::timewait_successor`).
//! Two more hooks follow it (fentry is not available everywhere,
//! tracepoints are):
//! - `kfree_skb`: the peer's FIN reaching a timewait socket in sub-state
//!   FIN_WAIT2 is consumed and freed with rx_sk = that socket, already in
//!   sub-state TIME_WAIT: the true FIN_WAIT2 -> TIME_WAIT.
//! - `timer_cancel`: the timer is detached when it expires (then its
//!   expiry is due: 60 s of TIME_WAIT, or tcp_fin_timeout in FIN_WAIT2) and
//!   when the socket is removed early (reuse, RST, namespace exit); or,
//!   where trampolines are allowed, fentry on inet_twsk_kill.
//!
//! This file holds the programs' entry points only; each calls into:
//! - `state`: the inet_sock_set_state handler (records, owners, filters);
//! - `timewait`: following the timewait socket (birth, hand-off, FIN, end);
//! - `emit`: writing records to the ring and waking the reader;
//! - `histograms` and `lifetimes`: durations, and a connection's end;
//! - `config` (the load-time configuration and filters), `fields` (kernel
//!   field reads), `maps`, `diagnostics` (aya-log messages).
//!
//! The stack is 512 bytes for a whole call chain on kernels before 6.13:
//! every `#[inline(always)]`/`#[inline(never)]` is part of that budget (see
//! `state::StateChange`).
#![no_std]
#![no_main]

mod cgroups;
mod config;
mod diagnostics;
mod emit;
mod fields;
mod histograms;
mod lifetimes;
mod maps;
mod state;
mod timewait;

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, fentry, fexit, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, FExitContext, TracePointContext},
};
use tcptrace_common::{COUNTER_NESTED_RUNS, COUNTER_READ_FAILED};

use crate::maps::{count, STATE_BUSY};

/// Every program's errors are failed reads of a kernel object: what the
/// run was following is lost (a transition, or a timewait socket's hand-off,
/// FIN or end), and counted.
#[inline(always)]
fn counted(result: Result<(), i64>) {
    if result.is_err() {
        count(COUNTER_READ_FAILED);
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let busy = STATE_BUSY.get_ptr_mut(0);
    if let Some(busy) = busy {
        unsafe { *busy = 1 };
    }
    state_change::<false>(&ctx);
    if let Some(busy) = busy {
        unsafe { *busy = 0 };
    }
    0
}

/// The state program's stand-in. A state change made while the state
/// program runs on this CPU (a softirq interrupting it, on loopback often
/// the peer's side of the same connection) reaches the tracepoint nested:
/// the kernel skips the program already running there, counting a
/// recursion miss, but runs this one, which then does its work. Otherwise
/// it returns at once. Attached after the state program.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_nested(ctx: BtfTracePointContext) -> u32 {
    let busy = STATE_BUSY.get(0).is_some_and(|busy| *busy != 0);
    if busy {
        count(COUNTER_NESTED_RUNS);
        state_change::<true>(&ctx);
    }
    0
}

#[inline(always)]
fn state_change<const NESTED: bool>(ctx: &BtfTracePointContext) {
    if let Err(err) = state::try_inet_sock_set_state::<NESTED>(ctx) {
        // Only reads of the socket fail; the event is lost, and counted.
        count(COUNTER_READ_FAILED);
        diagnostics::read_failed(err);
    }
}

/// The bench's floor (`--floor-probe`): the same hook with a program that
/// returns at once, the cost of attaching at all.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn state_floor(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> u32 {
    counted(timewait::try_timer_cancel(&ctx));
    0
}

/// Where BPF trampolines are allowed, the timewait socket's end is hooked
/// in the timewait code itself, which runs only for timewait sockets,
/// instead of on every timer cancelled on the machine.
/// End: inet_twsk_kill(tw) unhashes a timewait socket exactly once, from
/// its timer's handler (expiry) or when it is removed early (reuse, RST,
/// namespace exit).
#[fentry(function = "inet_twsk_kill")]
pub fn twsk_kill(ctx: FEntryContext) -> u32 {
    counted(timewait::try_twsk_kill(ctx.arg(0)));
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> u32 {
    timewait::resolve_pending_cancel();
    counted(timewait::try_kfree_skb(&ctx));
    0
}

/// The peer's FIN at a timewait socket where kfree_skb has no rx_sk
/// (before Linux 6.11) and trampolines are allowed: after
/// tcp_timewait_state_process(tw, skb, th), which runs only for packets to
/// timewait sockets (cheaper than a hook on every freed packet), the
/// socket's sub-state says whether that packet was the FIN.
#[fexit(function = "tcp_timewait_state_process")]
pub fn timewait_state_process(ctx: FExitContext) -> u32 {
    counted(timewait::packet_at_timewait(ctx.arg(0)));
    0
}

/// A new cgroup's id and path (`cgroups`).
#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    counted(cgroups::try_cgroup_mkdir(&ctx, unsafe {
        bpf_ktime_get_ns()
    }));
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
