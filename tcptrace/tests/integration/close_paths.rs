//! The real probe against real loopback connections, client and server in
//! separate processes. Each test filters on its own ports, so tests can run
//! side by side on a busy host.

use crate::harness::{self, ns, transition_name, Netns, Peer, Tracer};
use serde_json::Value;

const MS: u64 = 1_000_000;
/// Upper bound on scheduling delay added to a hold time: 1 s, or 3 s under
/// emulation (starting a peer process there can take over a second).
fn slack() -> u64 {
    if harness::emulated() {
        3_000 * MS
    } else {
        1_000 * MS
    }
}
/// FIN_WAIT2 begins when the ACK of our FIN arrives, which the peer's
/// kernel may delay (up to its delayed-ACK timeout, 40 ms) past the moment
/// the peer application saw the FIN and started its hold.
const ACK_DELAY: u64 = 50 * MS;

fn assert_owner(t: &Value, peer_pid: u32, comm: &str) {
    assert_owner_given(t, peer_pid, comm, &Value::Null);
}

/// As `assert_owner`, naming `context` (the summaries: what the probe
/// counted as missed) if it fails.
fn assert_owner_given(t: &Value, peer_pid: u32, comm: &str, context: &Value) {
    assert_eq!(t["pid"], peer_pid, "owner pid of {t}; {context}");
    assert_eq!(t["comm"], comm, "owner comm of {t}; {context}");
    assert_eq!(t["owner_known"], true, "{t}; {context}");
}

fn assert_endpoints(t: &Value, family: &str, addr: &str, lport: u16, rport: u16) {
    assert_eq!(t["family"], family);
    assert_eq!(t["laddr"], addr);
    assert_eq!(t["raddr"], addr);
    assert_eq!(t["lport"], lport);
    assert_eq!(t["rport"], rport);
}

/// One connection where one side closes first (`closer_mode`: close() or
/// shutdown(SHUT_WR)) and the other holds CLOSE_WAIT for 150 ms. The default
/// view shows exactly the closer's true TIME_WAIT entry and the other
/// side's CLOSE_WAIT -> LAST_ACK; --all shows where the timewait hand-off
/// happened.
fn close_sequence(addr: &str, family: &str, client_first: bool, closer_mode: &str, signal: i32) {
    close_sequence_held(addr, family, client_first, closer_mode, signal, 150);
}

