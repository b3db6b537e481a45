//! tcptrace-peer: one end of scripted TCP connections, for tests and demos.
//!
//! Each side is its own process so that tcptrace has to find the real owner
//! of every socket. Output on stdout, one fact per line:
//! `listening PORT` (server), `connection LOCAL_PORT REMOTE_PORT` (each
//! connection), `done`.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::ExitCode,
    thread::sleep,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "tcptrace-peer",
    about = "Open, hold and close TCP connections on command"
)]
struct Cli {
    /// Process name (comm) to take, so tracers can be checked against it.
    #[arg(long, global = true)]
    name: Option<String>,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Listen, accept CONNECTIONS connections, and close each as MODE says.
    Server {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[command(flatten)]
        script: Script,
    },
    /// Connect CONNECTIONS times, one after the other, closing as MODE says.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        #[command(flatten)]
        script: Script,
    },
    /// Load generator: servers and clients in this process open and close
    /// connections on loopback as fast as they can for SECONDS, then print
    /// `connections N` (completed, both ends closed), `served N` (closed by
    /// the servers), `failed N` and the rate.
    Churn {
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Client threads.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Listening ports (one accept thread each).
        #[arg(long, default_value_t = 4)]
        ports: usize,
        /// Listen on BASE_PORT, BASE_PORT+1, ... instead of any free ports.
        #[arg(long)]
        base_port: Option<u16>,
        /// Which side closes first (and so ends in TIME_WAIT).
        #[arg(long, value_enum, default_value = "server")]
        closer: Closer,
        /// Address family.
        #[arg(long, value_parser = ["4", "6"], default_value = "4")]
        family: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Closer {
    Server,
    Client,
}

#[derive(clap::Args)]
struct Script {
    /// How this side ends each connection.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Milliseconds to wait before acting (after the peer's FIN for close-second).
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    #[arg(long, default_value_t = 1)]
    connections: u32,
    /// Client only: connect from this local port every time (bound with
    /// SO_REUSEADDR), so a connection can take over the previous one's
    /// TIME_WAIT.
    #[arg(long)]
    source_port: Option<u16>,
    /// Client only: milliseconds to pause after each connection, so that
    /// the server is done with it before the next one.
    #[arg(long, default_value_t = 0)]
    gap_ms: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    /// Wait, then close() first: this side goes through FIN_WAIT to TIME_WAIT.
    CloseFirst,
    /// Wait for the peer's FIN, hold CLOSE_WAIT, then close().
    CloseSecond,
    /// Wait, then close() with SO_LINGER 0: a reset, no TIME_WAIT.
    Abort,
    /// shutdown(SHUT_WR), wait in FIN_WAIT2, then abort with SO_LINGER 0.
    ShutdownAbort,
    /// shutdown(SHUT_WR), wait for the peer's FIN, hold, then close().
    ShutdownFirst,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(name) = &cli.name {
        set_process_name(name);
    }
    let result = match cli.role {
        Role::Server { listen, script } => serve(listen, &script),
        Role::Client { connect, script } => dial(connect, &script),
        Role::Churn {
            seconds,
            clients,
            ports,
            base_port,
            closer,
            family,
        } => {
            let ports: Vec<u16> = match base_port {
                Some(base) => (0..ports as u16).map(|i| base + i).collect(),
                None => vec![0; ports.max(1)],
            };
            churn(
                Duration::from_secs_f64(seconds),
                clients,
                &ports,
                closer,
                family == "6",
            )
        }
    };
    match result {
        Ok(()) => {
            say("done");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("tcptrace-peer: {err}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn serve(addr: SocketAddr, script: &Script) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    say(&format!("listening {}", listener.local_addr()?.port()));
    for _ in 0..script.connections {
        let (stream, _) = listener.accept()?;
        finish(stream, script)?;
    }
    Ok(())
}

fn dial(addr: SocketAddr, script: &Script) -> std::io::Result<()> {
    for _ in 0..script.connections {
        let stream = match script.source_port {
            Some(port) => connect_from(addr, port)?,
            None => TcpStream::connect(addr)?,
        };
        finish(stream, script)?;
        sleep(Duration::from_millis(script.gap_ms));
    }
    Ok(())
}

/// connect() from a fixed local port on the loopback address of `addr`'s
/// family.
fn connect_from(addr: SocketAddr, port: u16) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2); the fd is owned by the TcpStream at once.
    let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value of the size given.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let local = SocketAddr::new(
        if addr.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        },
        port,
    );
    for (target, is_bind) in [(local, true), (addr, false)] {
        let (storage, len) = sockaddr(target);
        let ptr = (&storage as *const libc::sockaddr_storage).cast();
        // SAFETY: storage holds a sockaddr of length len for this family.
        check(unsafe {
            if is_bind {
                libc::bind(fd, ptr, len)
            } else {
                libc::connect(fd, ptr, len)
            }
        })?;
    }
    Ok(stream)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn finish(mut stream: TcpStream, script: &Script) -> std::io::Result<()> {
    say(&format!(
        "connection {} {}",
        stream.local_addr()?.port(),
        stream.peer_addr()?.port()
    ));
    let hold = Duration::from_millis(script.hold_ms);
    match script.mode {
        Mode::CloseFirst => sleep(hold),
        Mode::CloseSecond => {
            wait_for_eof(&mut stream)?;
            sleep(hold);
        }
        Mode::Abort => {
            sleep(hold);
            set_linger_zero(&stream)?;
        }
        Mode::ShutdownAbort => {
            stream.shutdown(Shutdown::Write)?;
            sleep(hold);
            set_linger_zero(&stream)?;
        }
        Mode::ShutdownFirst => {
            stream.shutdown(Shutdown::Write)?;
            wait_for_eof(&mut stream)?;
            sleep(hold);
        }
    }
    drop(stream);
    Ok(())
}

/// Reads until the peer's FIN (or its reset, which ends the wait too).
fn wait_for_eof(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn set_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn set_process_name(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

/// Opens and closes connections until `length` has passed. Every counted
/// connection went through the full close on both ends, so a tracer's
/// expected transitions follow exactly from the count.
fn churn(
    length: Duration,
    clients: usize,
    ports: &[u16],
    closer: Closer,
    ipv6: bool,
) -> std::io::Result<()> {
    use std::sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    };
    let loopback: std::net::IpAddr = if ipv6 {
        "::1".parse().unwrap()
    } else {
        "127.0.0.1".parse().unwrap()
    };
    // Connections the servers have closed: with the client closing first,
    // a client's count says nothing of the server end, which must finish
    // (CLOSE_WAIT -> LAST_ACK -> CLOSE) before the listeners go away.
    let served = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::new();
    for &port in ports {
        let listener = TcpListener::bind(SocketAddr::new(loopback, port))?;
        addrs.push(listener.local_addr()?);
        let served = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if closer == Closer::Client {
                    let _ = wait_for_eof(&mut stream);
                }
                drop(stream);
                served.fetch_add(1, Ordering::Release);
            }
        });
    }
    say(&format!(
        "ports {}",
        addrs
            .iter()
            .map(|a| a.port().to_string())
            .collect::<Vec<_>>()
            .join(",")
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..clients.max(1))
        .map(|i| {
            let (stop, completed, failed) = (stop.clone(), completed.clone(), failed.clone());
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                let mut n = i;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let ok = TcpStream::connect(addrs[n % addrs.len()]).and_then(|mut stream| {
                        if closer == Closer::Server {
                            wait_for_eof(&mut stream)?;
                        }
                        drop(stream);
                        Ok(())
                    });
                    match ok {
                        Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    sleep(length);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = completed.load(Ordering::Relaxed);
    // Every completed client end was accepted; wait until the servers have
    // closed their ends too (immediate when the server closes first).
    let wait_until = std::time::Instant::now() + Duration::from_secs(10);
    while served.load(Ordering::Acquire) < n && std::time::Instant::now() < wait_until {
        sleep(Duration::from_millis(1));
    }
    say(&format!("connections {n}"));
    say(&format!("served {}", served.load(Ordering::Acquire)));
    say(&format!("failed {}", failed.load(Ordering::Relaxed)));
    say(&format!("rate {:.0}", n as f64 / elapsed));
    Ok(())
}
