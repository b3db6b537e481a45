//! Driving the real tracer, shared by the integration tests
//! (tcptrace/tests/integration/harness.rs) and the bench (bench/procs.rs): its
//! network namespaces, its readiness by the systemd notify protocol, and
//! where the peer is.
use std::{
    ffi::OsStr,
    io,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// The test and bench peer's binary (xtask/src/bin/tcptrace-peer.rs), a
/// development tool built into the target directory, never installed.
pub const PEER: &str = "tcptrace-peer";

/// The peer beside a test binary: in the profile directory holding its
/// `deps/` (TARGET/release/deps/integration-HASH -> TARGET/release/).
pub fn peer_beside(test_binary: &Path) -> Option<PathBuf> {
    Some(test_binary.parent()?.parent()?.join(PEER))
}

/// A network namespace with loopback up, deleted when dropped: its ports,
/// listeners and TIME_WAIT table (net.ipv4.tcp_max_tw_buckets is per
/// namespace) are its own.
pub struct Namespace {
    name: String,
}

impl Namespace {
    /// `ip netns add NAME`, then loopback up.
    pub fn add(name: String) -> io::Result<Namespace> {
        ip(&["netns", "add", &name])?;
        let ns = Namespace { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` to be run inside the namespace (`ip netns exec` execs it:
    /// the pid stays the same).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Sets a (per-namespace) sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let status = self
            .command("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")])
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "sysctl {key}={value} in {} failed ({status})",
                self.name
            )));
        }
        Ok(())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let status = Command::new("ip").args(args).status()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "ip {} failed ({status})",
            args.join(" ")
        )));
    }
    Ok(())
}

/// The socket where a tcptrace says it is ready: a datagram socket bound to
/// a path in the temp directory, passed as `NOTIFY_SOCKET`; tcptrace sends
/// `READY=1` there once its probe is attached and it is about to read
/// events. A path, not an abstract name: those are per network namespace,
/// and a tracer may run in another one.
pub struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    /// A fresh socket, `PREFIX-PID-N.notify` in the temp directory.
    pub fn new(prefix: &str) -> io::Result<Notify> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}.notify",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(Notify { socket, path })
    }

    /// `cmd` with NOTIFY_SOCKET naming this socket.
    pub fn pass_to<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("NOTIFY_SOCKET", &self.path)
    }

    /// Waits up to `limit` for READY=1. Between reads `exited` says whether
    /// the tracer is gone (and how); the reason is the error.
    pub fn wait_ready(
        &self,
        limit: Duration,
        mut exited: impl FnMut() -> Option<String>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut buf = [0; 256];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) if buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1") => return Ok(()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("reading the notify socket: {e}")),
            }
            if let Some(how) = exited() {
                return Err(format!("{how} before READY=1"));
            }
            if Instant::now() > deadline {
                return Err(format!("no READY=1 within {} s", limit.as_secs()));
            }
        }
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_arrives_or_the_reason_why_not() {
        let notify = Notify::new("xtask-harness-test").unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to(b"STATUS=x\nREADY=1", &notify.path).unwrap();
        assert_eq!(notify.wait_ready(Duration::from_secs(5), || None), Ok(()));
        let gone = notify.wait_ready(Duration::from_secs(5), || Some("exited".into()));
        assert_eq!(gone, Err("exited before READY=1".into()));
        let path = notify.path.clone();
        drop(notify);
        assert!(!path.exists());
    }

    #[test]
    fn the_peer_is_in_the_profile_directory() {
        let peer = peer_beside(Path::new("/t/release/deps/integration-0123")).unwrap();
        assert_eq!(peer, Path::new("/t/release/tcptrace-peer"));
    }
}