/// `hold_ms`: how long the side that closes second waits.
fn close_sequence_held(
    addr: &str,
    family: &str,
    client_first: bool,
    closer_mode: &str,
    signal: i32,
    hold_ms: u64,
) {
    let netns = Netns::new();
    let (server_mode, client_mode) = if client_first {
        ("close-second", closer_mode)
    } else {
        (closer_mode, "close-second")
    };
    let endpoint = |port: u16| std::net::SocketAddr::new(addr.parse().unwrap(), port).to_string();
    let (server_hold, client_hold) = if client_first {
        (hold_ms, 50)
    } else {
        (50, hold_ms)
    };
    let (server, port) = Peer::server(&netns, &endpoint(0), server_mode, server_hold);
    let p = port.to_string();
    let tracer = Tracer::start(&netns, &["--json", "--port", &p]);
    let all = Tracer::start(&netns, &["--json", "--all", "--port", &p]);
    let client = Peer::client(&netns, &endpoint(port), client_mode, client_hold);
    let (client_pid, server_pid) = (client.pid(), server.pid());
    let (client_port, _) = client.finish();
    let (server_port, server_peer) = server.finish();
    assert_eq!((server_port, server_peer), (port, client_port));
    let records = tracer.stop_with(signal);
    let all = all.stop_with(signal);

    assert_eq!(
        records.transitions().len(),
        2,
        "only the two headline transitions: {:#?}",
        records.records
    );
    let (closer, closer_port, closer_rport, closer_pid, closer_comm) = if client_first {
        ("client", client_port, port, client_pid, "peer-client")
    } else {
        ("server", port, client_port, server_pid, "peer-server")
    };
    let (waiter_port, waiter_rport, waiter_pid, waiter_comm) = if client_first {
        (port, client_port, server_pid, "peer-server")
    } else {
        (client_port, port, client_pid, "peer-client")
    };

    // TIME_WAIT begins when the peer's FIN arrives, hold_ms after the close.
    let summaries = serde_json::json!({"headline": records.summary(), "all": all.summary()});
    let time_wait = records.find(closer_port, "FIN_WAIT2", "TIME_WAIT");
    assert_eq!(time_wait["timewait_socket"], true, "{time_wait}");
    assert_owner_given(time_wait, closer_pid, closer_comm, &summaries);
    assert_endpoints(time_wait, family, addr, closer_port, closer_rport);
    let in_fin_wait2 = ns(&time_wait["in_old_ns"]);
    assert!(
        (hold_ms * MS - ACK_DELAY..hold_ms * MS + slack()).contains(&in_fin_wait2),
        "{closer} spent {in_fin_wait2} ns in FIN_WAIT2, the peer closed after {hold_ms} ms"
    );
    assert!(ns(&time_wait["age_ns"]) > in_fin_wait2, "{time_wait}");

    let handoff = all.find(closer_port, "FIN_WAIT2", "CLOSE");
    assert_eq!(
        handoff["timewait"], true,
        "{closer}'s FIN_WAIT2 -> CLOSE is the timewait hand-off"
    );
    assert_owner_given(handoff, closer_pid, closer_comm, &summaries);
    let entered = all.find(closer_port, "FIN_WAIT2", "TIME_WAIT");
    let after_handoff =
        ns(&entered["ktime_ns"]) - ns(&handoff["ktime_ns"]).min(ns(&entered["ktime_ns"]));
    let held = hold_ms * MS - ACK_DELAY..hold_ms * MS + slack();
    if after_handoff < 5 * MS {
        // The full socket stayed in FIN_WAIT2 until the peer's FIN
        // (shutdown(SHUT_WR), or an orphan whose ACK arrived while close()
        // still held the socket lock): the hand-off is the TIME_WAIT entry.
        assert!(held.contains(&ns(&handoff["in_old_ns"])), "{handoff}");
    } else {
        // Orphaned and handed over at once: the rest of FIN_WAIT2 passed
        // in the timewait socket.
        assert_eq!(closer_mode, "close-first");
        assert!(
            held.contains(&after_handoff),
            "TIME_WAIT {after_handoff} ns after the hand-off, expected {hold_ms} ms"
        );
    }

    let last_ack = records.find(waiter_port, "CLOSE_WAIT", "LAST_ACK");
    assert_eq!(last_ack["timewait"], false);
    assert_owner(last_ack, waiter_pid, waiter_comm);
    assert_endpoints(last_ack, family, addr, waiter_port, waiter_rport);
    let close_wait = ns(&last_ack["in_old_ns"]);
    assert!(
        (hold_ms * MS..hold_ms * MS + slack()).contains(&close_wait),
        "CLOSE_WAIT lasted {close_wait} ns, the peer held it {hold_ms} ms"
    );
    assert!(ns(&last_ack["age_ns"]) > close_wait);

    let summary = records.summary();
    assert_eq!(summary["events"], 2);
    assert_eq!(summary["transitions"]["FIN_WAIT2->TIME_WAIT"], 1);
    assert_eq!(summary["transitions"]["CLOSE_WAIT->LAST_ACK"], 1);
    assert_eq!(summary["timewait_detection"], "exact");
    assert_eq!(all.summary()["timewait_handoffs"], 1);
    assert!(summary["recursion_misses"].is_u64());
}

#[test]
fn client_closes_first() {
    harness::exact_unless_kernel_skipped(|| {
        close_sequence("127.0.0.1", "ipv4", true, "close-first", libc::SIGINT);
    });
}

/// The peer's FIN seconds after an orphaned close: the timewait socket's
/// timer then moves to another slot of the timer wheel when the FIN re-arms
/// it for 60 s (a cancel, then a start), which must not read as its end.
#[test]
fn client_closes_first_and_the_peer_seconds_later() {
    harness::exact_unless_kernel_skipped(|| {
        close_sequence_held("127.0.0.1", "ipv4", true, "close-first", libc::SIGINT, 3000);
    });
}

#[test]
fn server_closes_first() {
    harness::exact_unless_kernel_skipped(|| {
        close_sequence("127.0.0.1", "ipv4", false, "close-first", libc::SIGINT);
    });
}

#[test]
fn client_shuts_down_first() {
    harness::exact_unless_kernel_skipped(|| {
        close_sequence("127.0.0.1", "ipv4", true, "shutdown-first", libc::SIGINT);
    });
}

