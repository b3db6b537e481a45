//! `tcptrace life` and `tcptrace hist` against connections held open for
//! known times. Its module runs alone (`harness::Turn`): histograms have no
//! namespace key, so nothing else may run beside it.

use std::{collections::HashMap, thread, time::Duration};

use crate::harness::{self, ns, Netns, Peer, Tracer};
use serde_json::Value;

const MS: u64 = 1_000_000;
/// Upper bound on scheduling delay added to a hold time.
/// How much longer than held a phase may last: scheduling, or ten times
/// as much under emulation (see `harness::emulated`).
fn slack() -> u64 {
    if harness::emulated() {
        1_000 * MS
    } else {
        100 * MS
    }
}

/// One listening port's script: the client keeps each connection
/// ESTABLISHED for `established_ms`, then closes; the server holds
/// CLOSE_WAIT for `close_wait_ms`, then closes.
struct Port {
    established_ms: u64,
    close_wait_ms: u64,
    connections: usize,
}

/// Hold times sit just above a power of two (in ns), so that scheduling
/// delays, which only add, keep each duration in its bucket.
const PORTS: [Port; 3] = [
    Port {
        established_ms: 9,
        close_wait_ms: 9,
        connections: 4,
    },
    Port {
        established_ms: 70,
        close_wait_ms: 70,
        connections: 3,
    },
    Port {
        established_ms: 550,
        close_wait_ms: 280,
        connections: 2,
    },
];

/// Log2 bucket [2^i, 2^(i+1)) holding `ns`.
fn bucket_of(ns: u64) -> (u64, u64) {
    let i = 63 - ns.leading_zeros();
    (1 << i, 1 << (i + 1))
}

fn histograms(records: &[Value]) -> HashMap<(String, Value), &Value> {
    records
        .iter()
        .filter(|r| r["type"] == "histogram")
        .map(|h| {
            (
                (h["metric"].as_str().unwrap().to_string(), h["key"].clone()),
                h,
            )
        })
        .collect()
}

/// Every duration of `h` lies in the one bucket holding `nominal_ns`.
/// Under emulation (see `harness::emulated`) a held connection can last
/// several times its nominal time: there the durations may also lie in the
/// two buckets above, and nowhere else.
fn assert_single_bucket(h: &Value, count: usize, nominal_ns: u64) {
    assert_eq!(h["count"], count as u64, "counted exactly once: {h}");
    let (lo, hi) = bucket_of(nominal_ns);
    let buckets = h["buckets"].as_array().unwrap();
    if harness::emulated() {
        let total: u64 = buckets.iter().map(|b| b["count"].as_u64().unwrap()).sum();
        assert_eq!(total, count as u64, "{h}");
        for b in buckets {
            assert!(ns(&b["ge_ns"]) >= lo && ns(&b["lt_ns"]) <= 4 * hi, "{h}");
        }
        for p in ["p50_ns", "p90_ns", "p99_ns", "max_ns"] {
            assert!((lo..4 * hi).contains(&ns(&h[p])), "{p} of {h}");
        }
        return;
    }
    assert_eq!(buckets.len(), 1, "one bucket for {nominal_ns} ns: {h}");
    assert_eq!(
        (ns(&buckets[0]["ge_ns"]), ns(&buckets[0]["lt_ns"])),
        (lo, hi),
        "{h}"
    );
    assert_eq!(buckets[0]["count"], count as u64);
    for p in ["p50_ns", "p90_ns", "p99_ns", "max_ns"] {
        assert!((lo..hi).contains(&ns(&h[p])), "{p} of {h}");
    }
}

