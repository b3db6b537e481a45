//! The maps the programs share with each other and with userspace, and the
//! per-CPU counters.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tcptrace_common::{
    ArmedTimewaits, HistKey, HistValue, ListenerOwner, PendingCancel, RecentConnect, SocketRecord,
    COUNTER_COUNT,
};

/// Sized by userspace (`--ring-size`) before load.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// One record per live full socket, keyed by its kernel address; deleted at
/// the socket's final CLOSE because the address is soon reused. LRU so that
/// a full map evicts the oldest record instead of refusing new sockets.
#[map]
pub static SOCKETS: LruHashMap<u64, SocketRecord> = LruHashMap::with_max_entries(131_072, 0);

/// Each CPU's scratch record for a socket seen for the first time (map
/// memory: the stack is too small to hold it beside the rest).
#[map]
pub static NEW_RECORD: PerCpuArray<SocketRecord> = PerCpuArray::with_max_entries(1, 0);

/// The same records, moved over at the hand-off, for connections living in
/// a timewait socket (keyed by its address). LRU for the same reason.
#[map]
pub static TIMEWAITS: LruHashMap<u64, SocketRecord> = LruHashMap::with_max_entries(131_072, 0);

/// Owner of each listening port (filled at listen() and by userspace at
/// start-up for listeners that already existed).
#[map]
pub static LISTENERS: HashMap<u16, ListenerOwner> = HashMap::with_max_entries(4096, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// ktime of the last forced wake-up of the reader (one slot, all CPUs).
#[map]
pub static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// Each CPU's timewait births waiting for their hand-off (see
/// `timewait::timewait_born`).
#[map]
pub static ARMED_TIMEWAIT: PerCpuArray<ArmedTimewaits> = PerCpuArray::with_max_entries(1, 0);

/// ktime at which userspace finished attaching the state program (0 until
/// then). The birth hooks are attached first, so a birth armed before this
/// had its hand-off before the probe could see it: that is a connection
/// that predates tracing, not a loss.
#[map]
pub static STATE_ATTACHED_AT: Array<u64> = Array::with_max_entries(1, 0);

#[map]
pub static PENDING_CANCEL: PerCpuArray<PendingCancel> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static RECENT_CONNECT: PerCpuArray<RecentConnect> = PerCpuArray::with_max_entries(1, 0);

/// Duration histograms, per metric and `--by` key; per CPU so that no
/// update needs an atomic. Sized by userspace; once full, new keys go to
/// the metric's "other" histogram.
#[map]
pub static HISTOGRAMS: PerCpuHashMap<HistKey, HistValue> = PerCpuHashMap::with_max_entries(1024, 0);

/// A zeroed histogram to insert from (too big for the BPF stack).
#[map]
pub static HIST_ZERO: PerCpuArray<HistValue> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(counter) = COUNTERS.get_ptr_mut(index) {
        unsafe { *counter += 1 };
    }
}