#[test]
fn ipv6_client_closes_first_and_sigterm_detaches() {
    harness::exact_unless_kernel_skipped(|| {
        close_sequence("::1", "ipv6", true, "close-first", libc::SIGTERM);
    });
}

#[test]
fn abortive_close_is_not_a_timewait_handoff() {
    harness::exact_unless_kernel_skipped(|| {
        let netns = Netns::new();
        // The client half-closes (FIN_WAIT2 once the server acks), then aborts
        // with SO_LINGER 0 while the server still sits in CLOSE_WAIT: the same
        // FIN_WAIT2 -> CLOSE as a hand-off, but a reset.
        let (half, half_port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 700);
        // And a plain abort from ESTABLISHED.
        let (plain, plain_port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 0);
        let ports = format!("{half_port},{plain_port}");
        let headline = Tracer::start(&netns, &["--json", "--port", &ports]);
        let all = Tracer::start(&netns, &["--json", "--all", "--port", &ports]);

        let c1 = Peer::client(
            &netns,
            &format!("127.0.0.1:{half_port}"),
            "shutdown-abort",
            150,
        );
        let (c1_pid, (c1_port, _)) = (c1.pid(), c1.finish());
        let c2 = Peer::client(&netns, &format!("127.0.0.1:{plain_port}"), "abort", 50);
        let (c2_pid, (c2_port, _)) = (c2.pid(), c2.finish());
        half.finish();
        plain.finish();

        let headline = headline.stop();
        assert_eq!(
            headline.transitions().len(),
            0,
            "no hand-off reported: {:#?}",
            headline.records
        );
        assert_eq!(headline.summary()["timewait_handoffs"], 0);

        let all = all.stop();
        let reset = all.find(c1_port, "FIN_WAIT2", "CLOSE");
        assert_eq!(reset["timewait"], false);
        assert_owner(reset, c1_pid, "peer-client");
        assert!(ns(&reset["in_old_ns"]) >= 100 * MS, "{reset}");
        assert_eq!(
            all.sequence_of(c1_port),
            [
                "SYN_SENT->ESTABLISHED",
                "ESTABLISHED->FIN_WAIT1",
                "FIN_WAIT1->FIN_WAIT2",
                "FIN_WAIT2->CLOSE"
            ]
        );
        let server_side = all.find(half_port, "CLOSE_WAIT", "CLOSE");
        assert_eq!(server_side["rport"], c1_port);

        let abort = all.find(c2_port, "ESTABLISHED", "CLOSE");
        assert_eq!(abort["timewait"], false);
        assert_owner(abort, c2_pid, "peer-client");
        assert_eq!(
            all.sequence_of(c2_port),
            ["SYN_SENT->ESTABLISHED", "ESTABLISHED->CLOSE"]
        );
        assert_eq!(all.summary()["timewait_handoffs"], 0);
    });
}

