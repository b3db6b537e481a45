//! What the views compute and the printer prints: stuck rows, census
//! counts and top keys, histograms, the doctor's facts. Plain data (and the
//! arithmetic on it), below both the commands and the printer, so that
//! printing imports no command.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use tcptrace_common::{metric, tcp_state::*, HistValue, HIST_BUCKETS};

use crate::{
    cgroups::Cgroup,
    sockets::{Owner, TimewaitCounts, Tuple},
};

// ---- stuck ----

/// The states shown, in display order.
pub const STUCK_STATES: [u8; 3] = [CLOSE_WAIT, FIN_WAIT2, LAST_ACK];

/// One stuck socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckRow {
    pub tuple: Tuple,
    pub state: u8,
    pub owner: Option<Owner>,
    /// Held by a timewait socket: the application closed it.
    pub orphaned: bool,
    pub age_ns: u64,
    /// The entry time is unknown: `age_ns` is a lower bound.
    pub age_at_least: bool,
    /// The owner's cgroup, named.
    pub cgroup: Option<Cgroup>,
}

/// Per owner: CLOSE_WAIT, FIN_WAIT2 (held open), LAST_ACK, and orphaned
/// FIN_WAIT2.
pub type ProcessCounts = BTreeMap<Option<Owner>, [u64; 4]>;

/// A stuck table's counts: per owner, and per `--by` key when asked.
pub struct StuckCounts {
    pub processes: ProcessCounts,
    pub groups: Option<GroupCounts>,
}

/// The same counts per `--by` key (a cgroup path or a container), with the
/// key's name (`cgroup`, `container`).
pub struct GroupCounts {
    pub by: &'static str,
    pub counts: BTreeMap<String, [u64; 4]>,
}

// ---- census ----

/// The states counted, in netstat's order of interest.
pub const STATES: [u8; 10] = [
    ESTABLISHED,
    SYN_SENT,
    SYN_RECV,
    FIN_WAIT1,
    FIN_WAIT2,
    TIME_WAIT,
    CLOSE_WAIT,
    LAST_ACK,
    LISTEN,
    CLOSING,
];

/// Sockets per state, as ss shows them, and the timewait sockets apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub per_state: [u64; COUNT],
    /// Full sockets in FIN_WAIT2 (the application still holds them, or is
    /// closing them).
    pub fin_wait2_full: u64,
    /// Timewait sockets in sub-state FIN_WAIT2 and TIME_WAIT.
    pub timewait_fin_wait2: u64,
    pub timewait_time_wait: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        STATES.iter().map(|&s| self.per_state[s as usize]).sum()
    }

    pub fn timewait_sockets(&self) -> u64 {
        self.timewait_fin_wait2 + self.timewait_time_wait
    }
}

/// A --by key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    Port(u16),
    Addr(IpAddr),
    Comm(String),
}

impl Key {
    pub fn label(&self) -> String {
        match self {
            Key::Port(p) => p.to_string(),
            Key::Addr(a) => a.to_string(),
            Key::Comm(c) => c.clone(),
        }
    }
}

/// Per state, its top keys with their counts.
pub type TopKeys = Vec<(u8, Vec<(Key, u64)>)>;

// ---- hist ----

pub const METRICS: [(u8, &str); metric::COUNT] = [
    (metric::LIFETIME, "lifetime"),
    (metric::HANDSHAKE, "handshake"),
    (metric::ESTABLISHED, "established"),
    (metric::CLOSE_WAIT, "close_wait"),
    (metric::FIN_WAIT2, "fin_wait2"),
    (metric::LAST_ACK, "last_ack"),
    (metric::TIME_WAIT, "time_wait"),
];

pub fn metric_name(m: u8) -> &'static str {
    METRICS
        .iter()
        .find(|&&(id, _)| id == m)
        .map_or("unknown", |&(_, n)| n)
}

/// What a histogram's key is, for display.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyValue {
    All,
    Port(u16),
    Addr(IpAddr),
    Comm(String),
    Pid(u32),
    Other,
}

impl KeyValue {
    pub fn label(&self) -> String {
        match self {
            KeyValue::All => String::new(),
            KeyValue::Port(p) => p.to_string(),
            KeyValue::Pid(p) => p.to_string(),
            KeyValue::Addr(a) => a.to_string(),
            KeyValue::Comm(c) => c.clone(),
            KeyValue::Other => "other".into(),
        }
    }
}

/// One histogram, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub count: u64,
    pub max_ns: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

impl Histogram {
    pub fn empty() -> Self {
        Histogram {
            count: 0,
            max_ns: 0,
            buckets: [0; HIST_BUCKETS],
        }
    }

    pub fn add(&mut self, v: &HistValue) {
        self.count += v.count;
        self.max_ns = self.max_ns.max(v.max_ns);
        for (total, n) in self.buckets.iter_mut().zip(v.buckets.iter()) {
            *total += n;
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        self.count += other.count;
        self.max_ns = self.max_ns.max(other.max_ns);
        for (total, n) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *total += n;
        }
    }

    /// Range of bucket `i`: [lo, hi) in ns.
    pub fn bucket_range(i: usize) -> (u64, u64) {
        let lo = if i == 0 { 0 } else { 1u64 << i };
        let hi = if i + 1 >= 64 {
            u64::MAX
        } else {
            1u64 << (i + 1)
        };
        (lo, hi)
    }

    /// The q-quantile (0 < q <= 1), interpolated linearly inside its
    /// bucket and never above the largest value seen.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = (q * self.count as f64).ceil().max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let (lo, hi) = Self::bucket_range(i);
                let hi = hi.min(self.max_ns.saturating_add(1)).max(lo);
                let within = (rank - seen as f64) / n as f64;
                let value = lo as f64 + within * (hi - lo) as f64;
                // Inside the bucket: [lo, hi).
                return (value as u64).min(hi.saturating_sub(1)).min(self.max_ns);
            }
            seen += n;
        }
        self.max_ns
    }
}

// ---- doctor ----

/// The knobs, as read (`None`: absent or unreadable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysctls {
    pub tcp_tw_reuse: Option<i64>,
    pub tcp_fin_timeout: Option<i64>,
    pub tcp_max_tw_buckets: Option<i64>,
    pub ip_local_port_range: Option<(u16, u16)>,
    pub tcp_syncookies: Option<i64>,
    /// `None`: the file does not exist (Linux 4.12 and later).
    pub tcp_tw_recycle: Option<i64>,
}

/// The TcpExt counters the doctor reads.
pub const NETSTAT_KEYS: [&str; 8] = [
    "TW",
    "TWRecycled",
    "TWKilled",
    "TCPTimeWaitOverflow",
    "SyncookiesSent",
    "SyncookiesFailed",
    "ListenOverflows",
    "ListenDrops",
];

/// Ephemeral ports held by timewait sockets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortUse {
    pub range_size: u64,
    pub timewait_in_range: u64,
    pub max_per_peer: u64,
    pub peer: Option<(IpAddr, u16)>,
}

/// One sentence (and, when a number calls for it, what to do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub topic: &'static str,
    pub text: String,
    pub advice: Option<String>,
}

/// Everything the report rests on.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub kernel: String,
    pub sysctls: Sysctls,
    pub counts: Counts,
    pub ports: Option<PortUse>,
    pub netstat: HashMap<String, u64>,
    /// Counter increases during the window.
    pub netstat_delta: Option<HashMap<String, u64>>,
    pub observed: Option<(Duration, TimewaitCounts)>,
    /// The kernel hooks the probe attached here, and the timewait
    /// detection they allow (`None`: not loaded).
    pub hooks: Option<(Vec<String>, String)>,
}
