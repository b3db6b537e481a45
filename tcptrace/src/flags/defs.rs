//! The command line as clap sees it: every flag, its help and its raw
//! value. `build` turns these into the commands' validated options; nothing
//! else in the program sees them.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};

use super::values::{
    parse_file_size, parse_metric, parse_netns, parse_port_list, parse_ring_size, parse_seconds,
    parse_states, parse_time_bound, PortList, StateList,
};
use crate::{census, hist, replay::TimeBound};

/// Histogram keys the kernel keeps before it counts new ones as "other".
pub const DEFAULT_HISTOGRAM_KEYS: u32 = 1024;

/// Where `serve` listens unless told: loopback only, on a port outside the
/// exporters' 9100-9999 allocations (see the README).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:19435";

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
        Lifetime and per-state histograms per remote port, every 10 s.
    tcptrace record -w incident.tcpt -C 100M -W 10
        Capture everything into files of 100 MiB, keeping the newest ten.
    tcptrace -r incident.tcpt --port 443 --since 2m --until 5m --json
        Read a capture back: the tail's records for port 443, minutes 2 to 5.
    tcptrace report -r incident.tcpt -o incident.html
        The capture as one HTML page: charts of transitions, TIME_WAIT and
        CLOSE_WAIT over time, time per state, who, losses.
    tcptrace serve --listen 0.0.0.0:19435
        A Prometheus target on every interface (the default is 127.0.0.1).";

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
sockets in CLOSE_WAIT, FIN_WAIT2, LAST_ACK), census (sockets per state, live),
doctor (the TIME_WAIT sysctls, checked against this host), record (everything
into a capture file, read back with -r), report (a capture as one HTML
page of charts) and serve (a Prometheus endpoint).

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
    pub tail: TailFlags,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One record per finished connection: owner, closer, time in each phase.
    Life(LifeFlags),
    /// Log2 histograms of connection lifetimes and time spent per state.
    Hist(HistFlags),
    /// Sockets stuck in CLOSE_WAIT, FIN_WAIT2 or LAST_ACK, with their owners.
    Stuck(StuckFlags),
    /// Counts of sockets per state, now and live, with the top peers.
    Census(CensusFlags),
    /// The TIME_WAIT sysctls, checked against what this host's sockets do.
    Doctor(DoctorFlags),
    /// Capture every transition and connection record to a file, for -r.
    Record(RecordFlags),
    /// A capture as one self-contained HTML page of charts and tables.
    Report(ReportFlags),
    /// A Prometheus endpoint: sockets per state, transitions, TIME_WAIT and
    /// CLOSE_WAIT owners, dwell-time histograms, tcptrace's own health.
    Serve(ServeFlags),
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

    #[command(flatten)]
    pub cgroup: CgroupFlag,
}

/// `--cgroup`, for every command.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CgroupFlag {
    /// Only sockets whose owner is in cgroup PATH or below it: a path in
    /// the cgroup v2 hierarchy as /proc/PID/cgroup shows it
    /// (/system.slice/nginx.service), or its directory under the cgroup2
    /// mount. Decided in the kernel where the probe filters; sockets whose
    /// owner tcptrace never saw do not match.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub path: Option<String>,
}

impl CgroupFlag {
    /// The filter, checked against this host's hierarchy.
    pub fn live(&self) -> anyhow::Result<Option<crate::cgroups::CgroupFilter>> {
        self.path
            .as_deref()
            .map(|typed| {
                crate::cgroups::CgroupFilter::live(typed)
                    .map_err(|e| crate::error::UsageError(format!("{e:#}")).into())
            })
            .transpose()
    }
}

/// How the probe is loaded, for every command that loads it.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeFlags {
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

    /// Benchmarks only: attach nothing but a program on the state-change
    /// tracepoint that returns at once (`cargo xtask bench`'s floor), so
    /// that nothing is traced.
    #[arg(long, hide = true)]
    pub floor_probe: bool,

    /// Benchmarks only: --floor-probe, plus programs that return at once
    /// on timer_start, timer_cancel and kfree_skb, the tracepoints that
    /// follow timewait sockets on kernels without trampolines.
    #[arg(long, hide = true)]
    pub floor_hooks: bool,
}