#[test]
fn all_reports_the_whole_life_of_one_connection_in_order() {
    harness::exact_unless_kernel_skipped(|| {
        let netns = Netns::new();
        let port = harness::FIXED_PORT;
        let tracer = Tracer::start(&netns, &["--json", "--all", "--port", &port.to_string()]);
        let (server, listened) =
            Peer::server(&netns, &format!("127.0.0.1:{port}"), "close-second", 30);
        assert_eq!(listened, port);
        let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", 20);
        let (client_pid, server_pid) = (client.pid(), server.pid());
        let (client_port, _) = client.finish();
        server.finish();
        let records = tracer.stop();

        let established = records.find(client_port, "SYN_SENT", "ESTABLISHED");
        let client_life = records.of_socket(&established["sk"]);
        let names = |events: &[&Value]| -> Vec<String> {
            events.iter().copied().map(transition_name).collect()
        };
        assert_eq!(
            names(&client_life),
            [
                "CLOSE->SYN_SENT",
                "SYN_SENT->ESTABLISHED",
                "ESTABLISHED->FIN_WAIT1",
                "FIN_WAIT1->FIN_WAIT2",
                "FIN_WAIT2->CLOSE"
            ]
        );
        assert_eq!(
            client_life[0]["lport"], 0,
            "connect() has no local port yet"
        );
        assert_eq!(client_life.last().unwrap()["timewait"], true);

        let child = records.find(port, "SYN_RECV", "ESTABLISHED");
        assert_eq!(child["rport"], client_port);
        // The child's birth names its peer too (kernels before 6.x fill the
        // peer in after the tracepoint: the probe reports it one step later).
        let born = records.find(port, "LISTEN", "SYN_RECV");
        assert_eq!(
            (&born["raddr"], &born["rport"]),
            (&child["raddr"], &child["rport"])
        );
        assert!(ns(&born["ktime_ns"]) <= ns(&child["ktime_ns"]));
        let server_life = records.of_socket(&child["sk"]);
        assert_eq!(
            names(&server_life),
            [
                "LISTEN->SYN_RECV",
                "SYN_RECV->ESTABLISHED",
                "ESTABLISHED->CLOSE_WAIT",
                "CLOSE_WAIT->LAST_ACK",
                "LAST_ACK->CLOSE"
            ]
        );

        let listen = records.find(port, "CLOSE", "LISTEN");
        let listener_life = records.of_socket(&listen["sk"]);
        assert_eq!(names(&listener_life), ["CLOSE->LISTEN", "LISTEN->CLOSE"]);

        for (life, pid, comm) in [
            (&client_life, client_pid, "peer-client"),
            (&server_life, server_pid, "peer-server"),
            (&listener_life, server_pid, "peer-server"),
        ] {
            let mut last_ktime = 0;
            for (i, t) in life.iter().enumerate() {
                assert_owner(t, pid, comm);
                assert!(ns(&t["ktime_ns"]) >= last_ktime, "in order: {t}");
                last_ktime = ns(&t["ktime_ns"]);
                assert!(t["age_ns"].is_u64(), "the probe saw the socket born: {t}");
                if i == 0 {
                    assert!(t["in_old_ns"].is_null(), "no earlier state seen: {t}");
                } else {
                    assert!(ns(&t["in_old_ns"]) > 0, "{t}");
                }
            }
        }
        let close_wait = ns(&records.find(port, "CLOSE_WAIT", "LAST_ACK")["in_old_ns"]);
        assert!((30 * MS..30 * MS + slack()).contains(&close_wait));
        // The connection lives on in a timewait socket: TIME_WAIT when the
        // server's FIN arrives.
        let time_wait = records.find(client_port, "FIN_WAIT2", "TIME_WAIT");
        assert_eq!(time_wait["timewait_socket"], true);
        assert_owner(time_wait, client_pid, "peer-client");
        assert_ne!(time_wait["sk"], established["sk"], "a different socket");
        assert_eq!(records.summary()["events"], 13);
    });
}

#[test]
fn port_pid_and_family_filters_drop_exactly_what_they_should() {
    harness::exact_unless_kernel_skipped(|| {
        let netns = Netns::new();
        let (server, port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 10);
        let p = port.to_string();
        let server_pid = server.pid();
        let pid_arg = server_pid.to_string();
        let both = Tracer::start(&netns, &["--json", "--all", "--port", &p]);
        let local = Tracer::start(&netns, &["--json", "--all", "--lport", &p]);
        let remote = Tracer::start(&netns, &["--json", "--all", "--rport", &p]);
        let by_pid = Tracer::start(
            &netns,
            &["--json", "--all", "--port", &p, "--pid", &pid_arg],
        );
        let v6_only = Tracer::start(&netns, &["--json", "--all", "--port", &p, "-6"]);
        let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", 10);
        let client_pid = client.pid();
        client.finish();
        server.finish();

        let both = both.stop();
        let all_events = both.transitions();
        // 5 per connected socket, the client's TIME_WAIT entry, and the
        // listener closing when the server exits.
        assert_eq!(all_events.len(), 12, "{:#?}", both.records);
        let keys = |events: Vec<&Value>| -> Vec<String> {
            let mut k: Vec<String> = events
                .iter()
                .map(|t| {
                    format!(
                        "{} {} {} {}->{}",
                        t["sk"], t["lport"], t["rport"], t["old"], t["new"]
                    )
                })
                .collect();
            k.sort();
            k
        };
        let expect = |pred: &dyn Fn(&Value) -> bool| {
            keys(all_events.iter().copied().filter(|t| pred(t)).collect())
        };

        let local = local.stop();
        assert_eq!(keys(local.transitions()), expect(&|t| t["lport"] == port));
        assert_eq!(local.transitions().len(), 6);

        let remote = remote.stop();
        assert_eq!(keys(remote.transitions()), expect(&|t| t["rport"] == port));
        assert_eq!(remote.transitions().len(), 6);

        let by_pid = by_pid.stop();
        assert_eq!(
            keys(by_pid.transitions()),
            expect(&|t| t["pid"] == server_pid)
        );
        assert_eq!(
            by_pid.transitions().len(),
            6,
            "the accepted socket inherits the owner of the listener, which predates the tracer"
        );
        assert!(all_events
            .iter()
            .filter(|t| t["lport"] != port)
            .all(|t| t["pid"] == client_pid));

        let v6_only = v6_only.stop();
        assert_eq!(v6_only.transitions().len(), 0);
    });
}

