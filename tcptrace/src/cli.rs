//! Command line: what the user asks for, validated into a probe config.
use std::time::Duration;

use clap::{Parser, Subcommand};
use tcptrace_common::{
    port_insert, ProbeConfig, CONFIG_EMIT_TRANSITIONS, CONFIG_HANDOFF_ONLY, CONFIG_HIDE_HANDOFFS,
    CONFIG_IPV4, CONFIG_IPV6, CONFIG_LPORT_FILTER, CONFIG_NETNS_FILTER, CONFIG_PID_FILTER,
    CONFIG_PORT_EITHER, CONFIG_RPORT_FILTER, CONFIG_TIMEWAIT_EVENTS,
};

use crate::{error::UsageError, probe::ProbeOptions, state};

const EXAMPLES: &str = "\
EXAMPLES:
    tcptrace
        Live tail of true TIME_WAIT entries and ends, and CLOSE_WAIT -> LAST_ACK.
    tcptrace --all --port 8080
        Every transition of both ends of connections to or from port 8080.
    tcptrace --lport 8080
        Only the server side of connections accepted on local port 8080.
    tcptrace --json --rport 5432,6379 | jq .
        JSON Lines for connections to PostgreSQL and Redis.
    tcptrace --pid 1234 --duration 60
        One minute of transitions of sockets owned by process 1234.
    tcptrace --netns /run/netns/blue -6 --wide
        IPv6 only, in one network namespace, with wide address columns.
    tcptrace life --port 443
        One line per finished connection to or from port 443.
    tcptrace hist --by rport --interval 10
        Lifetime and per-state histograms per remote port, every 10 s.";

const ABOUT: &str = "Trace TCP state transitions live, with the process that owns each socket";

const LONG_ABOUT: &str = "\
Trace TCP state transitions live, with the process that owns each socket.

A probe on the kernel's sock:inet_sock_set_state tracepoint reports each
transition with its owner (the process that connected, accepted or closed the
socket, never whatever task the kernel happened to be running), the time the
socket spent in its previous state, and its age. Three more hooks follow the
connection into the kernel's timewait socket, which the tracepoint never sees.

By default tcptrace shows what piles of TIME_WAIT and CLOSE_WAIT sockets are
made of:

  * FIN_WAIT2 -> TIME_WAIT (or CLOSING -> TIME_WAIT): the moment the
    connection truly enters TIME_WAIT (for an application that closed first,
    when the peer's FIN arrives), with the time spent in FIN_WAIT2;
  * TIME_WAIT -> CLOSE (expired | reused | killed), and an orphaned
    FIN_WAIT2 ending by tcp_fin_timeout: FIN_WAIT2 -> CLOSE (fin_timeout);
  * CLOSE_WAIT -> LAST_ACK, with how long the application took to close
    after its peer did.

--all shows every transition, including the hand-off of a closing full
socket to its timewait socket (FIN_WAIT2 -> CLOSE [timewait]). Filters run
in the kernel: nothing filtered out is copied to userspace. On exit (Ctrl-C,
SIGTERM, --duration) tcptrace prints a summary with event counts and any
events the kernel lost.

Subcommands: life (one record per finished connection), hist (histograms of
lifetimes and time per state, aggregated in the kernel), stuck (who holds
sockets in CLOSE_WAIT, FIN_WAIT2, LAST_ACK), census (sockets per state, live)
and doctor (the TIME_WAIT sysctls, checked against this host).

Needs root (or CAP_BPF and CAP_PERFMON) and Linux 5.8 or later with BTF.";

/// The command line: the live tail by default, or one of the subcommands.
#[derive(Parser, Debug)]
#[command(
    name = "tcptrace",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = "Run 'tcptrace --help' for details and examples.",
    after_long_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub tail: TailArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One record per finished connection: owner, closer, time in each phase.
    Life(crate::life::LifeArgs),
    /// Log2 histograms of connection lifetimes and time spent per state.
    Hist(crate::hist::HistArgs),
    /// Sockets stuck in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK, with their owners.
    Stuck(crate::stuck::StuckArgs),
    /// Counts of sockets per state, now and live, with the top peers.
    Census(crate::census::CensusArgs),
    /// The TIME_WAIT sysctls, checked against what this host's sockets do.
    Doctor(crate::doctor::DoctorArgs),
}

