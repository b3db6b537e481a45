//! `tcptrace record` and `-r`: a capture taken beside live views reads
//! back as exactly what they printed (filters, time window, `life`,
//! `hist`). The files' own behaviour under churn is `capture_disk`'s.
use std::{fs, path::PathBuf, process::Command};

use serde_json::Value;

use crate::harness::{self, Netns, Peer, Tracer, TRACER};

/// A directory of the test's own, removed at the end.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tcptrace-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `tcptrace ARGS` reading a capture: its JSON records (stdout) and stderr.
pub fn read_back(args: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(TRACER)
        .args(args)
        .output()
        .expect("tcptrace -r");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "tcptrace {args:?}: {stderr}");
    let records = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (records, stderr)
}

/// Kernel times and the durations made of them: two probes read the clock
/// each for itself, microseconds apart.
const TIMES: [&str; 9] = [
    "ktime_ns",
    "in_old_ns",
    "age_ns",
    "handshake_ns",
    "established_ns",
    "closing_ns",
    "time_wait_ns",
    "lifetime_ns",
    "seen_for_ns",
];

/// The records a view printed, without the run's own (summary, losses)
/// and without wall-clock text, with each kernel time or duration only
/// said to be known or not; in a stable order, each with its times.
fn comparable(records: &[Value]) -> Vec<(String, Vec<u64>)> {
    let mut out: Vec<(String, Vec<u64>)> = records
        .iter()
        .filter(|r| r["type"] == "transition" || r["type"] == "connection")
        .map(|r| {
            let mut r = r.clone();
            let fields = r.as_object_mut().unwrap();
            fields.remove("time");
            let mut times = Vec::new();
            for key in TIMES {
                if let Some(ns) = fields.get(key).and_then(Value::as_u64) {
                    times.push(ns);
                    fields.insert(key.into(), Value::Bool(true));
                }
            }
            (r.to_string(), times)
        })
        .collect();
    out.sort();
    out
}

/// How far apart two probes' clock reads of one event may be: microseconds
/// on hardware; an emulated CPU may stall between them for tens of ms.
fn jitter_ns() -> u64 {
    if harness::emulated() {
        500_000_000
    } else {
        5_000_000
    }
}

/// Two views of the same transitions by two probes: the same records, and
/// the same times give or take the two probes' clock reads.
fn assert_same(back: &[Value], live: &[Value], what: &str) {
    let (back, live) = (comparable(back), comparable(live));
    let strip = |v: &[(String, Vec<u64>)]| v.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
    assert_eq!(strip(&back), strip(&live), "{what}");
    for ((record, a), (_, b)) in back.iter().zip(&live) {
        for (x, y) in a.iter().zip(b) {
            assert!(
                x.abs_diff(*y) < jitter_ns(),
                "{what}: {x} vs {y} ns in {record}"
            );
        }
    }
}

/// Histograms rebuilt from a capture against the kernel's: the same
/// metrics, keys and counts; each duration in the same log2 bucket or the
/// next one (the probes' clock reads differ by microseconds, tens of them
/// when an interrupt comes between two probes' runs).
fn assert_same_histograms(back: &[Value], live: &[Value]) {
    let histograms = |records: &[Value]| -> Vec<(String, Vec<(u64, u64)>)> {
        let mut out: Vec<_> = records
            .iter()
            .filter(|r| r["type"] == "histogram")
            .map(|r| {
                let id = format!("{} {} {}", r["metric"], r["key"], r["count"]);
                let buckets = r["buckets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| (b["ge_ns"].as_u64().unwrap(), b["count"].as_u64().unwrap()))
                    .collect();
                (id, buckets)
            })
            .collect();
        out.sort();
        out
    };
    let (back, live) = (histograms(back), histograms(live));
    let ids =
        |v: &[(String, Vec<(u64, u64)>)]| v.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&back), ids(&live), "metrics, keys and counts");
    // Durations in buckets starting at or below `ge`.
    let upto = |buckets: &[(u64, u64)], ge: u64| -> u64 {
        buckets
            .iter()
            .filter(|(g, _)| *g <= ge)
            .map(|(_, n)| n)
            .sum()
    };
    for ((id, a), (_, b)) in back.iter().zip(&live) {
        for &(ge, _) in a.iter().chain(b) {
            // Below ~100 us an interrupt between the probes moves a
            // duration by more than its bucket's width.
            let floor = if harness::emulated() {
                1 << 30
            } else {
                1 << 17
            };
            let next = (ge * 2).max(floor);
            assert!(
                upto(a, ge) <= upto(b, next) && upto(b, ge) <= upto(a, next),
                "{id}: {a:?} vs {b:?}"
            );
        }
    }
}