#[test]
fn life_and_hist_measure_held_connections_exactly_once() {
    let netns = Netns::new();
    let netns_inode = netns.inode();
    let servers: Vec<(Peer, u16)> = PORTS
        .iter()
        .map(|p| {
            Peer::server_with(
                &netns,
                "127.0.0.1:0",
                "close-second",
                p.close_wait_ms,
                &["--connections", &p.connections.to_string()],
            )
        })
        .collect();
    let ports: Vec<u16> = servers.iter().map(|s| s.1).collect();
    let list = ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // In the host's namespace, so that deleting the test's namespace ends
    // the clients' TIME_WAIT (and their connections) while tracing.
    let life = Tracer::start_in_host(&netns, &["life", "--json", "--port", &list]);
    let by_port = Tracer::start_in_host(
        &netns,
        &["hist", "--json", "--by", "lport", "--lport", &list],
    );
    let clients_hist = Tracer::start_in_host(&netns, &["hist", "--json", "--rport", &list]);

    let clients: Vec<(Peer, u32)> = PORTS
        .iter()
        .zip(&ports)
        .map(|(p, port)| {
            let peer = Peer::client_with(
                &netns,
                &format!("127.0.0.1:{port}"),
                "close-first",
                p.established_ms,
                &[
                    "--connections",
                    &p.connections.to_string(),
                    // The server is done with each before the next.
                    "--gap-ms",
                    &(p.close_wait_ms + 150).to_string(),
                ],
            );
            let pid = peer.pid();
            (peer, pid)
        })
        .collect();
    let mut client_ports: Vec<Vec<u16>> = Vec::new();
    let mut client_pids = Vec::new();
    for (peer, pid) in clients {
        client_pids.push(pid);
        client_ports.push(peer.finish_all().into_iter().map(|(l, _)| l).collect());
    }
    let server_pids: Vec<u32> = servers.iter().map(|(s, _)| s.pid()).collect();
    for (server, _) in servers {
        server.finish_all();
    }
    drop(netns);
    // The namespace's clean-up kills its timewait sockets asynchronously.
    thread::sleep(Duration::from_secs(2));

    // hist --by lport: the server side of each port, separately.
    let by_port = by_port.stop();
    let hists = histograms(&by_port.records);
    for (p, port) in PORTS.iter().zip(&ports) {
        let key = Value::from(*port);
        let get = |metric: &str| {
            hists
                .get(&(metric.to_string(), key.clone()))
                .unwrap_or_else(|| panic!("no {metric} histogram for port {port}"))
        };
        assert_single_bucket(get("established"), p.connections, p.established_ms * MS);
        assert_single_bucket(get("close_wait"), p.connections, p.close_wait_ms * MS);
        assert_single_bucket(
            get("lifetime"),
            p.connections,
            (p.established_ms + p.close_wait_ms) * MS,
        );
        for metric in ["handshake", "last_ack"] {
            assert_eq!(get(metric)["count"], p.connections as u64, "{metric}");
        }
    }
    let keys: Vec<&Value> = hists.keys().map(|(_, k)| k).collect();
    assert!(
        keys.iter()
            .all(|k| ports.iter().any(|p| *k == &Value::from(*p))),
        "only the three ports: {keys:?}"
    );
    assert!(hists
        .keys()
        .all(|(m, _)| m != "fin_wait2" && m != "time_wait"));

    // The client side, all ports together.
    let total: usize = PORTS.iter().map(|p| p.connections).sum();
    let clients_hist = clients_hist.stop();
    let hists = histograms(&clients_hist.records);
    for metric in [
        "lifetime",
        "handshake",
        "established",
        "fin_wait2",
        "time_wait",
    ] {
        let h = hists
            .get(&(metric.to_string(), Value::Null))
            .unwrap_or_else(|| panic!("no {metric} histogram"));
        assert_eq!(h["count"], total as u64, "{metric}: {h}");
    }

    // life: one record per end of each connection.
    let life = life.stop();
    let connections: Vec<&Value> = life
        .records
        .iter()
        .filter(|r| r["type"] == "connection")
        .collect();
    assert_eq!(connections.len(), 2 * total, "{connections:#?}");
    for (i, p) in PORTS.iter().enumerate() {
        for &client_port in &client_ports[i] {
            let of = |lport: u16, rport: u16| -> &Value {
                let found: Vec<&&Value> = connections
                    .iter()
                    .filter(|c| c["lport"] == lport && c["rport"] == rport)
                    .collect();
                assert_eq!(found.len(), 1, "reported once: {lport} -> {rport}");
                found[0]
            };
            let client = of(client_port, ports[i]);
            let server = of(ports[i], client_port);
            for (c, pid, comm) in [
                (client, client_pids[i], "peer-client"),
                (server, server_pids[i], "peer-server"),
            ] {
                assert_eq!(c["pid"], pid, "{c}");
                assert_eq!(c["comm"], comm);
                assert_eq!(c["netns"], netns_inode);
                assert_eq!(c["start_seen"], true);
                let established = ns(&c["established_ns"]);
                let nominal = p.established_ms * MS;
                assert!(
                    (nominal..nominal + slack()).contains(&established),
                    "ESTABLISHED {established} ns, held {nominal}: {c}"
                );
                let phases: u64 = [
                    "handshake_ns",
                    "established_ns",
                    "closing_ns",
                    "time_wait_ns",
                ]
                .iter()
                .map(|f| c[*f].as_u64().unwrap_or(0))
                .sum();
                assert_eq!(phases, ns(&c["lifetime_ns"]), "phases add up: {c}");
            }
            assert_eq!(client["closer"], "local");
            assert_eq!(server["closer"], "remote");
            let nominal = p.close_wait_ms * MS;
            for (c, phase) in [(server, "closing_ns"), (client, "closing_ns")] {
                let closing = ns(&c[phase]);
                assert!(
                    (nominal..nominal + slack()).contains(&closing),
                    "closing took {closing} ns, CLOSE_WAIT held {nominal}: {c}"
                );
            }
            assert!(server["time_wait_ns"].is_null());
            assert!(ns(&client["time_wait_ns"]) > 0);
            assert_eq!(client["end"], "killed", "ended with its namespace");
        }
    }
    let summary = life.summary();
    assert_eq!(summary["connections"], 2 * total as u64);
    assert_eq!(summary["connections_emitted_by_probe"], 2 * total as u64);
}