/// Which sockets a command looks at; applied in the kernel.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Filters {
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Only sockets whose local port is in LIST (e.g. 80,443,8000-8099).
    #[arg(short = 'L', long, value_name = "LIST", value_parser = parse_port_list)]
    pub lport: Option<PortList>,

    /// Only sockets whose remote port is in LIST (e.g. 5432,6379).
    /// With --lport too, both must match.
    #[arg(short = 'R', long, value_name = "LIST", value_parser = parse_port_list)]
    pub rport: Option<PortList>,

    /// Only sockets with either port in LIST: both ends of connections to
    /// or from these ports, like tcpdump's `port`.
    #[arg(short = 'P', long, value_name = "LIST", value_parser = parse_port_list,
          conflicts_with_all = ["lport", "rport"])]
    pub port: Option<PortList>,

    /// Only sockets owned by process PID (the process that connected,
    /// accepted through its listener, or closed the socket). Sockets whose
    /// owner tcptrace never saw do not match.
    #[arg(short, long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Only sockets in one network namespace: a namespace file such as
    /// /proc/PID/ns/net or /run/netns/NAME, or `self` for tcptrace's own.
    /// (By default every namespace is traced, as the kernel hook sees them all.)
    #[arg(long, value_name = "PATH", value_parser = parse_netns)]
    pub netns: Option<u32>,
}

/// The inode of a network namespace file.
pub fn parse_netns(text: &str) -> Result<u32, UsageError> {
    let path = match text {
        "self" => "/proc/self/ns/net".to_string(),
        name if !name.contains('/') => format!("/run/netns/{name}"),
        path => path.to_string(),
    };
    crate::socket_table::netns_inode(std::path::Path::new(&path))
        .map_err(|e| UsageError(format!("--netns {text}: {path}: {e}")))
}

impl Filters {
    pub fn apply(&self, config: &mut ProbeConfig) {
        config.flags |= match (self.ipv4, self.ipv6) {
            (true, false) => CONFIG_IPV4,
            (false, true) => CONFIG_IPV6,
            _ => CONFIG_IPV4 | CONFIG_IPV6,
        };
        if let Some(list) = &self.lport {
            config.flags |= CONFIG_LPORT_FILTER;
            list.fill(&mut config.lports);
        }
        if let Some(list) = &self.rport {
            config.flags |= CONFIG_RPORT_FILTER;
            list.fill(&mut config.rports);
        }
        if let Some(list) = &self.port {
            config.flags |= CONFIG_PORT_EITHER;
            list.fill(&mut config.lports);
            list.fill(&mut config.rports);
        }
        if let Some(pid) = self.pid {
            config.flags |= CONFIG_PID_FILTER;
            config.pid = pid;
        }
        if let Some(inode) = self.netns {
            config.flags |= CONFIG_NETNS_FILTER;
            config.netns = inode;
        }
    }

    /// `--pid` names a process that exists.
    pub fn check_pid(&self) -> Result<(), UsageError> {
        match self.pid {
            Some(pid) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                Err(UsageError(format!("--pid {pid}: no such process")))
            }
            _ => Ok(()),
        }
    }
}

