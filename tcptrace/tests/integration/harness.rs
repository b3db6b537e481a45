//! Test harness: the real tcptrace binary with the real probe, and peers in
//! separate processes making real connections.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdout, Command, Stdio},
    sync::{mpsc, Condvar, Mutex, OnceLock},
    thread,
    time::Duration,
};

use serde_json::Value;
use xtask::harness::{Namespace, Notify};

pub const TRACER: &str = env!("CARGO_BIN_EXE_tcptrace");
/// Debian's runc, the container runtime of the `cgroups` tests (`cargo
/// xtask test` installs it).
pub const RUNC: &str = "runc";
/// The test peer, a development tool of the xtask package
/// (xtask/src/bin/tcptrace-peer.rs, not installed with tcptrace): in the
/// target directory's profile directory, where cargo put this test binary's
/// `deps/`. `cargo xtask test` builds it first.
pub fn peer() -> &'static Path {
    static PEER: OnceLock<PathBuf> = OnceLock::new();
    PEER.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let peer =
            xtask::harness::peer_beside(&exe).expect("the test binary in TARGET/PROFILE/deps/");
        assert!(
            peer.exists(),
            "{} is missing: build it with `cargo build --release --package xtask --bin \
             tcptrace-peer` (`cargo xtask test` does)",
            peer.display()
        );
        peer
    })
}

/// A network namespace of the test's own, with loopback up: its ports,
/// listeners and TIME_WAIT table (net.ipv4.tcp_max_tw_buckets is per
/// namespace) are not shared with the host or with other tests.
pub struct Netns {
    /// Deleted when dropped (`xtask::harness::Namespace`), before the turn.
    ns: Namespace,
    /// Held for the test's whole life (the namespace is its first value, so
    /// dropped last).
    _turn: Turn,
}

/// Tests run side by side with the others of their module, never beside
/// another module's: as when each module was a test binary of its own
/// (lifetimes' histograms have no namespace key, the churn of load would
/// stretch the timing-sensitive tests, ...). A module's turn lasts while
/// any of its tests holds it.
pub struct Turn {
    module: &'static str,
}

/// The module whose turn it is, and how many of its tests hold it.
static TURN: Mutex<(Option<&'static str>, usize)> = Mutex::new((None, 0));
static TURN_ENDED: Condvar = Condvar::new();

impl Turn {
    /// Waits for the turn of the calling test's module (its source file).
    #[track_caller]
    pub fn take() -> Turn {
        let module = std::panic::Location::caller().file();
        // A test that failed holding the lock poisons it; the others still run.
        let mut turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        while turn.0.is_some_and(|m| m != module) {
            turn = TURN_ENDED.wait(turn).unwrap_or_else(|e| e.into_inner());
        }
        *turn = (Some(module), turn.1 + 1);
        Turn { module }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        debug_assert_eq!(turn.0, Some(self.module));
        turn.1 -= 1;
        if turn.1 == 0 {
            turn.0 = None;
            TURN_ENDED.notify_all();
        }
    }
}

impl Netns {
    /// A namespace for a test, once its module's turn has come (`Turn`).
    #[track_caller]
    pub fn new() -> Netns {
        Netns::with(Turn::take())
    }

    fn with(turn: Turn) -> Netns {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tcptrace-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Namespace::add(name).expect("a network namespace (iproute2's ip)");
        Netns { ns, _turn: turn }
    }

    /// Inode of the namespace, as tcptrace reports it ("netns").
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.ns.name()))
            .expect("the namespace's bind mount")
            .ino()
    }

    /// The namespace's file, for setns(2) (`/run/netns/NAME`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns.name()))
    }

    /// Sets a (per-namespace) sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        self.ns.sysctl(key, value).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `program` to be run inside the namespace (the pid stays the same:
    /// `ip netns exec` execs it).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.ns.command(program)
    }
}

/// How long a tracer may take to say it is ready (BTF parsing and the
/// verifier take seconds under emulation).
const START_LIMIT: Duration = Duration::from_secs(60);

/// A notify socket for one tracer (`xtask::harness::Notify`).
fn notify() -> Notify {
    Notify::new("tcptrace-test").expect("binding a notify socket")
}

