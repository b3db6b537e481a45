//! The command line as a user meets it: errors, signals, pipes, output.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStderr, Command},
    time::{Duration, Instant},
};

use crate::harness::{self, Netns, Peer, Tracer, TRACER};

/// Runs tcptrace to completion; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(TRACER)
        .args(args)
        .output()
        .expect("running tcptrace");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// tcptrace in `netns` with piped output, once it is ready (READY=1) and
/// has said it is tracing; its stderr reader comes back alongside.
fn spawn_tracing(netns: &Netns, args: &[&str]) -> (Child, BufReader<ChildStderr>) {
    let (mut child, notify) = Tracer::spawn(netns, args);
    harness::wait_ready(&notify, &mut child)
        .unwrap_or_else(|why| panic!("tcptrace did not start: {why}"));
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("tcptrace: tracing"), "{line}");
    (child, stderr)
}

fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got {stderr:?}");
    assert!(lines[0].starts_with("tcptrace: "), "{stderr:?}");
    assert!(
        lines[0].contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn bad_flags_get_one_line_and_exit_2() {
    for (args, needle) in [
        (&["--lport", "80,http"][..], "bad port list '80,http'"),
        (&["--rport", "70000"][..], "port 70000 is outside 1-65535"),
        (&["--port", "9-3"][..], "range 9-3 is backwards"),
        (&["--ring-size", "3M"][..], "power of two"),
        (&["--duration=-4"][..], "bad duration"),
        (&["--duration", "soon"][..], "bad duration"),
        (&["-4", "-6"][..], "cannot be used with"),
        (&["--frobnicate"][..], "--frobnicate"),
        (&["--pid", "4294967"][..], "--pid 4294967: no such process"),
    ] {
        let (code, stdout, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty());
        assert_one_line_error(&stderr, needle);
    }
}

#[test]
fn help_reads_like_a_man_page() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for needle in [
        "--all",
        "--json",
        "--lport",
        "--rport",
        "--pid",
        "--duration",
        "--ring-size",
        "EXAMPLES",
        "CAP_BPF",
    ] {
        assert!(stdout.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn refuses_without_privileges() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            TRACER,
        ])
        .output()
        .expect("setpriv (util-linux) runs tcptrace as nobody");
    assert_eq!(out.status.code(), Some(1));
    assert_one_line_error(
        &String::from_utf8_lossy(&out.stderr),
        "needs root, or the CAP_BPF and CAP_PERFMON",
    );
}

#[test]
fn duration_stops_by_itself_with_a_summary() {
    // Loads the probe: in cli's turn, like the tests with a namespace.
    let _turn = harness::Turn::take();
    let start = Instant::now();
    let (code, stdout, stderr) = run(&["--json", "--duration", "0.5", "--port", "1"]);
    let took = start.elapsed();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(30),
        "{took:?}"
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "summary");
    assert_eq!(last["events"], 0);
}

#[test]
fn closed_stdout_ends_quietly() {
    let netns = Netns::new();
    let (first_server, first_port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 0);
    let (second_server, second_port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 0);
    let ports = format!("{first_port},{second_port}");
    let (mut child, mut stderr) = spawn_tracing(&netns, &["--json", "--all", "--port", &ports]);
    // `tcptrace --json | head -1`: one record read, then the pipe closes.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    Peer::client(&netns, &format!("127.0.0.1:{first_port}"), "close-first", 0).finish();
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("\"type\":\"transition\""), "{first}");
    drop(stdout);
    // The next events are written into the closed pipe.
    Peer::client(
        &netns,
        &format!("127.0.0.1:{second_port}"),
        "close-first",
        0,
    )
    .finish();
    first_server.finish();
    second_server.finish();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {rest}");
    assert_eq!(rest, "", "nothing printed when stdout closes");
}

#[test]
fn human_output_has_columns_and_a_summary() {
    let netns = Netns::new();
    let (server, port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 20);
    let (child, mut stderr) = spawn_tracing(&netns, &["--port", &port.to_string()]);
    let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", 0);
    let client_pid = client.pid();
    let (client_port, _) = client.finish();
    server.finish();
    std::thread::sleep(Duration::from_millis(300));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].starts_with("TIME") && lines[0].contains("TRANSITION"));
    // The server closes, then its FIN puts the client in TIME_WAIT.
    let client_end = format!("127.0.0.1:{client_port}");
    assert!(
        lines[1].contains("peer-server") && lines[1].contains("CLOSE_WAIT -> LAST_ACK"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains(&client_pid.to_string()) && lines[2].contains("peer-client"));
    assert!(
        lines[2].contains(&client_end) && lines[2].contains("FIN_WAIT2 -> TIME_WAIT"),
        "{}",
        lines[2]
    );
    assert!(rest.contains("tcptrace: 2 events in"), "{rest}");
    // Recursion misses count runs skipped for any socket on the host
    // (other tests run beside this one): only the wording is fixed.
    assert!(
        rest.lines()
            .any(|l| l.starts_with("  lost: 0 ring reservation failures, ")
                && l.ends_with(" recursion misses")),
        "{rest}"
    );
}