/// How the probe is loaded, for every command that loads it.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Size of the BPF ring buffer: a power of two of at least 4K, with an
    /// optional K/M/G suffix. Raise it if the summary reports ring
    /// reservation failures.
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Do not attach the hooks that follow connections into their timewait
    /// sockets (timer_start and timer_cancel run for every timer on the
    /// machine, kfree_skb for every dropped packet). TIME_WAIT is then not
    /// seen, and FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE are shown unclassified.
    #[arg(long)]
    pub no_timewait_hook: bool,

    /// Print the probe's own diagnostics on stderr, as "tcptrace: probe:
    /// ..." lines: sockets first seen after their birth, transitions the
    /// kernel skipped, failed reads. Off by default, and then free: the
    /// kernel's verifier removes the logging code from the probe.
    #[arg(long)]
    pub probe_log: bool,
}

impl ProbeArgs {
    pub fn options(&self, config: ProbeConfig) -> ProbeOptions {
        ProbeOptions {
            config,
            ring_size: self.ring_size,
            timewait_hook: !self.no_timewait_hook,
            histogram_keys: DEFAULT_HISTOGRAM_KEYS,
            probe_log: self.probe_log,
        }
    }
}

/// Histogram keys the kernel keeps before it counts new ones as "other".
pub const DEFAULT_HISTOGRAM_KEYS: u32 = 1024;

/// What every tracing command takes: output format, filters, run length
/// and how the probe is loaded.
#[derive(clap::Args, Debug)]
pub struct Common {
    /// Print JSON Lines: one object per line, each with a "type" field.
    #[arg(short, long)]
    pub json: bool,

    #[command(flatten)]
    pub filters: Filters,

    /// Stop by itself after SECONDS (fractions allowed) and print the summary.
    #[arg(short, long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub probe: ProbeArgs,
}

/// The human table's columns, for commands that print one line per socket.
#[derive(clap::Args, Debug)]
pub struct Columns {
    /// Columns wide enough for any IPv6 address (otherwise they widen when
    /// the first long address appears).
    #[arg(short, long)]
    pub wide: bool,

    /// Do not print the column header.
    #[arg(long)]
    pub no_header: bool,
}

/// The live tail (no subcommand).
#[derive(clap::Args, Debug)]
pub struct TailArgs {
    /// Show every transition, not just TIME_WAIT entry and end and CLOSE_WAIT -> LAST_ACK.
    #[arg(short, long)]
    pub all: bool,

    #[command(flatten)]
    pub common: Common,

    #[command(flatten)]
    pub columns: Columns,
}

impl TailArgs {
    /// The kernel-side filter this command line asks for.
    pub fn probe_config(&self) -> ProbeConfig {
        let mut config = ProbeConfig::empty();
        config.flags |= CONFIG_EMIT_TRANSITIONS | CONFIG_TIMEWAIT_EVENTS;
        if self.all {
            state::allow_all(&mut config);
        } else {
            // Hand-offs and resets from FIN_WAIT*/CLOSING are hidden when
            // the hooks can tell them apart; shown unclassified otherwise.
            state::allow_headline(&mut config);
            config.flags |= CONFIG_HANDOFF_ONLY | CONFIG_HIDE_HANDOFFS;
        }
        self.common.filters.apply(&mut config);
        config
    }
}

/// Inclusive port ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<(u16, u16)>);

impl PortList {
    pub fn fill(&self, bitmap: &mut [u64; 1024]) {
        for &(lo, hi) in &self.0 {
            for port in lo..=hi {
                port_insert(bitmap, port);
            }
        }
    }
}

pub fn parse_port_list(text: &str) -> Result<PortList, UsageError> {
    let bad = |why: String| UsageError(format!("bad port list '{text}': {why}"));
    let port = |p: &str| -> Result<u16, UsageError> {
        let p = p.trim();
        match p.parse::<u32>() {
            Ok(n @ 1..=65535) => Ok(n as u16),
            Ok(n) => Err(bad(format!("port {n} is outside 1-65535"))),
            Err(_) if p.is_empty() => Err(bad("empty entry".into())),
            Err(_) => Err(bad(format!("'{p}' is not a port number"))),
        }
    };
    let mut ranges = Vec::new();
    for item in text.split(',') {
        let range = match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(bad(format!("range {lo}-{hi} is backwards")));
                }
                (lo, hi)
            }
            None => {
                let p = port(item)?;
                (p, p)
            }
        };
        ranges.push(range);
    }
    Ok(PortList(ranges))
}

