//! A capture's files under churn: `-C`/`-W` rotation keeps the newest
//! files each readable; a slow and a full disk cost counted records, never
//! a stalled ring or an unreadable file. (A module of its own: its churn
//! would make the exact comparisons of `capture` race recursion misses.)
use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    capture::{read_back, Scratch},
    harness::{peer, Netns, Tracer},
};

/// Runs the churn generator in `netns` for `seconds`.
fn churn(netns: &Netns, seconds: &str) {
    let out = netns
        .command(peer())
        .args([
            "churn",
            "--seconds",
            seconds,
            "--clients",
            "2",
            "--ports",
            "2",
        ])
        .output()
        .expect("running the churn generator");
    assert!(out.status.success());
}

/// From `record`'s summary: records written, records it could not write,
/// and records the ring handed it.
fn kept_of(summary: &Value) -> (u64, u64, u64) {
    let n = |key: &str| summary[key].as_u64().unwrap();
    (
        n("records_written"),
        n("records_unwritten"),
        n("transitions") + n("connections"),
    )
}

/// Transitions and connections in the capture files, read back.
fn records_in(files: &[String]) -> u64 {
    let mut args = vec!["-r"];
    args.extend(files.iter().map(String::as_str));
    args.extend(["--all", "--json"]);
    let (transitions, _) = read_back(&args);
    args.truncate(args.len() - 2);
    let mut life_args = vec!["life"];
    life_args.extend(args);
    life_args.push("--json");
    let (connections, _) = read_back(&life_args);
    let count = |rs: &[Value], kind: &str| rs.iter().filter(|r| r["type"] == kind).count() as u64;
    count(&transitions, "transition") + count(&connections, "connection")
}

#[test]
fn rotation_keeps_the_newest_files_each_readable() {
    let netns = Netns::new();
    let scratch = Scratch::new("rotation");
    let file = scratch.file("churn.tcpt");
    let recorder = Tracer::start(
        &netns,
        &["record", "-w", &file, "-C", "2M", "-W", "3", "--json"],
    );
    churn(&netns, "2");
    let recorded = recorder.stop();
    let summary = recorded.summary();
    let files = summary["files"].as_u64().unwrap();
    assert!(
        files > 3,
        "the churn filled more than three 2 MiB files: {summary}"
    );
    let kept: Vec<String> = (0..files)
        .map(|i| {
            if i == 0 {
                file.clone()
            } else {
                format!("{file}{i}")
            }
        })
        .filter(|p| Path::new(p).exists())
        .collect();
    let expected: Vec<String> = (files - 3..files).map(|i| format!("{file}{i}")).collect();
    assert_eq!(
        kept, expected,
        "the newest three, named as tcpdump -C names them"
    );
    for path in &kept {
        assert!(
            fs::metadata(path).unwrap().len() <= 2 << 20,
            "{path} over -C"
        );
        assert!(
            records_in(std::slice::from_ref(path)) > 0,
            "{path} reads on its own"
        );
    }
    // Without -W every file stays, and together they hold every record.
    let file = scratch.file("all.tcpt");
    let recorder = Tracer::start(&netns, &["record", "-w", &file, "-C", "2M", "--json"]);
    churn(&netns, "1");
    let recorded = recorder.stop();
    let summary = recorded.summary();
    let files = summary["files"].as_u64().unwrap();
    assert!(files > 1, "{summary}");
    let all: Vec<String> = (0..files)
        .map(|i| {
            if i == 0 {
                file.clone()
            } else {
                format!("{file}{i}")
            }
        })
        .rev()
        .collect();
    let written = summary["records_written"].as_u64().unwrap();
    assert_eq!(summary["records_unwritten"], 0);
    assert_eq!(
        written,
        summary["transitions"].as_u64().unwrap() + summary["connections"].as_u64().unwrap()
    );
    assert_eq!(records_in(&all), written, "files given in any order");
}

/// A writer slower than the churn (a FIFO drained at 4 MiB/s, 4 MiB of
/// batches allowed to wait for it): the ring is
/// still drained (no reservation failure), what the file could not take
/// is counted as unwritten, and what reached it is a readable capture.
#[test]
fn a_slow_disk_costs_counted_records_not_a_stalled_ring() {
    let netns = Netns::new();
    let scratch = Scratch::new("slow");
    let fifo = scratch.file("slow.fifo");
    let c = std::ffi::CString::new(fifo.clone()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let path = fifo.clone();
    let drained = thread::spawn(move || {
        let mut input = fs::File::open(&path).unwrap();
        let mut kept = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            match input.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => kept.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("{e}"),
            }
            // 64 KiB every 16 ms: 4 MiB/s.
            thread::sleep(Duration::from_millis(16));
        }
        kept
    });
    let recorder = Tracer::start(&netns, &["record", "-w", &fifo, "-B", "4M", "--json"]);
    churn(&netns, "2");
    let recorded = recorder.stop();
    let summary = recorded.summary();
    let (written, unwritten, handed) = kept_of(summary);
    assert!(unwritten > 0, "the churn outran 4 MiB/s: {summary}");
    assert_eq!(
        written + unwritten,
        handed,
        "every record written or counted: {summary}"
    );
    assert_eq!(
        summary["ring_reservation_failures"], 0,
        "the ring never waited: {summary}"
    );
    assert!(
        recorded
            .stderr
            .iter()
            .any(|l| l.contains("could not be written")),
        "said on stderr as it happened: {:?}",
        recorded.stderr
    );
    let kept = drained.join().unwrap();
    let copy = scratch.file("slow.tcpt");
    fs::write(&copy, kept).unwrap();
    assert_eq!(records_in(&[copy]), written, "what was written reads back");
}

/// A full file system (a 6 MiB tmpfs): the first failed write is said
/// once, every record from then on is counted, and the file holds whole
/// blocks only (each failed write is cut back).
#[test]
fn a_full_disk_is_reported_and_the_capture_stays_readable() {
    let netns = Netns::new();
    let scratch = Scratch::new("full");
    let mount = scratch.0.join("mnt");
    fs::create_dir_all(&mount).unwrap();
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=6m",
            "tcptrace-test",
            mount.to_str().unwrap(),
        ])
        .status()
        .expect("mount");
    assert!(status.success(), "mounting a tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let file = mount.join("full.tcpt").display().to_string();
    let recorder = Tracer::start(&netns, &["record", "-w", &file, "--json"]);
    churn(&netns, "2");
    let recorded = recorder.stop();
    let summary = recorded.summary();
    let (written, unwritten, handed) = kept_of(summary);
    assert!(unwritten > 0 && written > 0, "{summary}");
    assert_eq!(written + unwritten, handed, "{summary}");
    let errors: Vec<&String> = recorded
        .stderr
        .iter()
        .filter(|l| l.contains("No space left on device"))
        .collect();
    assert_eq!(errors.len(), 1, "said once: {:?}", recorded.stderr);
    assert!(errors[0].contains(&file), "{}", errors[0]);
    // Cut short: no summary block fits, but every whole block reads.
    let (_, stderr) = read_back(&["-r", &file, "--all", "--json"]);
    assert!(!stderr.contains("damaged"), "{stderr}");
    assert_eq!(records_in(&[file]), written);
}