#[test]
fn without_the_timer_hook_handoffs_are_unclassified_not_hidden() {
    harness::exact_unless_kernel_skipped(|| {
        let netns = Netns::new();
        let (server, port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 20);
        let tracer = Tracer::start(
            &netns,
            &["--json", "--no-timewait-hook", "--port", &port.to_string()],
        );
        let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", 0);
        let (client_port, _) = client.finish();
        server.finish();
        let records = tracer.stop();
        let handoff = records.find(client_port, "FIN_WAIT2", "CLOSE");
        assert!(handoff["timewait"].is_null(), "unclassified: {handoff}");
        records.find(port, "CLOSE_WAIT", "LAST_ACK");
        assert_eq!(records.transitions().len(), 2);
        let summary = records.summary();
        assert_eq!(
            summary["timewait_detection"],
            "disabled (--no-timewait-hook)"
        );
        let programs: Vec<&str> = summary["probe_stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["program"].as_str().unwrap())
            .collect();
        assert_eq!(
            programs,
            ["cgroup_mkdir", "inet_sock_set_state"],
            "no timewait hook attached"
        );
    });
}

#[test]
fn connections_older_than_the_tracer_have_unknown_age_but_known_closers() {
    harness::exact_unless_kernel_skipped(|| {
        let netns = Netns::new();
        let (server, port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 50);
        // Connected now, closed by the client 2 s later: long after the tracer
        // below has started.
        let hold = harness::outlasting_startup_ms(2000);
        let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", hold);
        let (client_pid, server_pid) = (client.pid(), server.pid());
        std::thread::sleep(std::time::Duration::from_millis(200));
        let tracer = Tracer::start(&netns, &["--json", "--port", &port.to_string()]);
        let (client_port, _) = client.finish();
        server.finish();
        let records = tracer.stop();

        let time_wait = records.find(client_port, "FIN_WAIT2", "TIME_WAIT");
        assert_eq!(time_wait["timewait_socket"], true);
        assert_owner(time_wait, client_pid, "peer-client");
        assert!(
            time_wait["age_ns"].is_null(),
            "born before tracing: {time_wait}"
        );
        assert!(
            (50 * MS - ACK_DELAY..50 * MS + slack()).contains(&ns(&time_wait["in_old_ns"])),
            "FIN_WAIT2 began while tracing: {time_wait}"
        );

        let last_ack = records.find(port, "CLOSE_WAIT", "LAST_ACK");
        assert_owner(last_ack, server_pid, "peer-server");
        assert!(
            last_ack["age_ns"].is_null(),
            "born before tracing: {last_ack}"
        );
        assert!((50 * MS..50 * MS + slack()).contains(&ns(&last_ack["in_old_ns"])));
    });
}

#[test]
fn time_wait_taken_over_by_a_new_connection_from_the_same_port_ends_as_reused() {
    harness::exact_unless_kernel_skipped(|| {
        let netns = Netns::new();
        netns.sysctl("net.ipv4.tcp_tw_reuse", "1");
        let (server, port) = Peer::server_with(
            &netns,
            "127.0.0.1:0",
            "close-second",
            0,
            &["--connections", "2"],
        );
        let tracer = Tracer::start(&netns, &["--json", "--port", &port.to_string()]);
        let source = (harness::FIXED_PORT + 1).to_string();
        let target = format!("127.0.0.1:{port}");
        let first = Peer::client_with(
            &netns,
            &target,
            "close-first",
            0,
            &["--source-port", &source],
        );
        let first_pid = first.pid();
        let (first_port, _) = first.finish();
        // The server closes at once: the first connection is in TIME_WAIT when
        // the second connect() from the same port takes it over.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let second = Peer::client_with(
            &netns,
            &target,
            "close-first",
            0,
            &["--source-port", &source],
        );
        let (second_port, _) = second.finish();
        assert_eq!(
            (first_port, second_port),
            (harness::FIXED_PORT + 1, harness::FIXED_PORT + 1)
        );
        server.finish_all();
        let records = tracer.stop();

        let ends: Vec<&Value> = records
            .transitions()
            .into_iter()
            .filter(|t| t["old"] == "TIME_WAIT" && t["new"] == "CLOSE")
            .collect();
        assert_eq!(ends.len(), 1, "{:#?}", records.records);
        let end = ends[0];
        assert_eq!(end["end"], "reused", "{end}");
        assert_eq!(end["timewait_socket"], true);
        assert_eq!(end["lport"], first_port);
        assert_owner(end, first_pid, "peer-client");
        let in_time_wait = ns(&end["in_old_ns"]);
        assert!(
            (250 * MS..300 * MS + slack()).contains(&in_time_wait),
            "TIME_WAIT lasted {in_time_wait} ns until the reconnect"
        );
        let entries = records
            .transitions()
            .into_iter()
            .filter(|t| t["old"] == "FIN_WAIT2" && t["new"] == "TIME_WAIT")
            .count();
        assert_eq!(entries, 2, "both connections reached TIME_WAIT");
    });
}