/// Waits for `child`'s READY=1 on `notify`; the reason if it exits first
/// or does not say it within START_LIMIT.
pub fn wait_ready(notify: &Notify, child: &mut Child) -> Result<(), String> {
    notify.wait_ready(START_LIMIT, || {
        child
            .try_wait()
            .unwrap()
            .map(|status| format!("exited with {status}"))
    })
}

/// What is already in `stderr`'s pipe, without waiting for more.
fn read_available(stderr: &mut ChildStderr) -> String {
    let fd = stderr.as_raw_fd();
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    let mut out = Vec::new();
    let mut chunk = [0; 4096];
    while let Ok(n @ 1..) = stderr.read(&mut chunk) {
        out.extend_from_slice(&chunk[..n]);
    }
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    String::from_utf8_lossy(&out).into_owned()
}

/// A running `tcptrace`, started and ready (probe attached).
pub struct Tracer {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// Reads stdout as it comes, as a user's pipe would: a reader that
    /// waited for the end would stall tcptrace and fill its ring buffer.
    stdout: Option<thread::JoinHandle<String>>,
}

impl Tracer {
    /// tcptrace in `netns` with piped stdout and stderr, just spawned, and
    /// the socket where it will say it is ready.
    pub fn spawn(netns: &Netns, args: &[&str]) -> (Child, Notify) {
        let notify = notify();
        let child = notify
            .pass_to(&mut netns.command(TRACER))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcptrace");
        (child, notify)
    }

    /// Starts tcptrace in `netns` with `args`; returns once it is tracing.
    /// A tracer in the test's namespace, reporting only that namespace (the
    /// kernel hooks see every namespace, and other tests run beside).
    pub fn start(netns: &Netns, args: &[&str]) -> Tracer {
        let mut all = args.to_vec();
        all.extend(["--netns", "self"]);
        let (child, notify) = Tracer::spawn(netns, &all);
        Tracer::started(child, notify)
    }

    /// A tracer in the host's namespace: the test's namespace can then go
    /// away while it traces (which kills the namespace's timewait sockets).
    pub fn start_in_host(netns: &Netns, args: &[&str]) -> Tracer {
        let notify = notify();
        let child = notify
            .pass_to(&mut Command::new(TRACER))
            .args(args)
            .args(["--netns", &format!("/run/netns/{}", netns.ns.name())])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcptrace");
        Tracer::started(child, notify)
    }

    /// Waits for READY=1. What tcptrace printed before it (its banner, any
    /// start-up note) is all in the pipe by then, and must hold no warning;
    /// what it prints afterwards is the run's (`Records::stderr`).
    fn started(mut child: Child, notify: Notify) -> Tracer {
        let mut stderr = child.stderr.take().unwrap();
        if let Err(why) = wait_ready(&notify, &mut child) {
            let _ = child.kill();
            let _ = child.wait();
            let mut said = String::new();
            let _ = stderr.read_to_string(&mut said);
            panic!("tcptrace did not start ({why}): {said}");
        }
        for line in read_available(&mut stderr).lines() {
            assert!(!line.contains("warning"), "unexpected warning: {line}");
        }
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        let stdout = thread::spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).unwrap();
            out
        });
        Tracer {
            child,
            stderr: rx,
            stdout: Some(stdout),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then all JSON records it printed (the summary last).
    pub fn stop(self) -> Records {
        self.stop_with(libc::SIGINT)
    }

    pub fn stop_with(mut self, signal: i32) -> Records {
        // Let the last softirq-driven transitions of the peers land.
        thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let out = self.stdout.take().unwrap().join().unwrap();
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
        let skipped = ["recursion_misses", "timewait_hook_misses"]
            .iter()
            .map(|key| last[*key].as_u64().unwrap_or(0))
            .sum::<u64>();
        SKIPPED_RUNS.with(|count| count.set(count.get() + skipped));
        assert_eq!(last["ring_reservation_failures"], 0);
        assert_eq!(
            last["emitted_by_probe"], last["events"],
            "everything written was read"
        );
        // Everything it wrote, to the end: the reader thread ends (and the
        // channel closes) at the exit's end-of-file.
        let stderr: Vec<String> = self.stderr.iter().collect();
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
        self.records
            .iter()
            .filter(|r| r["type"] == "transition")
            .collect()
    }

    pub fn summary(&self) -> &Value {
        self.records.last().unwrap()
    }

    /// Transitions of the socket with this local port, as "OLD->NEW".
    pub fn sequence_of(&self, lport: u16) -> Vec<String> {
        self.transitions()
            .into_iter()
            .filter(|t| t["lport"] == lport)
            .map(transition_name)
            .collect()
    }

    /// Transitions of one socket (by kernel address), in output order.
    pub fn of_socket(&self, sk: &Value) -> Vec<&Value> {
        self.transitions()
            .into_iter()
            .filter(|t| &t["sk"] == sk)
            .collect()
    }

    pub fn find(&self, lport: u16, old: &str, new: &str) -> &Value {
        let matches: Vec<&Value> = self
            .transitions()
            .into_iter()
            .filter(|t| t["lport"] == lport && t["old"] == old && t["new"] == new)
            .collect();
        assert_eq!(
            matches.len(),
            1,
            "exactly one {old}->{new} on lport {lport} in {:#?}",
            self.records
        );
        matches[0]
    }
}

