//! A peer in a container made by a real runtime (Debian's runc): its
//! events name the cgroup the runtime made for it. Host only: in the
//! kernel matrix's guest (qemu, the host's files over 9p) `runc run` did
//! not start the container within the module's 15 minutes.
use serde_json::Value;

use crate::{
    capture::Scratch,
    harness::{self, Netns, Peer, Tracer},
};

/// A container id of 64 hex digits.
fn container_id(seed: u8) -> String {
    format!("{seed:02x}").repeat(32)
}

/// The records of one kind.
fn of_type<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == kind).collect()
}

/// A container made by a real runtime (Debian's runc, which `cargo xtask
/// test` installs): a peer server runs in it, in the test's network
/// namespace, in the cgroup runc creates for it, shaped as Docker's
/// cgroupfs driver shapes them (`…/docker/<id>`). Its events name that
/// cgroup and container; the container and its cgroup are gone when the
/// test ends.
#[test]
fn a_peer_in_a_runc_container_is_named_by_its_container() {
    let netns = Netns::new();
    let id = container_id(0xab);
    let parent = format!("tcptrace-test-{}-runc", std::process::id());
    let cgroup_path = format!("/{parent}/docker/{id}");
    let bundle = Scratch::new("runc");
    let rootfs = bundle.0.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    // The host's /usr, read-only, is the container's; the peer's directory too.
    for (link, target) in [
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("bin", "usr/bin"),
    ] {
        std::os::unix::fs::symlink(target, rootfs.join(link)).unwrap();
    }
    let peer_dir = harness::peer().parent().unwrap().display().to_string();
    let bind = |dir: &str| serde_json::json!({"destination": dir, "type": "bind", "source": dir, "options": ["rbind", "ro"]});
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [harness::peer(), "--name", "peer-server", "server", "--listen",
                     "127.0.0.1:0", "--mode", "close-second", "--hold-ms", "200"],
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "tcptrace-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            bind("/usr"),
            bind(&peer_dir),
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": netns.path()},
            ],
            "cgroupsPath": cgroup_path,
        },
    });
    std::fs::write(bundle.0.join("config.json"), config.to_string()).unwrap();
    let name = format!(
        "{parent}-{}",
        netns.path().file_name().unwrap().to_string_lossy()
    );
    let container = RuncContainer {
        name: name.clone(),
        parent: parent.clone(),
    };

    let tail = Tracer::start(&netns, &["--all", "--json"]);
    let mut runc = std::process::Command::new(harness::RUNC);
    runc.args(["run", "--bundle"]).arg(&bundle.0).arg(&name);
    let (server, port) = Peer::from_command(runc);
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt;
        let dir = harness::cgroup2_mount().join(cgroup_path.trim_start_matches('/'));
        std::fs::metadata(&dir)
            .unwrap_or_else(|e| panic!("runc made no cgroup {}: {e}", dir.display()))
            .ino()
    };
    let client = Peer::client(&netns, &format!("127.0.0.1:{port}"), "close-first", 0);
    let client_pid = client.pid();
    client.finish();
    server.finish();
    let records = tail.stop().records;
    let served: Vec<&Value> = of_type(&records, "transition")
        .into_iter()
        .filter(|t| t["comm"] == "peer-server")
        .collect();
    let names: Vec<(String, String)> = served
        .iter()
        .map(|t| {
            (
                t["old"].as_str().unwrap().into(),
                t["new"].as_str().unwrap().into(),
            )
        })
        .collect();
    for want in [
        ("CLOSE", "LISTEN"),
        ("LISTEN", "SYN_RECV"),
        ("CLOSE_WAIT", "LAST_ACK"),
    ] {
        assert!(
            names.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {names:?}"
        );
    }
    for t in &served {
        assert_eq!(t["cgroup"], cgroup_path.as_str(), "{t}");
        assert_eq!(t["cgroup_id"], cgroup_id, "{t}");
        assert_eq!(t["container"], format!("docker:{id}"), "{t}");
    }
    // The client, outside the container, is not in it.
    let outside = of_type(&records, "transition")
        .into_iter()
        .find(|t| t["pid"] == client_pid)
        .expect("the client's transitions");
    assert_ne!(outside["cgroup"], cgroup_path.as_str());
    drop(container);
}

/// Removes what runc made for a test: the container if it still runs, and
/// the cgroups runc created, in every hierarchy (`runc delete` leaves the
/// parents of a container's cgroup).
struct RuncContainer {
    name: String,
    parent: String,
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(harness::RUNC)
            .args(["delete", "--force", &self.name])
            .output();
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let mut roots: Vec<std::path::PathBuf> = hierarchies.flatten().map(|e| e.path()).collect();
        roots.push(std::path::PathBuf::from("/sys/fs/cgroup"));
        for root in roots {
            let made = root.join(&self.parent);
            let _ = std::fs::remove_dir(made.join("docker"));
            let _ = std::fs::remove_dir(&made);
        }
    }
}