#[test]
fn orphaned_fin_wait2_ends_by_tcp_fin_timeout() {
    harness::exact_unless_kernel_skipped(|| {
        let netns = Netns::new();
        netns.sysctl("net.ipv4.tcp_fin_timeout", "2");
        // The server never closes while the client's orphaned FIN_WAIT2 lasts.
        let (server, port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 4000);
        let tracer = Tracer::start(&netns, &["--json", "--port", &port.to_string()]);
        let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", 0);
        let client_pid = client.pid();
        let (client_port, _) = client.finish();
        server.finish();
        let records = tracer.stop();

        let end = records.find(client_port, "FIN_WAIT2", "CLOSE");
        assert_eq!(end["end"], "fin_timeout", "{end}");
        assert_eq!(end["timewait_socket"], true);
        assert_owner(end, client_pid, "peer-client");
        let in_fin_wait2 = ns(&end["in_old_ns"]);
        assert!(
            (2_000 * MS..2_000 * MS + slack()).contains(&in_fin_wait2),
            "FIN_WAIT2 lasted {in_fin_wait2} ns with tcp_fin_timeout 2 s"
        );
        assert!(
            records
                .transitions()
                .iter()
                .all(|t| t["new"] != "TIME_WAIT"),
            "the peer's FIN came after the socket was gone: {:#?}",
            records.records
        );
        records.find(port, "CLOSE_WAIT", "LAST_ACK");
    });
}

#[test]
fn life_reports_a_connection_older_than_the_tracer_with_what_is_known() {
    harness::exact_unless_kernel_skipped(|| {
        let netns = Netns::new();
        let (server, port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 100);
        // Connected before the tracer starts, closed by the client later.
        let hold = harness::outlasting_startup_ms(1500);
        let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", hold);
        let server_pid = server.pid();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let tracer = Tracer::start(&netns, &["life", "--json", "--port", &port.to_string()]);
        let (client_port, _) = client.finish();
        server.finish();
        let records = tracer.stop();

        // The server's end is over at LAST_ACK -> CLOSE (the client's waits in
        // TIME_WAIT for 60 s, past this test).
        let connections: Vec<&Value> = records
            .records
            .iter()
            .filter(|r| r["type"] == "connection")
            .collect();
        assert_eq!(connections.len(), 1, "{:#?}", records.records);
        let c = connections[0];
        assert_eq!(
            (c["lport"].as_u64(), c["rport"].as_u64()),
            (Some(port.into()), Some(client_port.into()))
        );
        assert_owner(c, server_pid, "peer-server");
        assert_eq!(c["closer"], "remote");
        assert_eq!(c["start_seen"], false, "{c}");
        for unknown in ["handshake_ns", "established_ns", "lifetime_ns"] {
            assert!(c[unknown].is_null(), "{unknown} is not invented: {c}");
        }
        // CLOSE_WAIT (held 100 ms) and LAST_ACK were seen.
        let closing = ns(&c["closing_ns"]);
        assert!((100 * MS..100 * MS + slack()).contains(&closing), "{c}");
        assert!(ns(&c["seen_for_ns"]) >= closing);
        assert_eq!(records.summary()["connections"], 1);
    });
}
