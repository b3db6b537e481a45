//! Which cgroup owns each socket: real cgroups of the tests' own under the
//! cgroup v2 hierarchy, named as Docker, CRI-O, containerd and systemd name
//! theirs, with the peers moved into them before they exec. Every headline
//! event, `life` record, `stuck` row, census key and histogram names the
//! exact cgroup and container; `--cgroup` keeps exactly a subtree, in the
//! kernel, and in a capture read back. (A real container runtime's
//! container: `containers`.)
use std::{thread, time::Duration};

use serde_json::Value;

use crate::{
    capture::{read_back, Scratch},
    harness::{self, Netns, Peer, TestCgroup, Tracer, TRACER},
};

/// A container id of 64 hex digits, different per `seed`.
fn container_id(seed: u8) -> String {
    format!("{seed:02x}").repeat(32)
}

/// The records of one kind.
fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// The transitions of one process, as (old, new) names.
fn transitions_of(records: &[Value], pid: u32) -> Vec<(String, String)> {
    of_type(records, "transition")
        .into_iter()
        .filter(|t| t["pid"] == pid)
        .map(|t| {
            (
                t["old"].as_str().unwrap().into(),
                t["new"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// Every record with an owner names the cgroup of its pid exactly, and
/// every record has one (these peers are the namespace's only owners).
fn assert_owners(records: &[&Value], expected: &[(u32, &TestCgroup, &str)]) {
    assert!(!records.is_empty());
    for r in records {
        assert_eq!(r["owner_known"], true, "owner of {r}");
        let pid = r["pid"].as_u64().unwrap() as u32;
        let (_, cgroup, container) = expected
            .iter()
            .find(|(p, _, _)| *p == pid)
            .unwrap_or_else(|| panic!("an unexpected owner in {r}"));
        assert_eq!(r["cgroup"], cgroup.path.as_str(), "{r}");
        assert_eq!(r["cgroup_id"], cgroup.id(), "{r}");
        assert_eq!(r["container"], *container, "{r}");
    }
}

#[test]
fn events_and_life_name_the_owners_cgroup_and_container_and_filter_by_subtree() {
    let netns = Netns::new();
    let root = TestCgroup::new();
    let docker_id = container_id(0xd0);
    let service = root.child("system.slice");
    let web = service.child("web.service");
    let docker = root.child(&format!("docker-{docker_id}.scope"));

    let tail = Tracer::start(&netns, &["--all", "--json"]);
    let headline = Tracer::start(&netns, &["--json"]);
    let life = Tracer::start(&netns, &["life", "--json"]);
    let in_root = Tracer::start(&netns, &["--all", "--json", "--cgroup", &root.path]);
    // The same subtree by its directory under the mount.
    let docker_dir = docker.dir().display().to_string();
    let in_docker = Tracer::start(&netns, &["--all", "--json", "--cgroup", &docker_dir]);
    let in_web = Tracer::start(&netns, &["--all", "--json", "--cgroup", &service.path]);
    let scratch = Scratch::new("cgroups");
    let capture = scratch.file("cg.tcpt");
    let record = Tracer::start(&netns, &["record", "-w", &capture, "--json"]);

    // The server (in the Docker scope) holds CLOSE_WAIT for a moment after
    // the client (in web.service) closes first: the client's side goes to
    // TIME_WAIT, the server's through LAST_ACK.
    let (server, port) = Peer::server_in(&netns, &docker, "127.0.0.1:0", "close-second", 200, &[]);
    let client = Peer::client_in(
        &netns,
        &web,
        &format!("127.0.0.1:{port}"),
        "close-first",
        0,
        &[],
    );
    let (server_pid, client_pid) = (server.pid(), client.pid());
    client.finish();
    server.finish();
    thread::sleep(Duration::from_millis(300));

    let docker_label = format!("docker:{docker_id}");
    let owners: [(u32, &TestCgroup, &str); 2] = [
        (server_pid, &docker, docker_label.as_str()),
        (client_pid, &web, "web.service"),
    ];
    let all = tail.stop().records;
    // What two tracers both saw: each read the clock itself.
    let strip = |records: &[Value]| -> Vec<Vec<Value>> {
        of_type(records, "transition")
            .iter()
            .map(|t| {
                [
                    "sk",
                    "old",
                    "new",
                    "pid",
                    "cgroup_id",
                    "cgroup",
                    "container",
                ]
                .map(|k| t[k].clone())
                .to_vec()
            })
            .collect()
    };
    assert_owners(&of_type(&all, "transition"), &owners);
    // The headline events: CLOSE_WAIT -> LAST_ACK (server) and the client's
    // true FIN_WAIT2 -> TIME_WAIT, from its timewait socket.
    let headline = headline.stop().records;
    let headlines = of_type(&headline, "transition");
    assert_owners(&headlines, &owners);
    let names: Vec<(String, String)> = headlines
        .iter()
        .map(|t| {
            (
                t["old"].as_str().unwrap().into(),
                t["new"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [("CLOSE_WAIT", "LAST_ACK"), ("FIN_WAIT2", "TIME_WAIT")] {
        assert!(
            names.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {names:?}"
        );
    }
    // The server's side is over (LAST_ACK -> CLOSE): its life record.
    let life = life.stop().records;
    let ends = of_type(&life, "connection");
    assert_owners(&ends, &owners);
    assert_eq!(ends.len(), 1, "only the server's end is over: {ends:#?}");

    // --cgroup: the subtree's root keeps both; each leaf keeps its own,
    // exactly what the unfiltered view showed of that process.
    let both = in_root.stop().records;
    assert_eq!(strip(&both), strip(&all));
    let only_docker = in_docker.stop().records;
    assert_eq!(
        transitions_of(&only_docker, server_pid),
        transitions_of(&all, server_pid)
    );
    assert_eq!(
        of_type(&only_docker, "transition").len(),
        transitions_of(&all, server_pid).len()
    );
    let only_web = in_web.stop().records;
    assert_eq!(
        transitions_of(&only_web, client_pid),
        transitions_of(&all, client_pid)
    );
    assert_eq!(
        of_type(&only_web, "transition").len(),
        transitions_of(&all, client_pid).len()
    );

    // The capture names the cgroups itself: read back after they are gone,
    // and filtered by path.
    record.stop();
    let service_path = service.path.clone();
    drop((web, service, docker));
    root.remove();
    let (back, _) = read_back(&["-r", &capture, "--all", "--json"]);
    assert_eq!(strip(&back), strip(&all));
    let (back_web, _) = read_back(&["-r", &capture, "--all", "--json", "--cgroup", &service_path]);
    assert_eq!(
        transitions_of(&back_web, client_pid),
        transitions_of(&all, client_pid)
    );
    assert_eq!(
        of_type(&back_web, "transition").len(),
        transitions_of(&all, client_pid).len()
    );
}

#[test]
fn a_removed_cgroup_keeps_its_name_while_its_sockets_live_on() {
    let netns = Netns::new();
    let root = TestCgroup::new();
    let crio_id = container_id(0xc1);
    let server_cgroup = root.child("server.service");
    let tail = Tracer::start(&netns, &["--json"]);
    // Created while tracing, gone before any event of its shows: only the
    // kernel's cgroup_mkdir names it (a walk would come too late).
    let short_lived = root.child(&format!("crio-{crio_id}.scope"));
    // The client (in a short-lived container) closes first and exits; its
    // connection waits in an orphaned timewait socket for the server's FIN.
    let hold_ms = harness::outlasting_startup_ms(1_500);
    let (server, port) = Peer::server_in(
        &netns,
        &server_cgroup,
        "127.0.0.1:0",
        "close-second",
        hold_ms,
        &[],
    );
    let client = Peer::client_in(
        &netns,
        &short_lived,
        &format!("127.0.0.1:{port}"),
        "close-first",
        0,
        &[],
    );
    let client_pid = client.pid();
    client.finish();
    // The container is gone before its connection enters TIME_WAIT.
    let short_lived_path = short_lived.path.clone();
    let short_lived_id = short_lived.id();
    short_lived.remove();
    server.finish();
    let records = tail.stop().records;
    let entry = of_type(&records, "transition")
        .into_iter()
        .find(|t| t["pid"] == client_pid && t["new"] == "TIME_WAIT")
        .unwrap_or_else(|| panic!("the client's TIME_WAIT entry in {records:#?}"));
    assert_eq!(entry["timewait_socket"], true);
    assert_eq!(entry["cgroup"], short_lived_path.as_str());
    assert_eq!(entry["cgroup_id"], short_lived_id);
    assert_eq!(entry["container"], format!("crio:{crio_id}"));
}

/// `stuck`, `census --by` and `hist --by` on owners found by walking
/// procfs (a socket stuck before tcptrace started) and by events.
#[test]
fn socket_views_name_cgroups_and_group_and_filter_by_them() {
    let netns = Netns::new();
    let root = TestCgroup::new();
    let containerd_id = container_id(0xcd);
    let holder = root.child(&format!("cri-containerd-{containerd_id}.scope"));
    let clients = root.child("clients.service");
    let elsewhere = TestCgroup::new();
    // Stuck in CLOSE_WAIT before tcptrace starts.
    let hold_ms = harness::outlasting_startup_ms(12_000);
    let (server, port) =
        Peer::server_in(&netns, &holder, "127.0.0.1:0", "close-second", hold_ms, &[]);
    let client = Peer::client_in(
        &netns,
        &clients,
        &format!("127.0.0.1:{port}"),
        "close-first",
        0,
        &[],
    );
    let (client_port, _) = client.finish();
    thread::sleep(Duration::from_millis(300));

    let run = |args: &[&str]| -> Vec<Value> {
        let out = netns.command(TRACER).args(args).output().expect("tcptrace");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "tcptrace {args:?}: {stderr}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // `stuck --once --json`, every stuck socket, with more flags.
    let stuck = |extra: &[&str]| {
        run(&[&["stuck", "--once", "--json", "--min-age", "0.001"], extra].concat())
    };
    let rows = stuck(&[]);
    let row = of_type(&rows, "stuck")
        .into_iter()
        .find(|r| r["lport"] == port && r["rport"] == client_port)
        .unwrap_or_else(|| panic!("the CLOSE_WAIT socket in {rows:#?}"));
    assert_eq!(row["state"], "CLOSE_WAIT");
    assert_eq!(row["pid"], server.pid());
    assert_eq!(row["cgroup"], holder.path.as_str());
    assert_eq!(row["container"], format!("containerd:{containerd_id}"));

    // --by container: the counts per container.
    let grouped = stuck(&["--by", "container"]);
    let group = of_type(&grouped, "stuck_group")
        .into_iter()
        .find(|g| g["key"] == format!("containerd:{containerd_id}"))
        .unwrap_or_else(|| panic!("the container's counts in {grouped:#?}"));
    assert_eq!(
        [
            &group["by"],
            &group["close_wait"],
            &group["fin_wait2"],
            &group["last_ack"]
        ],
        [&Value::from("container"), &1.into(), &0.into(), &0.into()]
    );

    // --cgroup on the views: the subtree keeps it, another cgroup nothing.
    let inside = stuck(&["--cgroup", &root.path]);
    assert_eq!(of_type(&inside, "stuck").len(), 1, "{inside:#?}");
    let outside = stuck(&["--cgroup", &elsewhere.path]);
    assert_eq!(of_type(&outside, "stuck").len(), 0, "{outside:#?}");

    let census = run(&[
        "census",
        "--once",
        "--json",
        "--by",
        "container",
        "--states",
        "CLOSE_WAIT",
    ]);
    let top = &of_type(&census, "census")[0]["top"]["CLOSE_WAIT"];
    assert_eq!(
        top,
        &serde_json::json!([{"key": format!("containerd:{containerd_id}"), "count": 1}])
    );
    let census = run(&[
        "census",
        "--once",
        "--json",
        "--cgroup",
        &holder.path,
        "--by",
        "cgroup",
        "--states",
        "CLOSE_WAIT",
    ]);
    let census = &of_type(&census, "census")[0];
    assert_eq!(census["states"]["CLOSE_WAIT"], 1);
    assert_eq!(
        census["top"]["CLOSE_WAIT"],
        serde_json::json!([{"key": holder.path, "count": 1}])
    );
    server.finish();

    // hist --by container: three connections within the service, two
    // within the container, reset by the server: both sides' lifetimes
    // under their owner's key.
    let hist = Tracer::start(
        &netns,
        &[
            "hist",
            "--json",
            "--by",
            "container",
            "--cgroup",
            &root.path,
        ],
    );
    for (cgroup, n) in [(&clients, 3), (&holder, 2)] {
        let n = n.to_string();
        let connections = ["--connections", n.as_str()];
        let (server, port) =
            Peer::server_in(&netns, cgroup, "127.0.0.1:0", "abort", 50, &connections);
        let client = Peer::client_in(
            &netns,
            cgroup,
            &format!("127.0.0.1:{port}"),
            "close-first",
            200,
            &connections,
        );
        client.finish_all();
        server.finish_all();
    }
    let records = hist.stop().records;
    let lifetimes: Vec<(Value, Value)> = of_type(&records, "histogram")
        .into_iter()
        .filter(|h| h["metric"] == "lifetime")
        .map(|h| (h["key"].clone(), h["count"].clone()))
        .collect();
    assert_eq!(
        lifetimes,
        vec![
            ("clients.service".into(), 6.into()),
            (format!("containerd:{containerd_id}").into(), 4.into()),
        ]
    );
}
