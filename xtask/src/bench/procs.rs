//! The processes and kernel state a round drives and reads: tracers
//! (`Tracer`), the round's namespace (`Netns`), /proc counters and the
//! kernel's BPF run-time statistics.
use super::*;

/// A tracer process writing into a file, started and ready.
pub(super) struct Tracer {
    pub(super) child: Child,
    pub(super) pid: i32,
    pub(super) stderr: mpsc::Receiver<String>,
    pub(super) stderr_lines: Vec<String>,
    pub(super) out_path: PathBuf,
    /// (user, system) CPU seconds when it became ready.
    pub(super) ready_cpu: (f64, f64),
    /// The main (ring-reading) thread's scheduler run time when it became
    /// ready, ns.
    pub(super) ready_reader_ns: u64,
    pub(super) waited: bool,
}

pub(super) struct Exit {
    pub(super) success: bool,
    pub(super) status: String,
    pub(super) user_s: f64,
    pub(super) sys_s: f64,
    pub(super) maxrss_kb: u64,
    pub(super) nvcsw: u64,
    /// The main thread's run time from ready to the stop signal, ns: the
    /// scheduler's exact count (schedstat), where rusage samples ticks and
    /// charges a tick's softirq work to whoever it interrupted.
    pub(super) reader_ns: u64,
}

impl Tracer {
    pub(super) fn spawn(
        program: &Path,
        args: &[&str],
        out_path: &Path,
        notify: Option<&Notify>,
    ) -> Result<Tracer> {
        let out =
            File::create(out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let mut cmd = Command::new(program);
        if let Some(notify) = notify {
            notify.pass_to(&mut cmd);
        }
        let mut child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Tracer {
            pid: child.id() as i32,
            child,
            stderr: rx,
            stderr_lines: Vec::new(),
            out_path: out_path.to_path_buf(),
            ready_cpu: (0.0, 0.0),
            ready_reader_ns: 0,
            waited: false,
        })
    }

    /// tcptrace, ready once it sends READY=1 to its NOTIFY_SOCKET (the
    /// systemd notify protocol: probe attached, about to read events).
    pub(super) fn tcptrace(program: &Path, args: &[&str], out_path: &Path) -> Result<Tracer> {
        let notify = Notify::new("tcptrace-bench").context("binding a notify socket")?;
        let mut tracer = Tracer::spawn(program, args, out_path, Some(&notify))?;
        let pid = tracer.pid;
        let ready = notify.wait_ready(Duration::from_secs(60), || {
            let mut status = 0;
            (unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid)
                .then(|| "exited".to_string())
        });
        if let Err(why) = ready {
            if why.starts_with("exited") {
                tracer.waited = true;
                // The reader sees the end of stderr once the process is gone.
                while let Ok(line) = tracer.stderr.recv_timeout(Duration::from_secs(5)) {
                    tracer.stderr_lines.push(line);
                }
            }
            bail!(
                "tcptrace did not start ({why}): {}",
                tracer.stderr_lines.join("\n")
            );
        }
        tracer.ready_cpu = process_cpu(tracer.pid)?;
        tracer.ready_reader_ns = main_thread_runtime_ns(tracer.pid)?;
        Ok(tracer)
    }

    /// tcpstates, ready once its program is attached and its perf buffer
    /// polled (a BPF link and an epoll instance among its fds).
    pub(super) fn tcpstates(program: &Path, out_path: &Path) -> Result<Tracer> {
        let mut tracer = Tracer::spawn(program, &[], out_path, None)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let links = fd_targets(tracer.pid);
            if links.iter().any(|l| l == "anon_inode:bpf_link")
                && links.iter().any(|l| l == "anon_inode:[eventpoll]")
            {
                break;
            }
            let mut status = 0;
            if unsafe { libc::waitpid(tracer.pid, &mut status, libc::WNOHANG) } == tracer.pid {
                tracer.waited = true;
                tracer.stderr_lines.extend(tracer.stderr.try_iter());
                bail!(
                    "tcpstates exited at start: {}",
                    tracer.stderr_lines.join("\n")
                );
            }
            if Instant::now() > deadline {
                bail!("tcpstates did not attach within 60 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(200));
        tracer.ready_cpu = process_cpu(tracer.pid)?;
        tracer.ready_reader_ns = main_thread_runtime_ns(tracer.pid)?;
        Ok(tracer)
    }

    /// Waits until the output file has stopped growing: what the kernel
    /// handed over has been read and written.
    pub(super) fn settle(&self) {
        let size = || {
            std::fs::metadata(&self.out_path)
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = size();
        let mut steady = 0;
        while steady < 3 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            let now = size();
            if now == last {
                steady += 1;
            } else {
                steady = 0;
                last = now;
            }
        }
    }

    /// (run count, run time ns, recursion misses) of each BPF program the
    /// process holds, from /proc/PID/fdinfo.
    pub(super) fn bpf_programs(&self) -> Vec<(u64, u64, u64)> {
        let mut programs = Vec::new();
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fdinfo", self.pid)) else {
            return programs;
        };
        for entry in dir.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            if !text.contains("prog_type:") {
                continue;
            }
            let get = |key: &str| -> u64 {
                text.lines()
                    .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                    .unwrap_or(0)
            };
            programs.push((
                get("run_cnt:"),
                get("run_time_ns:"),
                get("recursion_misses:"),
            ));
        }
        programs
    }