#[test]
fn idle_tracer_wakes_rarely() {
    let netns = Netns::new();
    // With no matching traffic, the ring never wakes the reader; the only
    // wake-ups are the once-a-second loss check.
    let tracer = Tracer::start(&netns, &["--json", "--port", "1"]);
    let pid = tracer.pid();
    if harness::emulated() {
        // Start-up work (seeding listeners, the first loss check) runs
        // seconds long there: let it end before counting.
        std::thread::sleep(Duration::from_secs(2));
    }
    let switches = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = switches();
    std::thread::sleep(Duration::from_secs(3));
    let woke = switches() - before;
    assert!(woke <= 5, "{woke} wake-ups in 3 s of silence");
    tracer.stop();
}

/// The timewait hooks this kernel is known to take: (birth and end, the
/// peer's FIN). Where trampolines are allowed and kfree_skb has no rx_sk
/// (the matrix's Debian 6.1): fentry and fexit; where trampolines are
/// refused (this project's locked-down 6.18): the timer tracepoints and
/// kfree_skb.
fn expected_timewait_hooks() -> Option<([&'static str; 2], &'static str)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    if release.starts_with("6.1.") {
        Some((
            ["fentry/inet_twsk_hashdance", "fentry/inet_twsk_kill"],
            "fexit/tcp_timewait_state_process",
        ))
    } else if release.starts_with("6.18.") {
        Some((
            ["tp_btf/timer_start", "tp_btf/timer_cancel"],
            "tp_btf/kfree_skb",
        ))
    } else {
        None
    }
}

#[test]
fn summary_and_doctor_name_the_hooks_this_kernel_took() {
    let netns = Netns::new();
    let check = |record: &serde_json::Value| {
        let hooks: Vec<&str> = record["hooks"]
            .as_array()
            .unwrap_or_else(|| panic!("no hooks in {record}"))
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert_eq!(
            hooks.last(),
            Some(&"tp_btf/inet_sock_set_state"),
            "{hooks:?}"
        );
        // New cgroups' names, one way to see births and ends, one to see
        // the peer's FIN.
        assert_eq!(hooks.len(), 5, "{hooks:?}");
        assert_eq!(hooks[0], "tracepoint/cgroup/cgroup_mkdir");
        if let Some((lifecycle, fin)) = expected_timewait_hooks() {
            assert_eq!(hooks[1..4], [lifecycle[0], lifecycle[1], fin], "{hooks:?}");
        }
        assert_eq!(record["timewait_detection"], "exact", "{record}");
    };
    let records = Tracer::start(&netns, &["--json", "--port", "1"]).stop();
    check(records.summary());

    let out = netns
        .command(TRACER)
        .args(["doctor", "--json"])
        .output()
        .expect("tcptrace doctor");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doctor: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doctor["type"], "doctor");
    check(&doctor);
    let said = doctor["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["topic"] == "hooks")
        .expect("a finding about the hooks");
    assert!(said["text"]
        .as_str()
        .unwrap()
        .contains("timewait detection: exact"));
}

#[test]
fn probe_log_reports_a_socket_older_than_the_tracer() {
    let netns = Netns::new();
    let (server, port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 50);
    let hold = harness::outlasting_startup_ms(3000);
    let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", hold);
    std::thread::sleep(Duration::from_millis(300));
    let tracer = Tracer::start(
        &netns,
        &["--json", "--probe-log", "--port", &port.to_string()],
    );
    let (client_port, _) = client.finish();
    server.finish();
    let records = tracer.stop();
    // The client's close is the first the probe sees of its socket.
    let expected = format!(
        "tcptrace: probe: socket {client_port}->{port}: first seen at ESTABLISHED -> FIN_WAIT1: \
         it predates tracing (or its record was evicted)"
    );
    assert!(
        records.stderr.contains(&expected),
        "{expected:?} in {:#?}",
        records.stderr
    );
    // Without --probe-log the probe says nothing.
    let quiet = Tracer::start(&netns, &["--json", "--port", "1"]).stop();
    assert!(
        !quiet.stderr.iter().any(|l| l.contains("probe:")),
        "{:?}",
        quiet.stderr
    );
}
