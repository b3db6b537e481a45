//! Loading and attaching the probe, and reading what it counts.
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePoint, FEntry, FExit, TracePoint},
    Btf as AyaBtf, Ebpf, EbpfLoader,
};
use tcptrace_common::{
    ArmedTimewaits, HistKey, HistValue, KernelOffsets, ListenerOwner, ProbeConfig, SocketRecord,
    CONFIG_TIMEWAIT_HOOK, COUNTER_CONNECTIONS, COUNTER_EMITTED, COUNTER_HANDOFFS_UNSEEN,
    COUNTER_HIST_OVERFLOW, COUNTER_READ_FAILED, COUNTER_RECORDS_ADDED, COUNTER_RECORDS_REMOVED,
    COUNTER_RING_FULL, COUNTER_SOCKET_MAP_FULL, COUNTER_TIMEWAIT_ENTRIES_LOST,
    COUNTER_TIMEWAIT_HANDOFFS, COUNTER_TIMEWAIT_MAP_FULL, HANDOFF_WINDOW_NS,
};

use crate::{btf::Btf, error::note, ring::RingReader};

/// What to load: the probe's configuration and its map sizes.
#[derive(Clone, Copy)]
pub struct ProbeOptions {
    pub config: ProbeConfig,
    pub ring_size: u32,
    /// Attach the hooks that follow timewait sockets.
    pub timewait_hook: bool,
    /// Most histogram keys the kernel keeps (the rest go to "other").
    pub histogram_keys: u32,
    /// Keep the probe's aya-log diagnostics (`--probe-log`).
    pub probe_log: bool,
    /// Attach only empty programs (the bench's floor configurations).
    pub floor: Floor,
    /// Wake the reader at most this often under load: the latency of a
    /// live view, against a wake-up's cost per event.
    pub wake_interval: std::time::Duration,
}

/// The bench's floors: what attaching costs, with programs that return at
/// once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// The real probe.
    Off,
    /// `FLOOR` only, on the state-change tracepoint.
    State,
    /// `FLOOR` and `FLOOR_HOOKS`: every tracepoint the probe uses on a
    /// kernel without trampolines (this one), each run costing only the
    /// kernel's dispatch and statistics.
    Hooks,
}

impl Floor {
    /// The empty programs to attach in place of the probe (none: the probe).
    fn hooks(self) -> &'static [Hook] {
        match self {
            Floor::Off => &[],
            Floor::State => &FLOOR_HOOKS[..1],
            Floor::Hooks => &FLOOR_HOOKS,
        }
    }
}

/// Prints the probe's aya-log records on stderr.
pub struct ProbeLog;

impl log::Log for ProbeLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        note!(
            "tcptrace: probe: {}",
            name_states(&record.args().to_string())
        );
    }

    fn flush(&self) {}
}

