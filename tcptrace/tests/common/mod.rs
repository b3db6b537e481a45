//! Test harness: the real tcptrace binary with the real probe, and peers in
//! separate processes making real connections.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, ChildStdout, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const TRACER: &str = env!("CARGO_BIN_EXE_tcptrace");
pub const PEER: &str = env!("CARGO_BIN_EXE_tcptrace-peer");

/// A running `tcptrace`, started and ready (probe attached).
pub struct Tracer {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Tracer {
    /// Starts tcptrace with `args` and waits until it says it is tracing.
    pub fn start(args: &[&str]) -> Tracer {
        let mut child = Command::new(TRACER)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcptrace");
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("tcptrace: tracing") => break,
                Ok(line) if line.contains("warning") => panic!("unexpected warning: {line}"),
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().unwrap();
                    panic!("tcptrace did not start ({status})");
                }
            }
        }
        Tracer { child, stderr: rx }
    }

    /// SIGINT, then all JSON records it printed (the summary last).
    pub fn stop(self) -> Records {
        self.stop_with(libc::SIGINT)
    }

    pub fn stop_with(mut self, signal: i32) -> Records {
        // Let the last softirq-driven transitions of the peers land.
        thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "tcptrace exited with {status}");
        let records: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        for r in &records {
            assert!(r["type"].is_string(), "record without type: {r}");
        }
        let last = records.last().expect("at least the summary");
        assert_eq!(last["type"], "summary", "summary comes last");
        assert_eq!(last["ring_reservation_failures"], 0);
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        Records { records, stderr }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Records {
    pub records: Vec<Value>,
    pub stderr: Vec<String>,
}

impl Records {
    pub fn transitions(&self) -> Vec<&Value> {
        self.records.iter().filter(|r| r["type"] == "transition").collect()
    }

    pub fn summary(&self) -> &Value {
        self.records.last().unwrap()
    }

    /// Transitions of the socket with this local port, as "OLD->NEW".
    pub fn sequence_of(&self, lport: u16) -> Vec<String> {
        self.transitions()
            .into_iter()
            .filter(|t| t["lport"] == lport)
            .map(|t| format!("{}->{}", t["old"].as_str().unwrap(), t["new"].as_str().unwrap()))
            .collect()
    }

    /// Transitions of one socket (by kernel address), in output order.
    pub fn of_socket(&self, sk: &Value) -> Vec<&Value> {
        self.transitions().into_iter().filter(|t| &t["sk"] == sk).collect()
    }

    pub fn find(&self, lport: u16, old: &str, new: &str) -> &Value {
        let matches: Vec<&Value> = self
            .transitions()
            .into_iter()
            .filter(|t| t["lport"] == lport && t["old"] == old && t["new"] == new)
            .collect();
        assert_eq!(matches.len(), 1, "exactly one {old}->{new} on lport {lport} in {:#?}", self.records);
        matches[0]
    }
}

/// A peer process (client or server), reporting on its stdout.
pub struct Peer {
    pub child: Child,
    lines: BufReader<ChildStdout>,
}

impl Peer {
    fn spawn(args: &[String]) -> Peer {
        let mut child = Command::new(PEER)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting tcptrace-peer");
        let lines = BufReader::new(child.stdout.take().unwrap());
        Peer { child, lines }
    }

    /// A server on `addr` (port 0 for any); returns it and its port.
    pub fn server(addr: &str, mode: &str, hold_ms: u64) -> (Peer, u16) {
        let mut peer = Peer::spawn(&args("peer-server", "server", "--listen", addr, mode, hold_ms));
        let line = peer.next_line();
        let port = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected {line:?}"))
            .parse()
            .unwrap();
        (peer, port)
    }

    pub fn client(addr: &str, mode: &str, hold_ms: u64) -> Peer {
        Peer::spawn(&args("peer-client", "client", "--connect", addr, mode, hold_ms))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn next_line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// Waits for the peer to finish; returns its (local, remote) ports.
    pub fn finish(mut self) -> (u16, u16) {
        let line = self.next_line();
        let mut parts = line.strip_prefix("connection ").expect("a connection line").split(' ');
        let local = parts.next().unwrap().parse().unwrap();
        let remote = parts.next().unwrap().parse().unwrap();
        assert_eq!(self.next_line(), "done");
        assert!(self.child.wait().unwrap().success());
        (local, remote)
    }
}

fn args(name: &str, role: &str, flag: &str, addr: &str, mode: &str, hold_ms: u64) -> Vec<String> {
    [
        "--name",
        name,
        role,
        flag,
        addr,
        "--mode",
        mode,
        "--hold-ms",
        &hold_ms.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// A port that was free a moment ago (for tests that must know it first).
pub fn free_port(addr: &str) -> u16 {
    std::net::TcpListener::bind(addr).unwrap().local_addr().unwrap().port()
}

pub fn ns(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("expected a number of ns, got {v}"))
}