/// What every tracing command takes: output format, filters, run length
/// and how the probe is loaded.
#[derive(clap::Args, Debug)]
pub struct Common {
    #[command(flatten)]
    pub output: Output,

    #[command(flatten)]
    pub filters: Filters,

    #[command(flatten)]
    pub probe: ProbeFlags,
}

/// Output format and run length; the views word --json's help their way.
#[derive(clap::Args, Debug)]
pub struct Output {
    /// Print JSON Lines: one object per line, each with a "type" field.
    #[arg(short, long)]
    pub json: bool,

    /// Stop by itself after SECONDS (fractions allowed) and print the summary.
    #[arg(short, long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
}

/// What the views that keep a socket table take (stuck, census, serve):
/// their scope, output and probe.
#[derive(clap::Args, Debug)]
pub struct TableFlags {
    /// Every network namespace, not only tcptrace's own.
    #[arg(long)]
    pub all_netns: bool,

    #[command(flatten)]
    pub output: Output,

    #[command(flatten)]
    pub probe: ProbeFlags,
}

/// How a live table refreshes (stuck, census).
#[derive(clap::Args, Debug)]
pub struct Refresh {
    /// Refresh every SECONDS.
    #[arg(short, long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    pub interval: Duration,

    /// Print once (right after the start-up walk) and exit.
    #[arg(long)]
    pub once: bool,
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

/// Reading a capture (`tcptrace record`) in place of the live probe.
#[derive(clap::Args, Debug, Default)]
pub struct ReadFlags {
    /// Read the capture FILE instead of tracing live (like tcpdump -r);
    /// give every file of a rotated capture to read them all, in order.
    /// The filters apply to what the capture holds; the probe flags are
    /// ignored.
    #[arg(short = 'r', long = "read", value_name = "FILE", num_args = 1..)]
    pub read: Vec<PathBuf>,

    /// With -r: only records from TIME on, an RFC 3339 time
    /// (2026-12-02T01:20:04Z, UTC) or a duration after the capture's start
    /// (30s, 2m, 1h).
    #[arg(long, value_name = "TIME", requires = "read", value_parser = parse_time_bound)]
    pub since: Option<TimeBound>,

    /// With -r: only records up to TIME (as --since).
    #[arg(long, value_name = "TIME", requires = "read", value_parser = parse_time_bound)]
    pub until: Option<TimeBound>,
}

/// The live tail (no subcommand).
#[derive(clap::Args, Debug)]
pub struct TailFlags {
    /// Show every transition, not just TIME_WAIT entry and end and CLOSE_WAIT -> LAST_ACK.
    #[arg(short, long)]
    pub all: bool,

    #[command(flatten)]
    pub common: Common,

    #[command(flatten)]
    pub read: ReadFlags,

    #[command(flatten)]
    pub columns: Columns,
}

#[derive(clap::Args, Debug)]
#[command(long_about = "\
One record per finished connection (each end of it), like tcplife, but with
the owner seen in its own context, which side closed first (local, remote or
reset) and the time in each phase: handshake, ESTABLISHED, closing
(FIN_WAIT1/FIN_WAIT2/CLOSING, or CLOSE_WAIT/LAST_ACK) and TIME_WAIT.

A connection is reported when its last socket is gone. For the side that
closed first that is the end of TIME_WAIT, normally 60 s after the close
(or earlier when the socket is reused or killed); --no-timewait-hook reports
it at the close instead, without TIME_WAIT. Connections opened before
tcptrace started are reported with what is known (start_seen false, unknown
phases null), never with invented durations.")]
pub struct LifeFlags {
    #[command(flatten)]
    pub common: Common,

    #[command(flatten)]
    pub read: ReadFlags,