/// The probe writes states as `state:N`: named here.
fn name_states(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("state:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "state:".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<u8>() {
            Ok(n) => out.push_str(crate::state::name(n)),
            Err(_) => out.push_str("state:"),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// aya-log's level filter in the probe: 0 lets nothing through, and the
/// verifier then removes every log call (the global is read-only).
const PROBE_LOG_OFF: u8 = 0;
/// Everything up to info (aya_log_common::Level::Info).
const PROBE_LOG_ON: u8 = 3;

static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace-probe"));

const SET_STATE_PROGRAM: &str = "inet_sock_set_state";
const TIMER_START_PROGRAM: &str = "timer_start";
const TIMER_CANCEL_PROGRAM: &str = "timer_cancel";
const KFREE_SKB_PROGRAM: &str = "kfree_skb";
const TIMEWAIT_STATE_PROCESS_PROGRAM: &str = "timewait_state_process";
/// The programs that follow timewait sockets, attached before the
/// state-change hook so that no hand-off is classified before it can be
/// recognised.
const TIMEWAIT_PROGRAMS: [&str; 2] = [TIMER_START_PROGRAM, TIMER_CANCEL_PROGRAM];

/// A kernel hook a program of the probe is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    /// The program's name in the probe object.
    pub program: &'static str,
    /// How it is attached: "tp_btf" (BTF tracepoint), "fentry" or "fexit".
    pub kind: &'static str,
    /// The tracepoint or kernel function.
    pub target: &'static str,
}

impl Hook {
    const fn tp_btf(program: &'static str) -> Hook {
        Hook {
            program,
            kind: "tp_btf",
            target: program,
        }
    }

    /// "kind/target", as bpftool and libbpf name attach points.
    pub fn name(&self) -> String {
        format!("{}/{}", self.kind, self.target)
    }
}

/// The bench's floor: the state-change tracepoint with a program that
/// returns at once.
const FLOOR: Hook = Hook {
    program: "state_floor",
    kind: "tp_btf",
    target: SET_STATE_PROGRAM,
};

/// `Floor::Hooks`: `FLOOR` and the timer and freed-packet tracepoints the
/// probe follows timewait sockets with (see `TIMEWAIT_PROGRAMS`,
/// `FIN_HOOKS`), with programs that return at once.
const FLOOR_HOOKS: [Hook; 4] = [
    FLOOR,
    Hook {
        program: "timer_start_floor",
        kind: "tp_btf",
        target: TIMER_START_PROGRAM,
    },
    Hook {
        program: "timer_cancel_floor",
        kind: "tp_btf",
        target: TIMER_CANCEL_PROGRAM,
    },
    Hook {
        program: "kfree_skb_floor",
        kind: "tp_btf",
        target: KFREE_SKB_PROGRAM,
    },
];

/// New cgroups' names (a classic tracepoint: its record carries the path
/// the kernel built).
const CGROUP_MKDIR: Hook = Hook {
    program: "cgroup_mkdir",
    kind: "tracepoint",
    target: "cgroup/cgroup_mkdir",
};

/// The timewait socket's birth and end hooked in the timewait code itself
/// (fentry: runs only for timewait sockets), used instead of the timer
/// tracepoints (which run for every timer of the machine) where the kernel
/// allows trampolines. Newer kernels renamed the birth function
/// (inet_twsk_hashdance_schedule, which arms the timer too): no kernel the
/// project can boot has that name and trampolines, so it is not tried, and
/// those kernels use the timer tracepoints.
const FENTRY_BIRTH: Hook = Hook {
    program: "twsk_hashdance",
    kind: "fentry",
    target: "inet_twsk_hashdance",
};
const FENTRY_END: Hook = Hook {
    program: "twsk_kill",
    kind: "fentry",
    target: "inet_twsk_kill",
};

/// Where the peer's FIN reaching a timewait socket can be seen, cheapest
/// first; the first this kernel accepts is used. fexit runs only for packets
/// to timewait sockets but needs BPF trampolines (refused by locked-down
/// kernels); kfree_skb runs for every freed packet and names the receiving
/// socket only from Linux 6.11 (its rx_sk argument).
const FIN_HOOKS: [Hook; 2] = [
    Hook {
        program: TIMEWAIT_STATE_PROCESS_PROGRAM,
        kind: "fexit",
        target: "tcp_timewait_state_process",
    },
    Hook::tp_btf(KFREE_SKB_PROGRAM),
];

/// How closely tcptrace follows connections into their timewait sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimewaitDetection {
    /// All hooks attached: hand-offs classified, true TIME_WAIT entry and
    /// the end of each timewait socket reported.
    Exact,
    /// Timer hooks attached, but the peer's FIN arriving at a timewait
    /// socket (kfree_skb with rx_sk) cannot be seen: FIN_WAIT2 -> TIME_WAIT
    /// is reported only when the kernel moves the socket's timer to another
    /// wheel slot, often not at all.
    Partial(String),
    /// The hooks could not be attached: hand-offs are shown unclassified
    /// and nothing is known of TIME_WAIT.
    Unavailable(String),
    /// The user chose not to attach the hooks (--no-timewait-hook).
    Disabled,
}

impl TimewaitDetection {
    pub fn describe(&self) -> String {
        match self {
            TimewaitDetection::Exact => "exact".into(),
            TimewaitDetection::Partial(why) => {
                format!("partial: FIN_WAIT2 -> TIME_WAIT mostly unseen ({why})")
            }
            TimewaitDetection::Unavailable(why) => format!("unavailable: {why}"),
            TimewaitDetection::Disabled => "disabled (--no-timewait-hook)".into(),
        }
    }

