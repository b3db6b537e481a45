//! The probe's rare paths, told to `--probe-log` through aya-log. Off by
//! default: userspace then sets AYA_LOG_LEVEL (a read-only global) to 0, the
//! verifier sees every log call's branch as never taken and drops it, and
//! the hot path pays nothing. Each message is out of line so that its
//! formatting never shares a frame with the caller.
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