    #[command(flatten)]
    pub columns: Columns,
}

#[derive(clap::Args, Debug)]
#[command(long_about = "\
Log2 histograms (bcc/bpftrace style) of connection lifetime and of the time
spent per state: handshake (SYN_SENT or SYN_RECV to ESTABLISHED),
ESTABLISHED, CLOSE_WAIT (how long applications take to close after the peer
did), FIN_WAIT2, LAST_ACK and TIME_WAIT (when the timewait hooks are
attached). Each comes with count, p50, p90, p99 and max; percentiles are
interpolated within their power-of-two bucket.

The kernel aggregates: no event is copied to userspace, whatever the
connection rate. Histograms are cumulative since start, printed every
--interval and at exit. A duration is counted when its state ends; a
lifetime when the connection's last socket is gone (after TIME_WAIT for the
side that closed first). Connections opened before tcptrace started add the
states they are seen to enter, never a lifetime.")]
pub struct HistFlags {
    /// One histogram per key: local or remote port, remote address, owner's
    /// command or pid (top keys by count; the rest are summed as "other").
    #[arg(long, value_enum)]
    pub by: Option<hist::By>,

    /// How many keys to show per metric with --by.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Print the histograms every SECONDS (besides at exit).
    #[arg(short, long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub interval: Option<Duration>,

    /// Only these metrics (comma-separated): lifetime, handshake,
    /// established, close_wait, fin_wait2, last_ack, time_wait.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_metric)]
    pub metric: Vec<u8>,

    #[command(flatten)]
    pub common: Common,

    #[command(flatten)]
    pub read: ReadFlags,

    /// Most keys the kernel keeps before counting new ones as "other".
    #[arg(long, value_name = "N", default_value_t = DEFAULT_HISTOGRAM_KEYS,
          value_parser = clap::value_parser!(u32).range(16..=65536))]
    pub max_keys: u32,
}

#[derive(clap::Args, Debug)]
#[command(
    mut_arg("interval", |a| a.help("Refresh the table every SECONDS")),
    mut_arg("once", |a| a.help("Print one snapshot (right after the start-up walk) and exit")),
    mut_arg("json", |a| a.help("Print JSON Lines: per refresh a \"stuck_snapshot\" record, then one \"stuck\" record per socket and one \"stuck_process\" record per owner")),
    mut_arg("duration", |a| a.help("Stop by itself after SECONDS"))
)]
#[command(long_about = "\
Who is not closing their sockets: a live table of sockets sitting in
CLOSE_WAIT (the peer closed, the application has not), FIN_WAIT2 (this
side closed, the peer has not) and LAST_ACK for longer than --min-age, with
the owning process, and a count per process.

Sockets that were already in such a state when tcptrace started are found
by walking the kernel's socket table (/proc/net/tcp and tcp6), their owner
through the socket inode in /proc/PID/fd (as ss -p does). When they entered
the state is unknown: they are shown whatever --min-age, with AGE as a
lower bound (\">=\", JSON age_at_least), counted from tcptrace's start.

A socket leaves the table as soon as its owner closes it (CLOSE_WAIT ->
LAST_ACK) or it ends. A FIN_WAIT2 connection whose application has closed
it lives on in a timewait socket (orphaned) until the peer's FIN or
net.ipv4.tcp_fin_timeout: it is shown with its last known owner, marked
orphaned.

The table is redrawn in place on a terminal; otherwise a snapshot is
printed every --interval. By default only tcptrace's own network namespace
is shown (like ss and netstat); --all-netns shows every namespace.")]
pub struct StuckFlags {
    /// Show sockets that have been in their state for at least SECONDS.
    #[arg(short = 'm', long, value_name = "SECONDS", default_value = "5",
          value_parser = parse_seconds)]
    pub min_age: Duration,

    #[command(flatten)]
    pub refresh: Refresh,

    /// Counts per owner's cgroup or container too (`stuck_group` records).
    #[arg(long, value_enum)]
    pub by: Option<crate::stuck::By>,

    /// Most rows shown per state (human output; JSON has them all).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub limit: usize,

    #[command(flatten)]
    pub cgroup: CgroupFlag,

    #[command(flatten)]
    pub table: TableFlags,
}

#[derive(clap::Args, Debug)]
#[command(
    mut_arg("interval", |a| a.help("Print the counts every SECONDS")),
    mut_arg("once", |a| a.help("Print the counts once (from the kernel's table) and exit")),
    mut_arg("json", |a| a.help("Print JSON Lines ({\"type\":\"census\",...})")),
    mut_arg("duration", |a| a.help("Stop by itself after SECONDS"))
)]
#[command(long_about = "\
Counts of TCP sockets per state: first from the kernel's own table (as ss
and netstat read it), then kept up to date from the event stream and
printed every --interval (redrawn in place on a terminal).