    /// Whether timewait sockets are followed at all.
    pub fn hooked(&self) -> bool {
        matches!(
            self,
            TimewaitDetection::Exact | TimewaitDetection::Partial(_)
        )
    }
}

/// Counters the kernel and the probe keep about what was not delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossCounters {
    /// Events dropped because the ring buffer was full.
    pub ring_full: u64,
    /// Runs of the state-change program the kernel skipped (the tracepoint
    /// fired again on a CPU already running it): each one a lost event.
    pub recursion_misses: u64,
    /// Runs of the timewait timer hook the kernel skipped: no event is lost,
    /// but a hand-off may then be reported as not one.
    pub timewait_hook_misses: u64,
    /// Runs of any probe program that lost their work (a transition, or a
    /// timewait socket's birth, FIN or end) to a failed read.
    pub read_failures: u64,
    /// Socket records the map refused (never expected with an LRU map).
    pub socket_map_full: u64,
    /// Timewait sockets whose hand-off the state-change program never ran
    /// for: each one a FIN_WAIT2 -> CLOSE the kernel skipped (a recursion
    /// miss above, or a skip the kernel did not count).
    pub handoffs_unseen: u64,
    /// TIME_WAIT entries lost with such a hand-off.
    pub timewait_entries_lost: u64,
}

impl LossCounters {
    pub fn total(&self) -> u64 {
        self.ring_full + self.recursion_misses + self.read_failures + self.timewait_entries_lost
    }
}

/// The loaded, attached probe. Dropping it detaches everything.
pub struct Probe {
    ebpf: Ebpf,
    ring_size: u32,
    /// How often at most the probe wakes the reader (`ProbeOptions`).
    pub wake_interval: std::time::Duration,
    pub timewait: TimewaitDetection,
    /// The hooks attached, in the order they were.
    pub hooks: Vec<Hook>,
    program_fds: Vec<(&'static str, i32)>,
    /// The probe's diagnostics, when asked for (`--probe-log`).
    log: Option<aya_log::EbpfLogger<ProbeLog>>,
}

impl Probe {
    /// Loads the probe with `config` and attaches it. Timewait detection is
    /// set up as far as this kernel allows; what is missing is recorded.
    pub fn load(options: &ProbeOptions) -> Result<Self> {
        let mut config = options.config;
        let btf = Btf::from_sys_fs()?;
        socket_offsets(&btf, &mut config.offsets)
            .context("this kernel's struct sock is not what tcptrace knows")?;
        let kernel_btf = AyaBtf::from_sys_fs().context("reading kernel BTF")?;
        // Without the tracepoint's format, new cgroups are named by walks only.
        if let Ok((root, id, path)) = cgroup_mkdir_fields() {
            config.offsets.mkdir_root = root;
            config.offsets.mkdir_id = id;
            config.offsets.mkdir_path = path;
        }
        let timewait = if !options.timewait_hook {
            TimewaitDetection::Disabled
        } else {
            match timewait_hook_setup(&btf, &mut config.offsets) {
                Ok(handler) => {
                    let mut with_hook = config;
                    with_hook.flags |= CONFIG_TIMEWAIT_HOOK;
                    with_hook.tw_timer_handler = handler;
                    match Self::load_with(&with_hook, options, &kernel_btf, true) {
                        Ok(probe) => return Ok(probe),
                        // Retry without the hooks: if they were the
                        // problem, tracing goes on with less precision,
                        // said out loud.
                        Err(err) => TimewaitDetection::Unavailable(refusal(&err)),
                    }
                }
                Err(err) => TimewaitDetection::Unavailable(format!("{err:#}")),
            }
        };
        let mut probe = Self::load_with(&config, options, &kernel_btf, false)
            .map_err(|err| shorten_load_error(err, options.probe_log))?;
        probe.timewait = timewait;
        Ok(probe)
    }

