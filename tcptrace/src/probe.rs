//! Loading and attaching the probe, and reading what it counts.
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
    Btf as AyaBtf, Ebpf, EbpfLoader,
};
use tcptrace_common::{
    KernelOffsets, ListenerOwner, ProbeConfig, CONFIG_TIMEWAIT_HOOK, COUNTER_EMITTED,
    COUNTER_READ_FAILED, COUNTER_RING_FULL, COUNTER_SOCKET_MAP_FULL, COUNTER_TIMEWAIT_HANDOFFS,
};

use crate::btf::Btf;

static PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace-probe"));

const SET_STATE_PROGRAM: &str = "inet_sock_set_state";
const TIMER_PROGRAM: &str = "timer_start";

/// How timewait hand-offs are told apart from resets and timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimewaitDetection {
    /// The timer hook is attached: every FIN_WAIT*/CLOSING -> CLOSE is classified.
    Exact,
    /// The hook could not be attached; such transitions are shown unclassified.
    Unavailable(String),
    /// The user chose not to attach the hook (--no-timewait-hook).
    Disabled,
}

impl TimewaitDetection {
    pub fn describe(&self) -> String {
        match self {
            TimewaitDetection::Exact => "exact".into(),
            TimewaitDetection::Unavailable(why) => format!("unavailable: {why}"),
            TimewaitDetection::Disabled => "disabled (--no-timewait-hook)".into(),
        }
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
    /// Transitions lost because the probe could not read the socket.
    pub read_failures: u64,
    /// Socket records the map refused (never expected with an LRU map).
    pub socket_map_full: u64,
}

impl LossCounters {
    pub fn total(&self) -> u64 {
        self.ring_full + self.recursion_misses + self.read_failures
    }
}

/// The loaded, attached probe. Dropping it detaches everything.
pub struct Probe {
    ebpf: Ebpf,
    pub timewait: TimewaitDetection,
    program_fds: Vec<(&'static str, i32)>,
}

impl Probe {
    /// Loads the probe with `config` and attaches it. Timewait detection is
    /// set up when this kernel allows it; otherwise the reason is recorded.
    pub fn load(config: &ProbeConfig, ring_size: u32, timewait_hook: bool) -> Result<Self> {
        let mut config = *config;
        let btf = Btf::from_sys_fs()?;
        socket_offsets(&btf, &mut config.offsets)
            .context("this kernel's struct sock is not what tcptrace knows")?;
        let kernel_btf = AyaBtf::from_sys_fs().context("reading kernel BTF")?;
        let timewait = if !timewait_hook {
            TimewaitDetection::Disabled
        } else {
            match timewait_hook_setup(&btf, &mut config.offsets) {
                Ok(handler) => {
                    let mut with_hook = config;
                    with_hook.flags |= CONFIG_TIMEWAIT_HOOK;
                    with_hook.tw_timer_handler = handler;
                    match Self::load_with(
                        &with_hook,
                        ring_size,
                        &kernel_btf,
                        TimewaitDetection::Exact,
                    ) {
                        Ok(probe) => return Ok(probe),
                        // Retry without the hook: if the hook was the
                        // problem, tracing goes on with less precision,
                        // said out loud.
                        Err(err) => TimewaitDetection::Unavailable(format!("{err:#}")),
                    }
                }
                Err(err) => TimewaitDetection::Unavailable(format!("{err:#}")),
            }
        };
        Self::load_with(&config, ring_size, &kernel_btf, timewait)
    }

    fn load_with(
        config: &ProbeConfig,
        ring_size: u32,
        btf: &AyaBtf,
        timewait: TimewaitDetection,
    ) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", config, true)
            .map_max_entries("EVENTS", ring_size)
            .load(PROBE_OBJECT)
            .map_err(|e| explain_load_error(e.into()))
            .context("loading the probe")?;
        let mut program_fds = Vec::new();
        // The timer hook goes first so that no hand-off is classified before
        // it can be recognised.
        let mut hooks = vec![SET_STATE_PROGRAM];
        if config.flags & CONFIG_TIMEWAIT_HOOK != 0 {
            hooks.insert(0, TIMER_PROGRAM);
        }
        for name in hooks {
            let program: &mut BtfTracePoint = program(&mut ebpf, name)?;
            program
                .load(name, btf)
                .map_err(|e| explain_load_error(e.into()))
                .with_context(|| format!("loading the {name} hook (BTF tracepoint)"))?;
            program
                .attach()
                .with_context(|| format!("attaching the {name} hook"))?;
            program_fds.push((name, program.fd()?.as_fd().as_raw_fd()));
        }

        Ok(Probe {
            ebpf,
            timewait,
            program_fds,
        })
    }

    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .context("the probe has no EVENTS map")?;
        Ok(RingBuf::try_from(map)?)
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
        let (mut recursion_misses, mut timewait_hook_misses) = (0, 0);
        for &(name, fd) in &self.program_fds {
            let misses = program_info(fd)?.recursion_misses;
            if name == TIMER_PROGRAM {
                timewait_hook_misses += misses;
            } else {
                recursion_misses += misses;
            }
        }
        Ok(LossCounters {
            ring_full: self.counter(COUNTER_RING_FULL)?,
            recursion_misses,
            timewait_hook_misses,
            read_failures: self.counter(COUNTER_READ_FAILED)?,
            socket_map_full: self.counter(COUNTER_SOCKET_MAP_FULL)?,
        })
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
    // inet_sock begins with its struct sock.
    offsets.sk_sport = btf.member_offset("inet_sock", "inet_sport")?;
    offsets.sk_saddr = btf.member_offset("inet_sock", "inet_saddr")?;
    Ok(())
}

/// The address of tw_timer_handler and the struct offsets the timer hook
/// needs, or why they cannot be had on this kernel.
fn timewait_hook_setup(btf: &Btf, offsets: &mut KernelOffsets) -> Result<u64> {
    let handler = kallsyms_address("tw_timer_handler")?;
    let common = btf.member_offset("inet_timewait_sock", "__tw_common")?;
    offsets.timer_function = btf.member_offset("timer_list", "function")?;
    offsets.tw_timer = btf.member_offset("inet_timewait_sock", "tw_timer")?;
    offsets.tw_dport = common + btf.member_offset("sock_common", "skc_dport")?;
    offsets.tw_num = common + btf.member_offset("sock_common", "skc_num")?;
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