Timewait sockets, which hold a connection after its application closed it,
are in one of two sub-states: FIN_WAIT2 (closed first, the peer's FIN not
in yet) or TIME_WAIT. ss and netstat show the first as FIN-WAIT-2, mixed
with full sockets in FIN_WAIT2; the census counts them under FIN_WAIT2 too
and says how many of each there are.

--by shows which remote port, remote address, local port or program
(owner, or last owner for a closed connection) has the most sockets in
the states of --states (TIME_WAIT by default).

By default tcptrace's own network namespace is counted (like ss and
netstat); --all-netns counts every namespace. Request sockets (half-open
connections) are counted from the start-up walk only: the probe does not
see them.")]
pub struct CensusFlags {
    #[command(flatten)]
    pub refresh: Refresh,

    /// Top keys per state: remote port, remote address, local port or
    /// owner's command.
    #[arg(long, value_enum)]
    pub by: Option<census::By>,

    /// States for --by (comma-separated state names, or "all").
    #[arg(long, value_name = "LIST", default_value = "TIME_WAIT", value_parser = parse_states)]
    pub states: StateList,

    /// How many keys --by shows per state.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub top: usize,

    #[command(flatten)]
    pub cgroup: CgroupFlag,

    #[command(flatten)]
    pub table: TableFlags,
}

#[derive(clap::Args, Debug)]
#[command(long_about = "\
Reads the sysctls that TIME_WAIT advice tunes (net.ipv4.tcp_tw_reuse,
tcp_fin_timeout, tcp_max_tw_buckets, ip_local_port_range, tcp_syncookies,
and whether tcp_tw_recycle still exists: it was removed in Linux 4.12) in
tcptrace's network namespace, and reports what they do here: timewait
sockets against tcp_max_tw_buckets, ephemeral ports held in TIME_WAIT
toward one peer against the port range, the kernel's own counters
(/proc/net/netstat) and, with --observe, what the event stream shows in
that window: connections entering TIME_WAIT, and timewait sockets ending
by expiry, by tcp_fin_timeout, reused early or killed.

Each sentence carries the number it rests on. Advice is given only when a
number calls for it: e.g. tcp_tw_reuse only when TIME_WAIT sockets toward
one peer hold at least half of the ephemeral port range.")]
pub struct DoctorFlags {
    /// Watch the event stream for SECONDS before reporting.
    #[arg(short, long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub observe: Option<Duration>,

    /// Print one JSON record ({"type":"doctor",...}) with the raw numbers.
    #[arg(short, long)]
    pub json: bool,

    #[command(flatten)]
    pub probe: ProbeFlags,
}

#[derive(clap::Args, Debug)]
#[command(
    mut_arg("json", |a| a.help("Print the summary (and losses as they happen) as JSON Lines on stdout")),
)]
#[command(long_about = "\
Capture what every view needs into a file, to read it back later, as often
as needed, with any view and filters chosen then (tcptrace -r FILE,
tcptrace life -r FILE, tcptrace hist -r FILE): every transition (as --all),
the timewait sockets' own, and the per-connection records of life.

The records are written as the probe made them, in batches, by a thread of
its own: no formatting per event, and a slow or full disk never stalls the
ring reader. Whatever cannot be kept is counted and reported, on stderr and
in the file. The file starts with where and how it was taken (host, kernel,
boot id, clock offset, command line, filters, hooks), holds the loss
counters every second, and ends with the run's summary; a capture cut
short (killed, disk full, power) is readable up to its last whole batch.

Filters given here run in the kernel, as for the live views. -C, -W and -G
rotate files as tcpdump does: FILE, then FILE1, FILE2, ...")]
pub struct RecordFlags {
    /// Write the capture to FILE (created, or truncated if it exists).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: PathBuf,

    /// Start a new file before this one would grow past SIZE (K/M/G
    /// suffixes are powers of 1024; a plain number is millions of bytes, as
    /// tcpdump's -C).
    #[arg(short = 'C', long = "file-size", value_name = "SIZE", value_parser = parse_file_size)]
    pub file_size: Option<u64>,