    fn load_with(
        config: &ProbeConfig,
        options: &ProbeOptions,
        btf: &AyaBtf,
        timewait_hooks: bool,
    ) -> Result<Self> {
        let log_level = if options.probe_log {
            PROBE_LOG_ON
        } else {
            PROBE_LOG_OFF
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", config, true)
            .override_global("AYA_LOG_LEVEL", &log_level, true)
            .map_max_entries("EVENTS", options.ring_size)
            .map_max_entries("HISTOGRAMS", options.histogram_keys)
            .load(PROBE_OBJECT)
            .map_err(|e| explain_load_error(e.into()))
            .context("loading the probe")?;
        let mut attached = Vec::new();
        let floor = options.floor.hooks();
        if !floor.is_empty() {
            for &hook in floor {
                attached.push((hook, attach(&mut ebpf, &hook, btf)?));
            }
            return Ok(Probe::assemble(
                ebpf,
                options,
                TimewaitDetection::Disabled,
                None,
                &attached,
            ));
        }
        // First: a cgroup's name comes before the events of its sockets.
        if config.offsets.mkdir_path != 0 {
            match attach(&mut ebpf, &CGROUP_MKDIR, btf) {
                Ok(fd) => attached.push((CGROUP_MKDIR, fd)),
                Err(err) => note!(
                    "tcptrace: warning: new cgroups are named by walking the hierarchy only \
                     ({}: {})",
                    CGROUP_MKDIR.name(),
                    refusal(&err)
                ),
            }
        }
        let mut timewait = TimewaitDetection::Disabled;
        if timewait_hooks {
            match attach_fentry_lifecycle(&mut ebpf, btf) {
                Some(hooks) => attached.extend(hooks),
                None => {
                    for name in TIMEWAIT_PROGRAMS {
                        let hook = Hook::tp_btf(name);
                        attached.push((hook, attach(&mut ebpf, &hook, btf)?));
                    }
                }
            }
            // The peer's FIN at a timewait socket: the first hook this
            // kernel accepts, or partial detection with every refusal named.
            let mut refusals = Vec::new();
            for hook in FIN_HOOKS {
                match attach(&mut ebpf, &hook, btf) {
                    Ok(fd) => {
                        attached.push((hook, fd));
                        break;
                    }
                    Err(err) => refusals.push(format!("{}: {}", hook.name(), refusal(&err))),
                }
            }
            timewait = if refusals.len() < FIN_HOOKS.len() {
                TimewaitDetection::Exact
            } else {
                TimewaitDetection::Partial(refusals.join("; "))
            };
        }
        let log = if options.probe_log {
            Some(
                aya_log::EbpfLogger::init_with_logger(&mut ebpf, ProbeLog)
                    .context("reading the probe's log")?,
            )
        } else {
            None
        };
        let hook = Hook::tp_btf(SET_STATE_PROGRAM);
        attached.push((hook, attach(&mut ebpf, &hook, btf)?));
        // From now on every hand-off is seen: births armed earlier (while
        // the programs above were verified) had theirs unseen, harmlessly.
        let mut attached_at: Array<_, u64> = Array::try_from(
            ebpf.map_mut("STATE_ATTACHED_AT")
                .context("no STATE_ATTACHED_AT map")?,
        )?;
        attached_at.set(0, crate::clock::Clock::now_ktime_ns(), 0)?;
        Ok(Probe::assemble(ebpf, options, timewait, log, &attached))
    }

    /// The probe, once its hooks are `attached` (in order, with their fds).
    fn assemble(
        ebpf: Ebpf,
        options: &ProbeOptions,
        timewait: TimewaitDetection,
        log: Option<aya_log::EbpfLogger<ProbeLog>>,
        attached: &[(Hook, i32)],
    ) -> Probe {
        Probe {
            log,
            ebpf,
            ring_size: options.ring_size,
            wake_interval: options.wake_interval,
            timewait,
            hooks: attached.iter().map(|(hook, _)| *hook).collect(),
            program_fds: attached
                .iter()
                .map(|(hook, fd)| (hook.program, *fd))
                .collect(),
        }
    }

    /// The probe's diagnostics reader, if `--probe-log` asked for one.
    pub fn take_log(&mut self) -> Option<aya_log::EbpfLogger<ProbeLog>> {
        self.log.take()
    }

    /// The ring buffer, with a reader that frees space once per batch.
    pub fn take_ring(&mut self) -> Result<RingReader> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .context("the probe has no EVENTS map")?;
        match map {
            aya::maps::Map::RingBuf(data) => RingReader::new(data, self.ring_size),
            _ => Err(anyhow!("the probe's EVENTS map is not a ring buffer")),
        }
    }