/// A peer process (client or server), reporting on its stdout.
pub struct Peer {
    pub child: Child,
    lines: BufReader<ChildStdout>,
}

impl Peer {
    /// A peer started in `cgroup` (it joins before it execs).
    fn spawn_in(netns: &Netns, cgroup: Option<&TestCgroup>, args: &[String]) -> Peer {
        let mut command = netns.command(peer());
        if let Some(cgroup) = cgroup {
            cgroup.enter_at_exec(&mut command);
        }
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting tcptrace-peer");
        let lines = BufReader::new(child.stdout.take().unwrap());
        Peer { child, lines }
    }

    /// A server on `addr` (port 0 for any); returns it and its port.
    pub fn server(netns: &Netns, addr: &str, mode: &str, hold_ms: u64) -> (Peer, u16) {
        Peer::server_with(netns, addr, mode, hold_ms, &[])
    }

    pub fn client(netns: &Netns, addr: &str, mode: &str, hold_ms: u64) -> Peer {
        Peer::client_with(netns, addr, mode, hold_ms, &[])
    }

    /// A client with extra tcptrace-peer options (`--connections`, ...).
    pub fn client_with(
        netns: &Netns,
        addr: &str,
        mode: &str,
        hold_ms: u64,
        extra: &[&str],
    ) -> Peer {
        Peer::client_where(netns, None, addr, mode, hold_ms, extra)
    }

    /// A server with extra tcptrace-peer options; returns it and its port.
    pub fn server_with(
        netns: &Netns,
        addr: &str,
        mode: &str,
        hold_ms: u64,
        extra: &[&str],
    ) -> (Peer, u16) {
        Peer::server_where(netns, None, addr, mode, hold_ms, extra)
    }

    fn server_where(
        netns: &Netns,
        cgroup: Option<&TestCgroup>,
        addr: &str,
        mode: &str,
        hold_ms: u64,
        extra: &[&str],
    ) -> (Peer, u16) {
        let all = args(
            "peer-server",
            "server",
            "--listen",
            addr,
            mode,
            hold_ms,
            extra,
        );
        let mut peer = Peer::spawn_in(netns, cgroup, &all);
        let port = peer.listening_port();
        (peer, port)
    }

    /// A server started by `command` (a container runtime running one),
    /// with its stdout; returns it and its port.
    pub fn from_command(mut command: Command) -> (Peer, u16) {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting a peer server");
        let lines = BufReader::new(child.stdout.take().unwrap());
        let mut peer = Peer { child, lines };
        let port = peer.listening_port();
        (peer, port)
    }

    /// A server started in `cgroup`; returns it and its port.
    pub fn server_in(
        netns: &Netns,
        cgroup: &TestCgroup,
        addr: &str,
        mode: &str,
        hold_ms: u64,
        extra: &[&str],
    ) -> (Peer, u16) {
        Peer::server_where(netns, Some(cgroup), addr, mode, hold_ms, extra)
    }

    /// A client started in `cgroup`.
    pub fn client_in(
        netns: &Netns,
        cgroup: &TestCgroup,
        addr: &str,
        mode: &str,
        hold_ms: u64,
        extra: &[&str],
    ) -> Peer {
        Peer::client_where(netns, Some(cgroup), addr, mode, hold_ms, extra)
    }

