//! Starting a tracer while other namespaces churn: what happened before
//! the probe could see it is not reported as lost. (A module of its own:
//! the churn's recursion misses are machine-wide counts that the load
//! module's exact accounting must not see.)

use crate::harness::{self, peer, Netns};

/// Timewait sockets born elsewhere while a tracer starts are not its
/// losses. The probe's birth hooks are attached before its state program,
/// so a birth in between has its hand-off before the probe can see it: a
/// connection that predates tracing. (It was once reported as a lost
/// TIME_WAIT entry by every short `census --once` on a busy host.)
#[test]
fn tracers_started_amid_churn_elsewhere_lose_nothing() {
    let quiet = Netns::new();
    let busy = Netns::new();
    let mut churn = busy
        .command(peer())
        .args(["churn", "--seconds", "8", "--clients", "2", "--ports", "2"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("running the churn generator");
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..5 {
        let out = quiet
            .command(harness::TRACER)
            .args(["census", "--once", "--json"])
            .output()
            .expect("tcptrace census");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let records: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records[0]["type"], "census", "{stdout}");
        // Skipped runs (recursion misses) are real losses and may happen
        // under churn; an entry lost at start-up never is.
        for lost in records.iter().filter(|r| r["type"] == "lost") {
            assert_eq!(lost["timewait_entries_lost"], 0, "{stdout}");
        }
    }
    assert!(churn.wait().expect("the churn generator").success());
}