    /// Gives the owners of listeners that existed before tracing started to
    /// the probe, so the connections they accept have an owner too.
    pub fn seed_listeners(&mut self, listeners: &[(u16, ListenerOwner)]) -> Result<()> {
        let mut map: BpfHashMap<_, u16, ListenerOwner> =
            BpfHashMap::try_from(self.ebpf.map_mut("LISTENERS").context("no LISTENERS map")?)?;
        for (port, owner) in listeners {
            // The probe may already have seen a newer listen(): keep that.
            if map.get(port, 0).is_err() {
                map.insert(port, owner, 0)
                    .context("seeding the listener owners")?;
            }
        }
        Ok(())
    }

    pub fn loss_counters(&self) -> Result<LossCounters> {
        let stale = if self.timewait.hooked() {
            self.stale_births()?
        } else {
            (0, 0)
        };
        let (mut recursion_misses, mut timewait_hook_misses) = (0, 0);
        for &(name, fd) in &self.program_fds {
            let misses = program_info(fd)?.recursion_misses;
            if [SET_STATE_PROGRAM, FLOOR.program].contains(&name) {
                recursion_misses += misses;
            } else {
                timewait_hook_misses += misses;
            }
        }
        Ok(LossCounters {
            ring_full: self.counter(COUNTER_RING_FULL)?,
            recursion_misses,
            timewait_hook_misses,
            read_failures: self.counter(COUNTER_READ_FAILED)?,
            socket_map_full: self.counter(COUNTER_SOCKET_MAP_FULL)?
                + self.counter(COUNTER_TIMEWAIT_MAP_FULL)?,
            handoffs_unseen: self.counter(COUNTER_HANDOFFS_UNSEEN)? + stale.0,
            timewait_entries_lost: self.counter(COUNTER_TIMEWAIT_ENTRIES_LOST)? + stale.1,
        })
    }

    /// Births of timewait sockets still waiting, on their CPU, for a
    /// hand-off that should have followed within HANDOFF_WINDOW_NS (the probe
    /// counts them only at that CPU's next birth): (unseen, entries lost).
    fn stale_births(&self) -> Result<(u64, u64)> {
        let Some(map) = self.ebpf.map("ARMED_TIMEWAIT") else {
            return Ok((0, 0));
        };
        let armed: PerCpuArray<_, ArmedTimewaits> = PerCpuArray::try_from(map)?;
        let timewaits: BpfHashMap<_, u64, SocketRecord> =
            BpfHashMap::try_from(self.ebpf.map("TIMEWAITS").context("no TIMEWAITS map")?)?;
        let attached: Array<_, u64> = Array::try_from(
            self.ebpf
                .map("STATE_ATTACHED_AT")
                .context("no STATE_ATTACHED_AT map")?,
        )?;
        let attached_at = attached.get(&0, 0)?;
        let now = crate::clock::Clock::now_ktime_ns();
        let (mut unseen, mut lost) = (0, 0);
        for slot in armed.get(&0, 0)?.iter().flat_map(|cpu| cpu.slots.iter()) {
            // Armed before the state program was attached: a connection
            // that predates tracing (as the probe itself decides).
            if slot.ktime_ns >= attached_at && now.saturating_sub(slot.ktime_ns) > HANDOFF_WINDOW_NS
            {
                unseen += 1;
                if timewaits
                    .get(&slot.tw, 0)
                    .is_ok_and(|record| record.entry_pending != 0)
                {
                    lost += 1;
                }
            }
        }
        Ok((unseen, lost))
    }

    /// Per-connection records the LRU maps evicted to make room (their
    /// connections then look as if they predated tracing). Counts every
    /// record, so it walks the maps: call it once, at the end.
    pub fn records_evicted(&self) -> Result<u64> {
        let added = self.counter(COUNTER_RECORDS_ADDED)?;
        let removed = self.counter(COUNTER_RECORDS_REMOVED)?;
        let mut live = 0u64;
        for name in ["SOCKETS", "TIMEWAITS"] {
            let map: BpfHashMap<_, u64, SocketRecord> =
                BpfHashMap::try_from(self.ebpf.map(name).context("no record map")?)?;
            live += map.keys().filter(|k| k.is_ok()).count() as u64;
        }
        Ok(added.saturating_sub(removed).saturating_sub(live))
    }