    /// Every peer client spawns here, in `cgroup` if given.
    fn client_where(
        netns: &Netns,
        cgroup: Option<&TestCgroup>,
        addr: &str,
        mode: &str,
        hold_ms: u64,
        extra: &[&str],
    ) -> Peer {
        let all = args(
            "peer-client",
            "client",
            "--connect",
            addr,
            mode,
            hold_ms,
            extra,
        );
        Peer::spawn_in(netns, cgroup, &all)
    }

    fn listening_port(&mut self) -> u16 {
        let line = self.next_line();
        line.strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected {line:?}"))
            .parse()
            .unwrap()
    }

    /// Waits for a peer that made several connections; returns the
    /// (local, remote) ports of each.
    pub fn finish_all(mut self) -> Vec<(u16, u16)> {
        let mut connections = Vec::new();
        loop {
            let line = self.next_line();
            if line == "done" {
                break;
            }
            let mut parts = line
                .strip_prefix("connection ")
                .unwrap_or_else(|| panic!("unexpected {line:?}"))
                .split(' ');
            let local = parts.next().unwrap().parse().unwrap();
            let remote = parts.next().unwrap().parse().unwrap();
            connections.push((local, remote));
        }
        assert!(self.child.wait().unwrap().success());
        connections
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
        let mut parts = line
            .strip_prefix("connection ")
            .expect("a connection line")
            .split(' ');
        let local = parts.next().unwrap().parse().unwrap();
        let remote = parts.next().unwrap().parse().unwrap();
        assert_eq!(self.next_line(), "done");
        assert!(self.child.wait().unwrap().success());
        (local, remote)
    }
}

fn args(
    name: &str,
    role: &str,
    flag: &str,
    addr: &str,
    mode: &str,
    hold_ms: u64,
    extra: &[&str],
) -> Vec<String> {
    let mut all: Vec<String> = [
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
    .to_vec();
    all.extend(extra.iter().map(|s| s.to_string()));
    all
}

thread_local! {
    /// Probe runs the kernel skipped (recursion misses) in the tracers this
    /// test thread stopped, as their summaries counted them.
    static SKIPPED_RUNS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs a scenario whose assertions are exact. Under emulation only, a
/// failure after the kernel reported skipping probe runs (a softirq landing
/// while the program ran on that CPU: far likelier when every instruction
/// is emulated) runs the scenario again, up to three attempts in all. The
/// loss was real and counted; the retry asks for one run the kernel did not
/// cut short. On the host, or when nothing was skipped, a failure fails.
pub fn exact_unless_kernel_skipped(scenario: impl Fn()) {
    for attempt in 1..=3 {
        SKIPPED_RUNS.with(|count| count.set(0));
        let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&scenario)) else {
            return;
        };
        let skipped = SKIPPED_RUNS.with(std::cell::Cell::get);
        if !(emulated() && skipped > 0 && attempt < 3) {
            std::panic::resume_unwind(panic);
        }
        eprintln!(
            "attempt {attempt} failed after the kernel skipped {skipped} probe runs \
             (counted as recursion misses): running it again"
        );
    }
}

/// Whether the tests run in an emulated guest (`cargo xtask test --kernel
/// ...` under qemu's TCG sets TCPTRACE_TEST_EMULATED=1): everything runs
/// 10-50 times slower there, starting the tracer (BTF parsing, the
/// verifier) takes seconds. Timing margins widen there, and only there.
pub fn emulated() -> bool {
    std::env::var_os("TCPTRACE_TEST_EMULATED").is_some_and(|v| v == "1")
}

/// A wait that must outlast the tracer's start-up: `ms`, or five times as
/// long under emulation.
pub fn outlasting_startup_ms(ms: u64) -> u64 {
    if emulated() {
        ms * 5
    } else {
        ms
    }
}

/// A port no test uses by chance: namespaces start with every port free.
pub const FIXED_PORT: u16 = 4242;

/// "OLD->NEW" of a transition record.
pub fn transition_name(t: &Value) -> String {
    format!(
        "{}->{}",
        t["old"].as_str().unwrap(),
        t["new"].as_str().unwrap()
    )
}

pub fn ns(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("expected a number of ns, got {v}"))
}

