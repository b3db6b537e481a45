//! The reader's per-event work, without the kernel: decode a ring-buffer
//! record, then format it as a JSON line or as a human row, into a batch
//! buffer that is cleared every 4096 events (as `tail::drain` does).
//!
//! `cargo bench -p tcptrace --bench decode_format` (no criterion: plain
//! `Instant` timing over millions of events, best of several runs).
use std::{hint::black_box, time::Instant};

use tcptrace::{
    clock::Clock,
    decode::Transition,
    printer::{json::write_transition as write_json_transition, HumanFormat, OwnerCgroup},
};
use tcptrace_common::{
    tcp_state::*, TransitionEvent, AF_INET, AF_INET6, COMM_LEN, EVENT_AGE_KNOWN,
    EVENT_IN_OLD_KNOWN, EVENT_OWNER_KNOWN, EVENT_TIMEWAIT_CHECKED, EVENT_TIMEWAIT_HANDOFF,
};

/// Records per batch, as the reader drains them.
const BATCH: usize = 4096;
/// Events per timed run.
const EVENTS: usize = 2_000_000;
const RUNS: usize = 7;

/// The ten transitions of a churn connection, with what the probe knows.
const SEQUENCE: [(u8, u8, u8); 10] = [
    (CLOSE, SYN_SENT, EVENT_OWNER_KNOWN),
    (
        SYN_SENT,
        ESTABLISHED,
        EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN,
    ),
    (LISTEN, SYN_RECV, EVENT_OWNER_KNOWN | EVENT_AGE_KNOWN),
    (
        SYN_RECV,
        ESTABLISHED,
        EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN,
    ),
    (
        ESTABLISHED,
        FIN_WAIT1,
        EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN,
    ),
    (
        ESTABLISHED,
        CLOSE_WAIT,
        EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN,
    ),
    (
        FIN_WAIT1,
        FIN_WAIT2,
        EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN,
    ),
    (
        FIN_WAIT2,
        CLOSE,
        EVENT_OWNER_KNOWN
            | EVENT_IN_OLD_KNOWN
            | EVENT_AGE_KNOWN
            | EVENT_TIMEWAIT_CHECKED
            | EVENT_TIMEWAIT_HANDOFF,
    ),
    (
        CLOSE_WAIT,
        LAST_ACK,
        EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN,
    ),
    (
        LAST_ACK,
        CLOSE,
        EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN,
    ),
];

/// 1000 connections' worth of records, as bytes the probe would write,
/// about 30 us apart (so a second's worth of timestamps share one date).
fn records(family: u16) -> Vec<[u8; TransitionEvent::SIZE]> {
    let mut comm = [0u8; COMM_LEN];
    comm[..13].copy_from_slice(b"tcptrace-peer");
    let base_ktime = Clock::now_ktime_ns();
    (0..10_000u64)
        .map(|i| {
            let (old, new, flags) = SEQUENCE[(i % 10) as usize];
            let (mut laddr, mut raddr) = ([0u8; 16], [0u8; 16]);
            if family == AF_INET {
                laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
                raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            } else {
                laddr[15] = 1;
                raddr = "2001:db8::17"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets();
            }
            let event = TransitionEvent {
                header: TransitionEvent::HEADER,
                ktime_ns: base_ktime + i * 30_000,
                skaddr: 0xffff_8881_0a10_0000 + (i / 5) * 0x9c0,
                in_old_ns: 18_500 + i,
                age_ns: 50_840_000 + i,
                pid: 7710,
                cgroup: 0,
                netns: 4026531840,
                family,
                lport: 17400 + (i % 4) as u16,
                rport: 32768 + (i % 28000) as u16,
                old,
                new,
                flags,
                reason: 0,
                _pad: [0; 6],
                comm,
                laddr,
                raddr,
            };
            // SAFETY: TransitionEvent is repr(C) with explicit padding only.
            unsafe { std::mem::transmute::<TransitionEvent, [u8; TransitionEvent::SIZE]>(event) }
        })
        .collect()
}

/// Best-of-RUNS nanoseconds per event of `work` over EVENTS records.
fn measure(
    name: &str,
    records: &[[u8; TransitionEvent::SIZE]],
    mut work: impl FnMut(&Transition, &mut Vec<u8>),
) {
    let mut out = Vec::with_capacity(BATCH * 256);
    let mut run = |events: usize| {
        let start = Instant::now();
        let mut bytes = 0;
        for (i, record) in records.iter().cycle().take(events).enumerate() {
            if i % BATCH == 0 {
                bytes += out.len();
                out.clear();
            }
            let t = Transition::decode(black_box(record)).expect("a whole record");
            work(&t, &mut out);
        }
        bytes += out.len();
        black_box(&out);
        (
            start.elapsed().as_nanos() as f64 / events as f64,
            bytes / events.max(1),
        )
    };
    run(EVENTS / 4); // warm-up
    let (best, bytes) = (0..RUNS)
        .map(|_| run(EVENTS))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    println!("{name:<40} {best:>7.1} ns/event  ({bytes} bytes/event)");
}

fn main() {
    // `cargo test --benches` runs this binary with --bench absent; keep it quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("decode_format: run with `cargo bench` to measure");
        return;
    }
    const NO_CGROUP: OwnerCgroup = OwnerCgroup { id: 0, name: None };
    let clock = Clock::new();
    let v4 = records(AF_INET);
    let v6 = records(AF_INET6);
    println!("decode + format, best of {RUNS} runs of {EVENTS} events, batches of {BATCH}:");
    measure("decode + JSON line, IPv4", &v4, |t, out| {
        write_json_transition(out, &clock, t, NO_CGROUP)
    });
    measure("decode + JSON line, IPv6", &v6, |t, out| {
        write_json_transition(out, &clock, t, NO_CGROUP)
    });
    let mut human = HumanFormat::new(false);
    measure("decode + human row, IPv4", &v4, |t, out| {
        human.write_transition(out, &clock, t, NO_CGROUP)
    });
    let mut human6 = HumanFormat::new(false);
    measure("decode + human row, IPv6", &v6, |t, out| {
        human6.write_transition(out, &clock, t, NO_CGROUP)
    });
}