    /// Connection records the probe wrote into the ring (`life`).
    pub fn connections_emitted(&self) -> Result<u64> {
        self.counter(COUNTER_CONNECTIONS)
    }

    /// Histogram keys that did not fit and were counted under "other".
    pub fn histogram_overflow(&self) -> Result<u64> {
        self.counter(COUNTER_HIST_OVERFLOW)
    }

    /// Every histogram the probe keeps, summed over CPUs.
    pub fn histograms(&self) -> Result<Vec<(HistKey, HistValue)>> {
        let map: PerCpuHashMap<_, HistKey, HistValue> =
            PerCpuHashMap::try_from(self.ebpf.map("HISTOGRAMS").context("no HISTOGRAMS map")?)?;
        let mut out = Vec::new();
        for entry in map.iter() {
            let (key, per_cpu) = entry.context("reading the histograms")?;
            let mut sum = HistValue {
                count: 0,
                sum_ns: 0,
                max_ns: 0,
                buckets: [0; tcptrace_common::HIST_BUCKETS],
            };
            for value in per_cpu.iter() {
                sum.count += value.count;
                sum.sum_ns += value.sum_ns;
                sum.max_ns = sum.max_ns.max(value.max_ns);
                for (total, n) in sum.buckets.iter_mut().zip(value.buckets.iter()) {
                    *total += n;
                }
            }
            out.push((key, sum));
        }
        Ok(out)
    }

    /// Timewait hand-offs the probe recognised (whether or not filtered out).
    pub fn timewait_handoffs(&self) -> Result<u64> {
        self.counter(COUNTER_TIMEWAIT_HANDOFFS)
    }

    /// Events the probe wrote into the ring buffer.
    pub fn emitted(&self) -> Result<u64> {
        self.counter(COUNTER_EMITTED)
    }

    fn counter(&self, index: u32) -> Result<u64> {
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("COUNTERS").context("no COUNTERS map")?)?;
        Ok(counters.get(&index, 0)?.iter().copied().sum())
    }

    /// Kernel run-time statistics per attached program: (name, runs, ns).
    /// The kernel counts them only while BPF stats are enabled
    /// (sysctl kernel.bpf_stats_enabled=1); otherwise both are 0.
    pub fn run_stats(&self) -> Result<Vec<(&'static str, u64, u64)>> {
        self.program_fds
            .iter()
            .map(|&(name, fd)| program_info(fd).map(|i| (name, i.run_cnt, i.run_time_ns)))
            .collect()
    }
}

/// The fentry hooks for the timewait socket's birth and end, both or
/// neither (a half would leave births or ends unseen).
fn attach_fentry_lifecycle(ebpf: &mut Ebpf, btf: &AyaBtf) -> Option<Vec<(Hook, i32)>> {
    let birth = (FENTRY_BIRTH, attach(ebpf, &FENTRY_BIRTH, btf).ok()?);
    match attach(ebpf, &FENTRY_END, btf) {
        Ok(fd) => Some(vec![birth, (FENTRY_END, fd)]),
        Err(_) => {
            // Detaches it too.
            if let Ok(program) = program::<FEntry>(ebpf, birth.0.program) {
                let _ = program.unload();
            }
            None
        }
    }
}

/// Loads and attaches one program at its hook; returns its fd.
fn attach(ebpf: &mut Ebpf, hook: &Hook, btf: &AyaBtf) -> Result<i32> {
    let (name, target) = (hook.program, hook.target);
    let loading = || format!("loading the {target} hook ({})", hook.kind);
    // The program types share no trait for load and attach.
    macro_rules! load_and_attach {
        ($kind:ty) => {{
            let program: &mut $kind = program(ebpf, name)?;
            program
                .load(target, btf)
                .map_err(|e| explain_load_error(e.into()))
                .with_context(loading)?;
            program
                .attach()
                .with_context(|| format!("attaching the {target} hook"))?;
            Ok(program.fd()?.as_fd().as_raw_fd())
        }};
    }
    match hook.kind {
        "tracepoint" => {
            let program: &mut TracePoint = program(ebpf, name)?;
            program
                .load()
                .map_err(|e| explain_load_error(e.into()))
                .with_context(loading)?;
            let (category, event) = target.split_once('/').unwrap_or(("", target));
            program
                .attach(category, event)
                .with_context(|| format!("attaching the {target} hook"))?;
            Ok(program.fd()?.as_fd().as_raw_fd())
        }
        "fentry" => load_and_attach!(FEntry),
        "fexit" => load_and_attach!(FExit),
        _ => load_and_attach!(BtfTracePoint),
    }
}

