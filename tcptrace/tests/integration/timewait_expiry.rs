//! TIME_WAIT ends 60 s after it began (TCP_TIMEWAIT_LEN). The test waits
//! that long; run it alone with `cargo xtask test --test timewait_expiry`.

use crate::harness::{ns, Netns, Peer, Tracer};

const S: u64 = 1_000_000_000;

#[test]
fn time_wait_expires_after_sixty_seconds() {
    let netns = Netns::new();
    let (server, port) = Peer::server(&netns, "127.0.0.1:0", "close-second", 0);
    let tracer = Tracer::start(&netns, &["--json", "--port", &port.to_string()]);
    let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", 0);
    let client_pid = client.pid();
    let (client_port, _) = client.finish();
    server.finish();
    // The timer wheel fires up to about 1.5 s late at this range.
    std::thread::sleep(std::time::Duration::from_secs(63));
    let records = tracer.stop();

    let entered = records.find(client_port, "FIN_WAIT2", "TIME_WAIT");
    let end = records.find(client_port, "TIME_WAIT", "CLOSE");
    assert_eq!(end["end"], "expired", "{end}");
    assert_eq!(end["timewait_socket"], true);
    assert_eq!(end["pid"], client_pid);
    assert_eq!(end["comm"], "peer-client");
    assert_eq!(end["sk"], entered["sk"], "the same timewait socket");
    let lasted = ns(&end["in_old_ns"]);
    assert!(
        (60 * S..62 * S).contains(&lasted),
        "TIME_WAIT lasted {lasted} ns"
    );
    assert_eq!(
        ns(&end["ktime_ns"]) - ns(&entered["ktime_ns"]),
        lasted,
        "measured from the TIME_WAIT entry"
    );
}