    /// SIGINT, then waits for the exit (60 s at most) and collects rusage.
    pub(super) fn stop(&mut self) -> Result<Exit> {
        let reader_ns = main_thread_runtime_ns(self.pid)?.saturating_sub(self.ready_reader_ns);
        unsafe { libc::kill(self.pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
            if r == self.pid {
                break;
            }
            if r < 0 {
                bail!("wait4: {}", std::io::Error::last_os_error());
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
                self.waited = true;
                bail!("the tracer did not exit within 60 s of SIGINT");
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.waited = true;
        // The stderr reader ends with the process.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.stderr_lines.push(line);
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let exited = libc::WIFEXITED(status);
        Ok(Exit {
            success: exited && libc::WEXITSTATUS(status) == 0,
            status: if exited {
                format!("exit {}", libc::WEXITSTATUS(status))
            } else {
                format!("signal {}", libc::WTERMSIG(status))
            },
            user_s: secs(usage.ru_utime),
            sys_s: secs(usage.ru_stime),
            reader_ns,
            maxrss_kb: usage.ru_maxrss as u64,
            nvcsw: usage.ru_nvcsw as u64,
        })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A network namespace of the round's own, loopback up, with room for
/// every timewait socket the round makes.
/// A round's namespace (`Namespace`), with its counters.
pub(super) struct Netns {
    pub(super) ns: Namespace,
}

impl Netns {
    pub(super) fn new(number: usize, config: Config) -> Result<Netns> {
        let name = format!(
            "tcptrace-bench-{}-{number}{}",
            std::process::id(),
            config.letter()
        );
        let ns = Namespace::add(name).context("creating the round's network namespace")?;
        // Per namespace; by default about half the hash table (131072
        // here), which a long round at full rate can reach.
        ns.sysctl("net.ipv4.tcp_max_tw_buckets", "4000000")?;
        Ok(Netns { ns })
    }

    pub(super) fn command(&self, program: &Path) -> Command {
        self.ns.command(program)
    }

    /// A counter of the namespace from /proc/net/FILE, on the lines that
    /// start with `PREFIX:` (names, then values).
    pub(super) fn counter(&self, file: &str, prefix: &str, counter: &str) -> Option<u64> {
        let out = self
            .command(Path::new("cat"))
            .arg(format!("/proc/net/{file}"))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.strip_prefix(prefix).is_some_and(|r| r.starts_with(':')))
            .collect();
        if let [names, values] = lines[..] {
            let index = names.split_whitespace().position(|n| n == counter)?;
            return values.split_whitespace().nth(index)?.parse().ok();
        }
        // sockstat: `TCP: inuse 3 orphan 0 tw 5 ...`
        let words: Vec<&str> = lines.first()?.split_whitespace().collect();
        let index = words.iter().position(|&w| w == counter)?;
        words.get(index + 1)?.parse().ok()
    }

    pub(super) fn netstat(&self, counter: &str) -> Option<u64> {
        self.counter("netstat", "TcpExt", counter)
    }

    /// Full TCP sockets still open in the namespace (not timewait ones).
    pub(super) fn tcp_in_use(&self) -> Option<u64> {
        self.counter("sockstat", "TCP", "inuse")
    }
}

/// Timewait sockets allocated machine-wide (slab objects in use).
pub(super) fn timewait_sockets() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo")?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("tw_sock_TCP"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum())
}

pub(super) fn clock_ticks() -> u64 {
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

/// (user, system) CPU seconds of a process so far, from /proc/PID/stat.
/// Run time of the process's main thread so far (schedstat's first field).
pub(super) fn main_thread_runtime_ns(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/task/{pid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("bad {path}: {text}"))
}

pub(super) fn process_cpu(pid: i32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').context("bad /proc/PID/stat")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); the first after the comm is field 3.
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i - 3)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?
            / clock_ticks() as f64)
    };
    Ok((ticks(14)?, ticks(15)?))
}

pub(super) struct TaskCounters {
    pub(super) voluntary: u64,
    pub(super) involuntary: u64,
    pub(super) cpu_ticks: u64,
}

/// Context switches and CPU ticks summed over a process's threads.
pub(super) fn task_counters(pid: i32) -> Result<TaskCounters> {
    let mut c = TaskCounters {
        voluntary: 0,
        involuntary: 0,
        cpu_ticks: 0,
    };
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let status = std::fs::read_to_string(task.path().join("status"))?;
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                c.voluntary += v.trim().parse::<u64>().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                c.involuntary += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        let stat = std::fs::read_to_string(task.path().join("stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        for i in [14, 15] {
            c.cpu_ticks += fields
                .get(i - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(c)
}

/// What a process's fds point at (`anon_inode:bpf_link`, ...).
pub(super) fn fd_targets(pid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// libbpf-tools' tcpstates, installed from Debian's `libbpf-tools` when
/// missing; Err says why it cannot be had.
pub(super) fn ensure_tcpstates() -> std::result::Result<PathBuf, String> {
    let path = PathBuf::from(TCPSTATES);
    if path.exists() {
        return Ok(path);
    }
    progress("installing Debian's libbpf-tools for tcpstates (apt-get)");
    let apt = |args: &[&str]| -> std::result::Result<(), String> {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("apt-get: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "apt-get {} failed: {}",
                args.join(" "),
                err.lines().last().unwrap_or("")
            ))
        }
    };
    if apt(&["install", "-y", "-q", "libbpf-tools"]).is_err() {
        apt(&["update", "-q"])?;
        apt(&["install", "-y", "-q", "libbpf-tools"])?;
    }
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("libbpf-tools installed but {TCPSTATES} is missing"))
    }
}

/// Runs of tcptrace's state-change program, from its per-program stats.
pub(super) fn state_program_runs(programs: &[Value]) -> u64 {
    programs
        .iter()
        .filter(|p| {
            ["inet_sock_set_state", "state_floor"].contains(&p["program"].as_str().unwrap_or(""))
        })
        .filter_map(|p| p["runs"].as_u64())
        .sum()
}

/// BPF statistics on for the middle third of a round of `length`, from a
/// thread started with the round's workload.
pub(super) struct StatsWindow(thread::JoinHandle<Result<()>>);

impl StatsWindow {
    pub(super) fn start(length: Duration) -> StatsWindow {
        StatsWindow(thread::spawn(move || {
            thread::sleep(length / 3);
            let fd = enable_bpf_stats()?;
            thread::sleep(length / 3);
            drop(fd);
            Ok(())
        }))
    }

    pub(super) fn join(self) -> Result<()> {
        self.0
            .join()
            .map_err(|_| anyhow::anyhow!("the statistics thread panicked"))?
    }
}

/// Turns on the kernel's BPF run-time statistics (run_cnt, run_time_ns)
/// for as long as the returned fd is open: BPF_ENABLE_STATS, which the
/// kernel undoes when the fd closes, even if the bench is killed. The
/// sysctl kernel.bpf_stats_enabled is left as it was.
pub(super) fn enable_bpf_stats() -> Result<OwnedFd> {
    pub(super) const BPF_ENABLE_STATS: libc::c_long = 32;
    pub(super) const BPF_STATS_RUN_TIME: u32 = 0;
    // union bpf_attr { struct { __u32 type; } enable_stats; ... }
    let attr: [u32; 2] = [BPF_STATS_RUN_TIME, 0];
    // SAFETY: bpf(2) reads `size` bytes of attr, which outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            attr.as_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        bail!(
            "enabling BPF run-time statistics (BPF_ENABLE_STATS): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