    /// Start a new file every SECONDS (as tcpdump's -G).
    #[arg(short = 'G', long = "rotate-seconds", value_name = "SECONDS", value_parser = parse_seconds)]
    pub rotate_seconds: Option<Duration>,

    /// Memory for batches waiting for a slow disk (K/M/G suffixes, at least
    /// 2M); beyond it records are counted as unwritten rather than stall
    /// the ring reader.
    #[arg(short = 'B', long = "buffer-size", value_name = "SIZE", default_value = "32M",
          value_parser = parse_file_size)]
    pub buffer_size: u64,

    /// With -C or -G: keep only the newest N files, deleting older ones.
    #[arg(short = 'W', long = "file-count", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub file_count: Option<u64>,

    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Debug)]
#[command(long_about = "\
A capture (tcptrace record -w FILE) as one self-contained HTML page, to open
in any browser (nothing is fetched: the charts are inline SVG): transitions
per second by kind; TIME_WAIT and CLOSE_WAIT populations over time (from the
capture's census of the sockets at its start when it had no filters); the
time spent per state (handshake, established, close_wait, fin_wait2,
last_ack, time_wait, lifetime) with count, p50, p90, p99 and max; the
processes, local ports and peers behind TIME_WAIT and CLOSE_WAIT entries;
losses over time; and where and how the capture was taken.

One pass over the records: a capture of millions of records takes seconds.
Needs no privileges.")]
pub struct ReportFlags {
    /// The capture's FILE (every file of a rotated capture, in any order).
    #[arg(short = 'r', long = "read", value_name = "FILE", num_args = 1.., required = true)]
    pub read: Vec<PathBuf>,

    /// Write the page to FILE (`-` for stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE", required = true)]
    pub output: PathBuf,

    /// How many transition kinds, processes, ports and peers to show.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// Only records from TIME on, an RFC 3339 time (2026-12-02T01:20:04Z,
    /// UTC) or a duration after the capture's start (30s, 2m, 1h).
    #[arg(long, value_name = "TIME", value_parser = parse_time_bound)]
    pub since: Option<TimeBound>,

    /// Only records up to TIME (as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time_bound)]
    pub until: Option<TimeBound>,
}

#[derive(clap::Args, Debug)]
#[command(
    mut_arg("json", |a| a.help("Print the summary at exit as JSON on stdout")),
    mut_arg("duration", |a| a.help("Stop by itself after SECONDS"))
)]
#[command(long_about = "\
Serves /metrics for Prometheus (the Prometheus text format, or OpenMetrics
when the scraper asks for it) and a small landing page at /: sockets per
state now (the census, with TIME_WAIT's sub-states and FIN_WAIT2 full or
timewait), transitions by old and new state, how timewait sockets ended,
dwell-time histograms per state in seconds (from the kernel's log2
buckets), the processes and local ports behind TIME_WAIT and stuck
CLOSE_WAIT (the top --top-keys of each, the rest summed as \"other\"), and
tcptrace's own health (events lost by cause, records evicted, hooks).

Scrapes read a snapshot published every --interval by the event loop, and
are served by a thread of their own: a scrape never delays event handling.
Listens on 127.0.0.1:19435 unless --listen says otherwise; any other
address (0.0.0.0:19435, [::]:19435) must be given explicitly. There is no
TLS or authentication: put a reverse proxy in front for those.")]
pub struct ServeFlags {
    /// Listen on ADDR:PORT; the default is loopback only.
    #[arg(short, long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Label values kept per labelled metric (processes, local ports); the
    /// rest are summed under "other", and how many were folded is a metric.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub top_keys: u32,

    /// CLOSE_WAIT sockets count as stuck after SECONDS in the state.
    #[arg(short = 'm', long, value_name = "SECONDS", default_value = "5",
          value_parser = parse_seconds)]
    pub min_age: Duration,

    /// Publish a fresh snapshot for scrapes every SECONDS.
    #[arg(short, long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    pub interval: Duration,

    #[command(flatten)]
    pub table: TableFlags,
}