/// Each server-closes-first connection makes exactly these ten transitions
/// of its full sockets (and then the server's TIME_WAIT entry in its
/// timewait socket, accounted for separately).
pub const PER_CONNECTION: [&str; 10] = [
    "CLOSE->SYN_SENT",
    "SYN_SENT->ESTABLISHED",
    "ESTABLISHED->CLOSE_WAIT",
    "CLOSE_WAIT->LAST_ACK",
    "LAST_ACK->CLOSE",
    "LISTEN->SYN_RECV",
    "SYN_RECV->ESTABLISHED",
    "ESTABLISHED->FIN_WAIT1",
    "FIN_WAIT1->FIN_WAIT2",
    "FIN_WAIT2->CLOSE",
];

/// A server-closes-first churn of `seconds` on the listening ports
/// `base_port`.. (`ports` of them), as `load` and `serve` run it.
pub fn server_churn(netns: &Netns, seconds: &str, base_port: u16, ports: u16) -> u64 {
    let (base_port, ports) = (base_port.to_string(), ports.to_string());
    churn(
        netns,
        &[
            "--seconds",
            seconds,
            "--closer",
            "server",
            "--base-port",
            &base_port,
            "--ports",
            &ports,
        ],
    )
}

/// `tcptrace-peer churn ARGS` in `netns`, run to its end: the connections
/// it completed (it must have failed none, and made more than 1000).
pub fn churn(netns: &Netns, args: &[&str]) -> u64 {
    let out = netns
        .command(peer())
        .arg("churn")
        .args(args)
        .output()
        .expect("running the churn generator");
    assert!(out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> u64 {
        report
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    };
    let connections = field("connections ");
    assert_eq!(field("failed "), 0, "every connection completed: {report}");
    assert!(connections > 1000, "the generator ran: {report}");
    connections
}

/// A cgroup of the test's own under the cgroup v2 hierarchy (found from
/// /proc/self/mountinfo), removed with its descendants when dropped. Tests
/// never touch cgroups they did not create.
pub struct TestCgroup {
    /// Its path in the hierarchy, as tcptrace reports it (`/a/b`).
    pub path: String,
    dir: PathBuf,
}

impl TestCgroup {
    /// A new top-level cgroup, named for this test process.
    pub fn new() -> TestCgroup {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TestCgroup::create(&format!("/tcptrace-test-{}-{n}", std::process::id()))
    }

    fn create(path: &str) -> TestCgroup {
        let dir = cgroup2_mount().join(path.trim_start_matches('/'));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup {
            path: path.to_string(),
            dir,
        }
    }

    /// A child cgroup (removed with its parent, or on its own when dropped).
    pub fn child(&self, name: &str) -> TestCgroup {
        TestCgroup::create(&format!("{}/{name}", self.path))
    }

    /// Its directory under the cgroup2 mount.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup's id, as the kernel reports it: its directory's inode.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.dir).unwrap().ino()
    }

    /// Makes `command`'s process join this cgroup before it execs (the
    /// pid stays: `ip netns exec` execs the program too).
    pub fn enter_at_exec(&self, command: &mut Command) {
        use std::os::unix::{ffi::OsStrExt, process::CommandExt};
        let procs =
            std::ffi::CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        // SAFETY: only async-signal-safe calls between fork and exec, no
        // allocation: the pid is formatted on the stack.
        unsafe {
            command.pre_exec(move || {
                let mut digits = [0u8; 20];
                let mut pid = libc::getpid() as u32;
                let mut at = digits.len();
                loop {
                    at -= 1;
                    digits[at] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let len = digits.len() - at;
                let wrote = libc::write(fd, digits[at..].as_ptr().cast(), len);
                libc::close(fd);
                if wrote != len as isize {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Removes it now (its processes must have exited).
    pub fn remove(self) {
        remove_tree(&self.dir);
        assert!(!self.dir.exists(), "{} removed", self.dir.display());
        std::mem::forget(self);
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_tree(&self.dir);
    }
}

/// rmdir of a cgroup and its descendants, deepest first (a cgroup's
/// directory holds only interface files besides its children).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    // A process that has not quite exited yet holds the cgroup a moment.
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host such as this project's), as
/// tcptrace finds it.
pub fn cgroup2_mount() -> PathBuf {
    tcptrace::cgroups::Hierarchy::find()
        .expect("a cgroup v2 hierarchy (cgroup2 in /proc/self/mountinfo)")
        .mount
}