/// Connections closed every way, in the test's namespace: client first
/// (client TIME_WAIT, server CLOSE_WAIT for 200 ms), server first (server
/// TIME_WAIT), and aborted (resets).
fn scenario(netns: &Netns) {
    let (a, _) = Peer::server_with(
        netns,
        "127.0.0.1:7101",
        "close-second",
        200,
        &["--connections", "3"],
    );
    let (b, _) = Peer::server_with(
        netns,
        "127.0.0.1:7102",
        "close-first",
        100,
        &["--connections", "2"],
    );
    let (c, _) = Peer::server_with(
        netns,
        "127.0.0.1:7103",
        "close-second",
        0,
        &["--connections", "2"],
    );
    let clients = [
        Peer::client_with(
            netns,
            "127.0.0.1:7101",
            "close-first",
            100,
            &["--connections", "3", "--gap-ms", "250"],
        ),
        Peer::client_with(
            netns,
            "127.0.0.1:7102",
            "close-second",
            150,
            &["--connections", "2", "--gap-ms", "200"],
        ),
        Peer::client_with(
            netns,
            "127.0.0.1:7103",
            "abort",
            50,
            &["--connections", "2", "--gap-ms", "100"],
        ),
    ];
    for client in clients {
        client.finish_all();
    }
    for server in [a, b, c] {
        server.finish_all();
    }
}

#[test]
fn a_capture_reads_back_as_the_live_views_printed() {
    harness::exact_unless_kernel_skipped(|| {
        let netns = Netns::new();
        let scratch = Scratch::new("capture");
        let file = scratch.file("scenario.tcpt");
        let recorder = Tracer::start(&netns, &["record", "-w", &file, "--json"]);
        let all = Tracer::start(&netns, &["--all", "--json"]);
        let headline = Tracer::start(&netns, &["--json"]);
        let server_side = Tracer::start(&netns, &["--all", "--json", "--lport", "7101,7102"]);
        let life = Tracer::start(&netns, &["life", "--json"]);
        let hist = Tracer::start(&netns, &["hist", "--json", "--by", "rport"]);
        scenario(&netns);
        let recorded = recorder.stop();
        let summary = recorded.summary();
        assert_eq!(summary["records_unwritten"], 0, "{summary}");
        assert_eq!(summary["files"], 1);

        let live = all.stop();
        let (back, stderr) = read_back(&["-r", &file, "--all", "--json"]);
        assert!(stderr.is_empty(), "{stderr}");
        assert!(
            live.transitions().len() > 40,
            "the scenario ran: {}",
            live.transitions().len()
        );
        assert_same(&back, &live.records, "--all");
        // The records' own times: the same kernel times as live.
        let times: Vec<&Value> = back.iter().filter_map(|r| r.get("ktime_ns")).collect();
        assert_eq!(times.len(), live.transitions().len());
        assert_eq!(
            back.last().unwrap()["events"],
            live.summary()["events"],
            "the summary counts what was read back"
        );

        let (back, _) = read_back(&["-r", &file, "--json"]);
        assert_same(&back, &headline.stop().records, "default view");

        // Filters chosen afterwards keep what the kernel would have kept.
        let (back, _) = read_back(&["-r", &file, "--all", "--json", "--lport", "7101,7102"]);
        assert_same(&back, &server_side.stop().records, "--lport");

        let (back, _) = read_back(&["life", "-r", &file, "--json"]);
        let live_life = life.stop();
        assert!(
            live_life
                .records
                .iter()
                .filter(|r| r["type"] == "connection")
                .count()
                >= 7
        );
        assert_same(&back, &live_life.records, "life");

        let (back, _) = read_back(&["hist", "-r", &file, "--json", "--by", "rport"]);
        let live_hist = hist.stop();
        assert!(
            live_hist
                .records
                .iter()
                .filter(|r| r["type"] == "histogram")
                .count()
                >= 5
        );
        assert_same_histograms(&back, &live_hist.records);

        // A time window: from one record's own time on.
        let (every, _) = read_back(&["-r", &file, "--all", "--json"]);
        let mut transitions: Vec<&Value> =
            every.iter().filter(|r| r["type"] == "transition").collect();
        transitions.sort_by_key(|r| r["ktime_ns"].as_u64().unwrap());
        let middle = transitions[transitions.len() / 2];
        let since = middle["time"].as_str().unwrap();
        let (window, _) = read_back(&["-r", &file, "--all", "--json", "--since", since]);
        let expected: Vec<&Value> = transitions
            .iter()
            .copied()
            .filter(|r| r["ktime_ns"].as_u64() >= middle["ktime_ns"].as_u64())
            .collect();
        assert_eq!(
            window.iter().filter(|r| r["type"] == "transition").count(),
            expected.len(),
            "--since {since}"
        );
        let (none, _) = read_back(&["-r", &file, "--all", "--json", "--until", "0s"]);
        assert_eq!(none.iter().filter(|r| r["type"] == "transition").count(), 0);
    });
}
