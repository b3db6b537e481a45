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
use tcptrace_common::COUNTER_READ_FAILED;

use crate::maps::count;

/// Every program's errors are failed reads of a kernel object: what the
/// run was following is lost (a transition, or a timewait socket's birth,
/// FIN or end), and counted.
#[inline(always)]
fn counted(result: Result<(), i64>) {
    if result.is_err() {
        count(COUNTER_READ_FAILED);
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    if let Err(err) = state::try_inet_sock_set_state(&ctx) {
        // Only reads of the socket fail; the event is lost, and counted.
        count(COUNTER_READ_FAILED);
        diagnostics::read_failed(err);
    }
    0
}

/// The bench's floor (`--floor-probe`): the same hook with a program that
/// returns at once, the cost of attaching at all.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn state_floor(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// The bench's floor of every hook (`--floor-hooks`): the timewait
/// tracepoints with programs that return at once.
#[btf_tracepoint(function = "timer_start")]
pub fn timer_start_floor(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel_floor(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_floor(_ctx: BtfTracePointContext) -> u32 {
    0
}

#[btf_tracepoint(function = "timer_start")]
pub fn timer_start(ctx: BtfTracePointContext) -> u32 {
    counted(timewait::try_timer_start(&ctx));
    0
}

#[btf_tracepoint(function = "timer_cancel")]
pub fn timer_cancel(ctx: BtfTracePointContext) -> u32 {
    counted(timewait::try_timer_cancel(&ctx));
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
    counted(timewait::try_twsk_hashdance(ctx.arg(0)));
    0
}

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
    let _ = timewait::resolve_pending_cancel(0);
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