/// Why the kernel refused an optional hook, in a few words rather than a
/// verifier log.
fn refusal(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    if text.contains("doesn't have 4-th argument") {
        "kfree_skb has no rx_sk argument (it arrived in Linux 6.11)".into()
    } else if text.contains("Operation not permitted") {
        // EPERM with an empty log: the kernel allows no BPF trampoline.
        "refused by the kernel (BPF trampolines not allowed here, e.g. under lockdown)".into()
    } else if let Some(reason) = verifier_reason(&text) {
        format!("refused by the verifier: {reason}")
    } else if text.contains("No such file") || text.contains("not found") {
        "not in this kernel".into()
    } else {
        text.chars().take(200).collect()
    }
}

/// What the verifier's log says went wrong: its last line before the
/// statistics it ends with.
fn verifier_reason(text: &str) -> Option<String> {
    let (_, log) = text.split_once("Verifier output:")?;
    log.lines()
        .rev()
        .map(str::trim)
        .find(|line| {
            !line.is_empty()
                && !line.starts_with("verification time")
                && !line.starts_with("stack depth")
                && !line.starts_with("processed ")
                && !line.starts_with(':')
        })
        .map(|line| line.chars().take(200).collect())
}

/// A refused mandatory hook as one line: what was loaded and the
/// verifier's reason, its whole log only with `--probe-log`.
fn shorten_load_error(err: anyhow::Error, full_log: bool) -> anyhow::Error {
    let text = format!("{err:#}");
    if full_log {
        return err;
    }
    match (
        text.split_once(". Verifier output:"),
        verifier_reason(&text),
    ) {
        (Some((head, _)), Some(reason)) => {
            anyhow!("{head}; the verifier said: {reason} (--probe-log prints its whole log)")
        }
        _ => err,
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .with_context(|| format!("the probe object has no program {name}"))?;
    Ok(program.try_into()?)
}

/// Where the state-change hook finds a socket's protocol, family, ports and
/// addresses (the fields the classic tracepoint's record copies).
fn socket_offsets(btf: &Btf, offsets: &mut KernelOffsets) -> Result<()> {
    let common = btf.member_offset("sock", "__sk_common")?;
    let field =
        |name: &str| -> Result<u32> { Ok(common + btf.member_offset("sock_common", name)?) };
    offsets.sk_protocol = btf.member_offset("sock", "sk_protocol")?;
    offsets.sk_family = field("skc_family")?;
    offsets.sk_dport = field("skc_dport")?;
    offsets.sk_daddr = field("skc_daddr")?;
    offsets.sk_v6_saddr = field("skc_v6_rcv_saddr")?;
    offsets.sk_v6_daddr = field("skc_v6_daddr")?;
    offsets.skc_state = field("skc_state")?;
    // Common to full and timewait sockets (checked to start alike).
    offsets.tw_num = field("skc_num")?;
    offsets.tw_saddr = field("skc_rcv_saddr")?;
    offsets.skc_net = field("skc_net")?;
    offsets.net_inum = btf.member_offset("net", "ns")? + btf.member_offset("ns_common", "inum")?;
    // inet_sock begins with its struct sock.
    offsets.sk_sport = btf.member_offset("inet_sock", "inet_sport")?;
    offsets.sk_saddr = btf.member_offset("inet_sock", "inet_saddr")?;
    Ok(())
}

/// Where the cgroup:cgroup_mkdir tracepoint's record holds the hierarchy's
/// id, the cgroup's id and its path, from the tracepoint's format file.
fn cgroup_mkdir_fields() -> Result<(u32, u32, u32)> {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|dir| {
            std::fs::read_to_string(format!("{dir}/events/cgroup/cgroup_mkdir/format")).ok()
        })
        .context("no cgroup:cgroup_mkdir tracepoint format")?;
    let offset = |field: &str| -> Result<u32> {
        format
            .lines()
            .find(|l| l.contains(field))
            .and_then(|l| l.split("offset:").nth(1))
            .and_then(|rest| rest.split(';').next())
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("cgroup_mkdir's format has no {field:?}"))
    };
    Ok((
        offset("int root;")?,
        offset("u64 id;")?,
        offset("char[] path;")?,
    ))
}

