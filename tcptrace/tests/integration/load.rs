//! Under connection churn every transition is either delivered or counted
//! as lost: nothing disappears silently. (Its module runs alone, so the
//! churn does not share the CPUs with the timing-sensitive tests.)

use crate::harness::{self, Netns, Tracer, PER_CONNECTION};

const BASE_PORT: u16 = 7000;
const PORTS: u16 = 4;

#[test]
fn churn_loses_nothing_silently() {
    let netns = Netns::new();
    let ports = format!("{BASE_PORT}-{}", BASE_PORT + PORTS - 1);
    let tracer = Tracer::start(&netns, &["--json", "--all", "--port", &ports]);
    let connections = harness::server_churn(&netns, "2", BASE_PORT, PORTS);
    let records = tracer.stop();

    let summary = records.summary();
    // Timewait sockets that end while the churn runs: a client reusing a
    // port towards the same server port kills the server's TIME_WAIT with
    // its SYN. Real transitions, outside the per-connection table.
    let ends: Vec<&serde_json::Value> = records
        .transitions()
        .into_iter()
        .filter(|t| t["old"] == "TIME_WAIT" && t["new"] == "CLOSE")
        .collect();
    assert!(ends
        .iter()
        .all(|t| t["end"] == "killed" || t["end"] == "reused" || t["end"] == "expired"));
    let time_wait_entries = summary["transitions"]["FIN_WAIT2->TIME_WAIT"]
        .as_u64()
        .unwrap_or(0);
    let delivered = summary["events"].as_u64().unwrap() - ends.len() as u64 - time_wait_entries;
    let missed = summary["recursion_misses"].as_u64().unwrap();
    let ring_full = summary["ring_reservation_failures"].as_u64().unwrap();
    // A skipped run of a timewait hook loses at most the one TIME_WAIT
    // entry it would have seen (most of its runs are for other timers).
    let hook_missed = summary["timewait_hook_misses"].as_u64().unwrap();
    assert_eq!(summary["read_failures"], 0);
    // Each listener is opened and closed once while tracing.
    let expected = connections * PER_CONNECTION.len() as u64 + 2 * PORTS as u64;
    let accounted = delivered + missed + ring_full;
    // Recursion misses are the kernel's count for the program, whatever
    // socket it was about: a miss for the host's own traffic during the
    // churn counts too. Beyond that, more than expected is double counting.
    assert!(
        accounted <= expected + expected / 100_000,
        "more events than transitions: {summary}"
    );
    // Rarely the kernel skips the program without counting a recursion
    // miss (seen: 2 to 4 transitions in a few million under this churn,
    // always a server's FIN_WAIT1->FIN_WAIT2 + FIN_WAIT2->CLOSE pair in
    // softirq, with classic and BTF tracepoints alike). No counter shows
    // those; everything a counter shows is accounted for exactly above.
    let unexplained = expected.saturating_sub(accounted);
    assert!(
        unexplained <= expected / 50_000,
        "delivered {delivered} + recursion misses {missed} + ring full {ring_full} \
         leave {unexplained} of {expected} transitions of {connections} connections \
         unexplained; summary: {summary}; incomplete server-side lives: {:?}",
        incomplete_closes(&records)
    );
    assert_eq!(
        records.transitions().len() as u64,
        delivered + ends.len() as u64 + time_wait_entries
    );
    // Every timewait socket becomes TIME_WAIT when the client's FIN arrives
    // (kfree_skb with rx_sk = the timewait socket): those whose hand-off
    // the tail saw, and those whose hand-off the kernel skipped (the probe
    // follows them from their birth). A skipped run of a timewait hook may
    // lose one; an entry lost with a skipped hand-off is counted.
    let handoffs = summary["timewait_handoffs"].as_u64().unwrap();
    let unseen = summary["handoffs_unseen"].as_u64().unwrap();
    let entries_lost = summary["timewait_entries_lost"].as_u64().unwrap();
    let timewait_sockets = handoffs + unseen;
    assert!(
        time_wait_entries <= timewait_sockets,
        "{time_wait_entries} TIME_WAIT entries for {handoffs} hand-offs and {unseen} unseen"
    );
    assert!(
        timewait_sockets - time_wait_entries
            <= timewait_sockets / 1000 + hook_missed + entries_lost,
        "{time_wait_entries} TIME_WAIT entries for {handoffs} hand-offs and {unseen} unseen"
    );
    let counts = summary["transitions"].as_object().unwrap();
    for name in counts.keys() {
        assert!(
            PER_CONNECTION.contains(&name.as_str())
                || name == "FIN_WAIT2->TIME_WAIT"
                || name == "CLOSE->LISTEN"
                || name == "LISTEN->CLOSE"
                || name == "TIME_WAIT->CLOSE",
            "unexpected transition {name}"
        );
    }
    // Every loss reported at exit was also reported as it happened.
    let lost: u64 = records
        .records
        .iter()
        .filter(|r| r["type"] == "lost")
        .map(|r| {
            r["ring_reservation_failures"].as_u64().unwrap()
                + r["recursion_misses"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(lost, missed + ring_full);
    eprintln!(
        "churn: {connections} connections, {delivered} events delivered, \
         {missed} recursion misses, {unexplained} unexplained"
    );
}

/// Server-side socket lives (split at LISTEN -> SYN_RECV, as addresses are
/// reused) that lack some of their five transitions.
fn incomplete_closes(records: &harness::Records) -> Vec<(String, Vec<String>, u64)> {
    use std::collections::HashMap;
    let mut by_socket: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for t in records
        .transitions()
        .into_iter()
        .filter(|t| (BASE_PORT..BASE_PORT + PORTS).contains(&(t["lport"].as_u64().unwrap() as u16)))
        .filter(|t| t["timewait_socket"] == false)
    {
        by_socket.entry(t["sk"].to_string()).or_default().push(t);
    }
    let mut incomplete = Vec::new();
    for (sk, mut ts) in by_socket {
        ts.sort_by_key(|t| t["ktime_ns"].as_u64().unwrap());
        let mut life: Vec<&serde_json::Value> = Vec::new();
        let mut flush = |life: &mut Vec<&serde_json::Value>| {
            if !life.is_empty() && life.len() != 5 {
                incomplete.push((
                    sk.clone(),
                    life.iter().map(|t| harness::transition_name(t)).collect(),
                    life[0]["ktime_ns"].as_u64().unwrap(),
                ));
            }
            life.clear();
        };
        for t in ts {
            if t["old"] == "LISTEN" && t["new"] == "SYN_RECV" {
                flush(&mut life);
            }
            if t["rport"] != 0 {
                life.push(t);
            }
        }
        flush(&mut life);
    }
    incomplete
}