pub fn parse_seconds(text: &str) -> Result<Duration, UsageError> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(UsageError(format!(
            "bad duration '{text}': expected a positive number of seconds"
        ))),
    }
}

pub fn parse_ring_size(text: &str) -> Result<u32, UsageError> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let multiplier: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => {
            return Err(UsageError(format!(
                "bad ring size '{text}': unknown unit '{unit}' (use K, M or G)"
            )))
        }
    };
    let size = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| UsageError(format!("bad ring size '{text}': not a size")))?;
    // The kernel wants a power-of-two multiple of the page size.
    if size < 4096 || !size.is_power_of_two() || size > 1 << 30 {
        return Err(UsageError(format!(
            "bad ring size '{text}': must be a power of two between 4K and 1G"
        )));
    }
    Ok(size as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_common::{port_in, tcp_state::*};

    #[test]
    fn port_lists() {
        assert_eq!(parse_port_list("80").unwrap(), PortList(vec![(80, 80)]));
        assert_eq!(
            parse_port_list("80, 443,8000-8002").unwrap(),
            PortList(vec![(80, 80), (443, 443), (8000, 8002)])
        );
        for bad in ["", "0", "65536", "http", "10-5", "1,,2", "-5", "5-"] {
            let err = parse_port_list(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("bad port list '{bad}'")), "{err}");
        }
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_ring_size("4096").unwrap(), 4096);
        assert_eq!(parse_ring_size("256k").unwrap(), 256 << 10);
        assert!(parse_ring_size("3M").is_err());
        assert!(parse_ring_size("1K").is_err());
        assert!(parse_ring_size("2G").is_err());
        assert!(parse_ring_size("8X").is_err());
        assert!(parse_ring_size("M").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn config_from_flags() {
        let args =
            Cli::try_parse_from(["tcptrace", "-6", "--lport", "8000-8001", "--pid", "7"]).unwrap();
        let c = args.tail.probe_config();
        assert_eq!(c.flags & (CONFIG_IPV4 | CONFIG_IPV6), CONFIG_IPV6);
        assert!(c.flags & CONFIG_HANDOFF_ONLY != 0);
        assert!(port_in(&c.lports, 8000) && port_in(&c.lports, 8001));
        assert!(!port_in(&c.lports, 7999) && !port_in(&c.lports, 8002));
        assert!(c.flags & CONFIG_RPORT_FILTER == 0);
        assert_eq!((c.flags & CONFIG_PID_FILTER != 0, c.pid), (true, 7));
        assert!(c.wants(FIN_WAIT2, CLOSE) && !c.wants(CLOSE, SYN_SENT));

        let all = Cli::try_parse_from(["tcptrace", "--all"])
            .unwrap()
            .tail
            .probe_config();
        assert!(all.wants(CLOSE, SYN_SENT) && all.flags & CONFIG_HANDOFF_ONLY == 0);
        assert_eq!(
            all.flags & (CONFIG_IPV4 | CONFIG_IPV6),
            CONFIG_IPV4 | CONFIG_IPV6
        );
    }

    #[test]
    fn either_port() {
        let c = Cli::try_parse_from(["tcptrace", "--port", "8080"])
            .unwrap()
            .tail
            .probe_config();
        assert!(c.flags & CONFIG_PORT_EITHER != 0);
        assert!(port_in(&c.lports, 8080) && port_in(&c.rports, 8080));
        assert!(Cli::try_parse_from(["tcptrace", "--port", "1", "--lport", "2"]).is_err());
    }

    #[test]
    fn conflicting_families_are_rejected() {
        assert!(Cli::try_parse_from(["tcptrace", "-4", "-6"]).is_err());
        assert!(Cli::try_parse_from(["tcptrace", "--lport", "x"]).is_err());
    }
}