/// The address of tw_timer_handler and the struct offsets the timewait
/// hooks need, or why they cannot be had on this kernel.
fn timewait_hook_setup(btf: &Btf, offsets: &mut KernelOffsets) -> Result<u64> {
    let handler = kallsyms_address("tw_timer_handler")?;
    let common = btf.member_offset("inet_timewait_sock", "__tw_common")?;
    if common != btf.member_offset("sock", "__sk_common")? {
        // The probe reads family and IPv6 addresses of both kinds of
        // socket at the same offsets.
        bail!("struct sock and struct inet_timewait_sock do not start alike");
    }
    let field =
        |name: &str| -> Result<u32> { Ok(common + btf.member_offset("sock_common", name)?) };
    offsets.timer_function = btf.member_offset("timer_list", "function")?;
    offsets.timer_expires = btf.member_offset("timer_list", "expires")?;
    offsets.tw_timer = btf.member_offset("inet_timewait_sock", "tw_timer")?;
    offsets.tw_substate = btf.member_offset("inet_timewait_sock", "tw_substate")?;
    offsets.tw_dport = field("skc_dport")?;

    offsets.tw_daddr = field("skc_daddr")?;
    Ok(handler)
}

fn kallsyms_address(symbol: &str) -> Result<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    let address = text
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.next()?;
            let _kind = fields.next()?;
            (fields.next()? == symbol).then(|| u64::from_str_radix(address, 16).ok())?
        })
        .ok_or_else(|| anyhow!("{symbol} is not in /proc/kallsyms"))?;
    if address == 0 {
        return Err(anyhow!(
            "/proc/kallsyms hides addresses (kernel.kptr_restrict)"
        ));
    }
    Ok(address)
}

fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("EPERM") || text.contains("Operation not permitted") {
        err.context("the kernel refused the BPF program (root or CAP_BPF+CAP_PERFMON needed; a locked-down kernel refuses some hooks)")
    } else {
        err
    }
}

/// The subset of `struct bpf_prog_info` tcptrace reads, in its uapi layout.
#[derive(Default)]
pub struct ProgramInfo {
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
}

/// BPF_OBJ_GET_INFO_BY_FD: aya 0.14 does not expose recursion_misses.
fn program_info(fd: i32) -> Result<ProgramInfo> {
    use aya_obj::generated::bpf_prog_info;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain data; zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: attr points at a live buffer of the size it states.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_OBJ_GET_INFO_BY_FD");
    }
    Ok(ProgramInfo {
        run_time_ns: info.run_time_ns,
        run_cnt: info.run_cnt,
        recursion_misses: info.recursion_misses,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn verifier_logs_shrink_to_their_reason() {
        let text = "loading the x hook (tp_btf): the BPF_PROG_LOAD syscall returned \
                    Permission denied (os error 13). Verifier output: 0: R1=ctx()\n\
                    12: (79) r2 = *(u64 *)(r10 -432)\ninvalid read from stack R10 off=-432 size=8\n\
                    verification time 451 usec\nstack depth 424+0\nprocessed 4811 insns\n";
        assert_eq!(
            super::verifier_reason(text).as_deref(),
            Some("invalid read from stack R10 off=-432 size=8")
        );
        let short = format!(
            "{:#}",
            super::shorten_load_error(anyhow::anyhow!("{text}"), false)
        );
        assert_eq!(short.lines().count(), 1, "{short}");
        assert!(short.starts_with("loading the x hook (tp_btf)"), "{short}");
        assert!(
            short.contains("the verifier said: invalid read from stack"),
            "{short}"
        );
        assert!(!short.contains("r10 -432)"), "{short}");
    }

    #[test]
    fn probe_log_names_states() {
        assert_eq!(
            super::name_states("socket 1->2: first seen at state:1 -> state:4: old"),
            "socket 1->2: first seen at ESTABLISHED -> FIN_WAIT1: old"
        );
        assert_eq!(super::name_states("no states"), "no states");
    }
}
