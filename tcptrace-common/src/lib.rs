//! Types shared by the tcptrace probe (BPF side) and the tcptrace CLI.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the probe
//! and userspace agree on the layout byte for byte. The `user` feature adds
//! the `aya::Pod` implementations userspace needs to move these through maps
//! and load-time globals.
#![no_std]

/// Kernel TCP states (include/net/tcp_states.h), as carried by the
/// `sock:inet_sock_set_state` tracepoint.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    /// One past the highest state; sizes per-state tables.
    pub const COUNT: usize = 13;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `TransitionEvent::flags`: the owner (pid, comm) was seen in the owner's
/// own context (connect, listen, close, or inherited from the listener).
pub const EVENT_OWNER_KNOWN: u8 = 1 << 0;
/// The transition is the full socket handing the connection to a timewait
/// socket (FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE inside tcp_time_wait()).
pub const EVENT_TIMEWAIT_HANDOFF: u8 = 1 << 1;
/// The probe saw when the socket entered its previous state.
pub const EVENT_IN_OLD_KNOWN: u8 = 1 << 2;
/// The probe saw the socket being created, so its age is exact.
pub const EVENT_AGE_KNOWN: u8 = 1 << 3;
/// Timewait detection was armed for this event (the hooks it needs are
/// attached); without it EVENT_TIMEWAIT_HANDOFF is never set.
pub const EVENT_TIMEWAIT_CHECKED: u8 = 1 << 4;
/// The transition happened inside a timewait socket (the kernel's
/// `inet_timewait_sock` that holds a connection after its full socket is
/// gone): FIN_WAIT2 -> TIME_WAIT, TIME_WAIT -> CLOSE, FIN_WAIT2 -> CLOSE.
/// CLOSING/FIN_WAIT2 -> TIME_WAIT at the hand-off itself carry it too.
pub const EVENT_TIMEWAIT_SOCKET: u8 = 1 << 5;
/// In a `SocketRecord` only: the socket's LISTEN -> SYN_RECV is reported
/// at its next transition, when its remote end is known. Before Linux 6.x
/// (seen on 6.1) inet_csk_clone_lock() fires the tracepoint before it copies
/// the peer's address and port into the new socket.
pub const RECORD_SYN_RECV_DEFERRED: u8 = 1 << 6;
/// The owner (EVENT_OWNER_KNOWN) is in `--cgroup`'s cgroup or below it,
/// decided in the owner's own context (`bpf_get_current_ancestor_cgroup_id`)
/// and carried with the owner: in a `SocketRecord`, a `ListenerOwner`, and
/// in the events it passes.
pub const EVENT_OWNER_IN_CGROUP: u8 = 1 << 7;

/// `TransitionEvent::reason` / `ConnectionEvent::end`: why a timewait socket
/// ended.
pub mod end_reason {
    pub const NONE: u8 = 0;
    /// Its timer ran out: TIME_WAIT's 60 s.
    pub const EXPIRED: u8 = 1;
    /// Its timer ran out while still in FIN_WAIT2 (the peer never sent its
    /// FIN): net.ipv4.tcp_fin_timeout.
    pub const FIN_TIMEOUT: u8 = 2;
    /// Taken over early by a new connection to the same peer from the same
    /// port (net.ipv4.tcp_tw_reuse).
    pub const REUSED: u8 = 3;
    /// Removed early otherwise: an RST or a new SYN from the peer, or its
    /// network namespace going away.
    pub const KILLED: u8 = 4;
}

pub const COMM_LEN: usize = 16;

/// What a ring-buffer record is (`RecordHeader::kind`).
pub mod record_kind {
    /// A `TransitionEvent`.
    pub const TRANSITION: u8 = 1;
    /// A `ConnectionEvent`.
    pub const CONNECTION: u8 = 2;
    /// A `CgroupEvent`: a cgroup was created (its id and path).
    pub const CGROUP: u8 = 3;
}

/// Room for a cgroup's path in a `CgroupEvent` (NUL included); a longer
/// path is cut there, and `CgroupEvent::path_len` says so.
pub const CGROUP_PATH_LEN: usize = 488;

/// A cgroup v2 cgroup was created (tracepoint cgroup:cgroup_mkdir): its id
/// and path, so that a container that lives shorter than userspace's walks
/// of the hierarchy is still named, and a capture names its own cgroups.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupEvent {
    pub header: RecordHeader,
    pub id: u64,
    /// The path's length with its NUL, as the kernel has it; more than
    /// CGROUP_PATH_LEN: `path` holds only its start.
    pub path_len: u32,
    pub _pad: u32,
    /// The path in the hierarchy (`/a/b`), NUL-terminated.
    pub path: [u8; CGROUP_PATH_LEN],
}

impl CgroupEvent {
    pub const SIZE: usize = core::mem::size_of::<Self>();
    pub const HEADER: RecordHeader = RecordHeader::new(record_kind::CGROUP, Self::SIZE);
}

/// `RecordHeader::version` of the records this probe writes. Version 2
/// added the owner's cgroup at the end of both kinds; version 1 records
/// (captures written before) are still read, without it.
pub const RECORD_VERSION: u8 = 2;

/// The first field of every record in the ring buffer: the reader tells
/// the kinds apart, and checks each one's length, without knowing how the
/// probe was configured. 8 bytes, so the record's own fields keep their
/// alignment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `record_kind::*`.
    pub kind: u8,
    /// `RECORD_VERSION`.
    pub version: u8,
    /// Size of the whole record, this header included.
    pub len: u16,
    pub _pad: u32,
}

impl RecordHeader {
    pub const SIZE: usize = core::mem::size_of::<Self>();

    pub const fn new(kind: u8, len: usize) -> Self {
        RecordHeader {
            kind,
            version: RECORD_VERSION,
            len: len as u16,
            _pad: 0,
        }
    }
}

/// One TCP state transition, as written into the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionEvent {
    /// `TransitionEvent::HEADER`.
    pub header: RecordHeader,
    /// CLOCK_MONOTONIC time of the transition (bpf_ktime_get_ns).
    pub ktime_ns: u64,
    /// Kernel address of the `struct sock`; identifies the socket while it lives.
    pub skaddr: u64,
    /// Time spent in `old`; valid when EVENT_IN_OLD_KNOWN is set.
    pub in_old_ns: u64,
    /// Time since the socket was created; valid when EVENT_AGE_KNOWN is set.
    pub age_ns: u64,
    /// Owner's process id (tgid); valid when EVENT_OWNER_KNOWN is set.
    pub pid: u32,
    /// Inode number of the socket's network namespace (as in /proc/PID/ns/net).
    pub netns: u32,
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub old: u8,
    pub new: u8,
    pub flags: u8,
    /// `end_reason::*` for the end of a timewait socket, else 0.
    pub reason: u8,
    pub _pad: [u8; 6],
    pub comm: [u8; COMM_LEN],
    /// Local address: 4 bytes used for IPv4, 16 for IPv6 (network order).
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// The owner's cgroup v2 id (the cgroup directory's inode); valid when
    /// EVENT_OWNER_KNOWN is set, 0 if the kernel gave none.
    pub cgroup: u64,
}

impl TransitionEvent {
    pub const SIZE: usize = core::mem::size_of::<Self>();
    pub const HEADER: RecordHeader = RecordHeader::new(record_kind::TRANSITION, Self::SIZE);
}

/// Per-connection state the probe keeps between transitions: in `SOCKETS`
/// for a full socket, then in `TIMEWAITS` for its timewait socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketRecord {
    pub first_seen_ns: u64,
    pub state_since_ns: u64,
    /// When the connection became ESTABLISHED (0: not seen).
    pub established_at_ns: u64,
    /// When it left ESTABLISHED (0: not seen).
    pub closing_at_ns: u64,
    /// When it entered TIME_WAIT (0: not yet, or never).
    pub time_wait_at_ns: u64,
    pub pid: u32,
    /// EVENT_OWNER_KNOWN / EVENT_AGE_KNOWN / EVENT_OWNER_IN_CGROUP bits.
    pub flags: u8,
    /// `closer::*`.
    pub closer: u8,
    /// The state the connection is in (for a timewait socket: its sub-state).
    pub state: u8,
    /// 1: a timewait socket born in TIME_WAIT whose entry the hand-off has
    /// yet to report (with what the full socket knew).
    pub entry_pending: u8,
    pub comm: [u8; COMM_LEN],
    /// The owner's cgroup v2 id (with the owner: EVENT_OWNER_KNOWN).
    pub cgroup: u64,
}

impl SocketRecord {
    /// A record first seen at `now` in `state`, nothing else known yet.
    pub const fn new(now: u64, state: u8, closer: u8) -> Self {
        SocketRecord {
            first_seen_ns: now,
            state_since_ns: now,
            established_at_ns: 0,
            closing_at_ns: 0,
            time_wait_at_ns: 0,
            pid: 0,
            flags: 0,
            closer,
            state,
            entry_pending: 0,
            comm: [0; COMM_LEN],
            cgroup: 0,
        }
    }
}

/// A timewait timer armed on a CPU longer ago than this did not come from
/// the hand-off being reported there. tcp_time_wait() arms it and closes
/// the full socket in one go, microseconds apart on hardware; the margin is
/// for virtual CPUs, which the host may stop in between (seen under qemu's
/// emulation, where 1 ms missed hand-offs, and once in a CI run 20 ms did).
/// A false match would need the same ports on the same CPU within the
/// window, so a wide one costs nothing but a later count of the hand-offs
/// the kernel skipped.
pub const HANDOFF_WINDOW_NS: u64 = 100_000_000;

/// Which side closed a connection first.
pub mod closer {
    pub const UNKNOWN: u8 = 0;
    /// This end sent the first FIN (ESTABLISHED -> FIN_WAIT1).
    pub const LOCAL: u8 = 1;
    /// The peer's FIN came first (ESTABLISHED -> CLOSE_WAIT).
    pub const REMOTE: u8 = 2;
    /// It ended without a FIN exchange (RST, abort, failed handshake).
    pub const RESET: u8 = 3;
}

/// `ConnectionEvent::flags`: which of its durations are known.
pub const CONN_OWNER_KNOWN: u8 = 1 << 0;
/// The probe saw the connection start: lifetime and handshake are exact.
pub const CONN_START_SEEN: u8 = 1 << 1;
pub const CONN_HANDSHAKE_KNOWN: u8 = 1 << 2;
pub const CONN_ESTABLISHED_KNOWN: u8 = 1 << 3;
pub const CONN_CLOSING_KNOWN: u8 = 1 << 4;
pub const CONN_TIME_WAIT_KNOWN: u8 = 1 << 5;

/// One finished connection (one end of it), for `tcptrace life`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// `ConnectionEvent::HEADER`.
    pub header: RecordHeader,
    /// When the connection ended (its last socket closed).
    pub ktime_ns: u64,
    pub handshake_ns: u64,
    pub established_ns: u64,
    /// FIN_WAIT1/FIN_WAIT2/CLOSING, or CLOSE_WAIT/LAST_ACK.
    pub closing_ns: u64,
    pub time_wait_ns: u64,
    /// Exact when CONN_START_SEEN; otherwise the time since first seen.
    pub lifetime_ns: u64,
    pub pid: u32,
    pub netns: u32,
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub closer: u8,
    pub flags: u8,
    /// `end_reason::*` when the connection ended in a timewait socket.
    pub end: u8,
    pub _pad: [u8; 7],
    pub comm: [u8; COMM_LEN],
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// The owner's cgroup v2 id (with CONN_OWNER_KNOWN).
    pub cgroup: u64,
}

impl ConnectionEvent {
    pub const SIZE: usize = core::mem::size_of::<Self>();
    pub const HEADER: RecordHeader = RecordHeader::new(record_kind::CONNECTION, Self::SIZE);
}

/// What a histogram measures (`HistKey::metric`).
pub mod metric {
    pub const LIFETIME: u8 = 0;
    pub const HANDSHAKE: u8 = 1;
    pub const ESTABLISHED: u8 = 2;
    pub const CLOSE_WAIT: u8 = 3;
    pub const FIN_WAIT2: u8 = 4;
    pub const LAST_ACK: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const COUNT: usize = 7;

    /// What the time spent in `state` counts towards, if anything: the
    /// probe's histograms, and `hist -r` rebuilding them from records.
    #[inline(always)]
    pub fn of_dwell_in(state: u8) -> Option<u8> {
        use super::tcp_state as tcp;
        match state {
            tcp::TIME_WAIT => Some(TIME_WAIT),
            tcp::SYN_SENT | tcp::SYN_RECV => Some(HANDSHAKE),
            tcp::ESTABLISHED => Some(ESTABLISHED),
            tcp::CLOSE_WAIT => Some(CLOSE_WAIT),
            tcp::FIN_WAIT2 => Some(FIN_WAIT2),
            tcp::LAST_ACK => Some(LAST_ACK),
            _ => None,
        }
    }
}

/// How histograms are split (`ProbeConfig::hist_by`).
pub mod hist_by {
    pub const NONE: u32 = 0;
    pub const LPORT: u32 = 1;
    pub const RPORT: u32 = 2;
    pub const RADDR: u32 = 3;
    pub const COMM: u32 = 4;
    pub const PID: u32 = 5;
    /// The owner's cgroup id (`--by cgroup`, and `--by container`, which
    /// userspace folds from the cgroups).
    pub const CGROUP: u32 = 6;
}

/// Log2 buckets: bucket 0 holds [0, 2) ns, bucket i >= 1 holds [2^i, 2^(i+1)).
pub const HIST_BUCKETS: usize = 64;

/// Key of one histogram: a metric and the `--by` value it belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HistKey {
    pub metric: u8,
    /// For RADDR keys: AF_INET or AF_INET6 as a byte (2 / 10).
    pub family: u8,
    /// 1: the per-metric overflow histogram used once the map is full.
    pub other: u8,
    pub _pad: [u8; 5],
    /// Port (u16, native endian), pid (u32), address or comm bytes.
    pub value: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HistValue {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

/// Owner of a listening socket, keyed by local port, so that the children a
/// listener accepts (created in softirq context) inherit a real owner.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenerOwner {
    pub pid: u32,
    /// EVENT_OWNER_IN_CGROUP, or 0.
    pub flags: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; COMM_LEN],
    /// The owner's cgroup v2 id.
    pub cgroup: u64,
}

/// Config flags.
pub const CONFIG_IPV4: u32 = 1 << 0;
pub const CONFIG_IPV6: u32 = 1 << 1;
pub const CONFIG_LPORT_FILTER: u32 = 1 << 2;
pub const CONFIG_RPORT_FILTER: u32 = 1 << 3;
pub const CONFIG_PID_FILTER: u32 = 1 << 4;
/// Emit FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE only when it is a timewait
/// hand-off; with it clear the transition mask decides.
pub const CONFIG_HANDOFF_ONLY: u32 = 1 << 5;
/// Do not emit timewait hand-offs themselves (the default view shows the
/// true TIME_WAIT entry instead). Together with CONFIG_HANDOFF_ONLY this
/// hides every FIN_WAIT*/CLOSING -> CLOSE the hooks could classify, and
/// shows them, unclassified, when the hooks are missing.
pub const CONFIG_HIDE_HANDOFFS: u32 = 1 << 12;
/// `--netns`: only sockets of the network namespace `ProbeConfig::netns`.
pub const CONFIG_NETNS_FILTER: u32 = 1 << 13;
/// `--cgroup`: only sockets whose owner is in cgroup `ProbeConfig::cgroup`
/// (at level `cgroup_level` of the v2 hierarchy) or below it.
pub const CONFIG_CGROUP_FILTER: u32 = 1 << 14;
/// The timer hooks that follow timewait sockets are attached.
pub const CONFIG_TIMEWAIT_HOOK: u32 = 1 << 6;
/// `--port`: pass when the local port is in `lports` OR the remote port is
/// in `rports` (both hold the same list).
pub const CONFIG_PORT_EITHER: u32 = 1 << 7;
/// Write each transition that passes the filters to the ring (tail view).
pub const CONFIG_EMIT_TRANSITIONS: u32 = 1 << 8;
/// Write one `ConnectionEvent` per finished connection (`life`).
pub const CONFIG_EMIT_CONNECTIONS: u32 = 1 << 9;
/// Aggregate durations into the `HISTOGRAMS` map (`hist`).
pub const CONFIG_HISTOGRAMS: u32 = 1 << 10;
/// Report what happens inside timewait sockets (true TIME_WAIT entry and
/// end); needs CONFIG_TIMEWAIT_HOOK.
pub const CONFIG_TIMEWAIT_EVENTS: u32 = 1 << 11;

/// Kernel struct offsets the probe needs, resolved from BTF at start-up
/// (Rust BPF programs get no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    /// `struct timer_list`.function
    pub timer_function: u32,
    /// `struct inet_timewait_sock`.tw_timer
    pub tw_timer: u32,
    /// `struct timer_list`.expires (jiffies)
    pub timer_expires: u32,
    /// `struct inet_timewait_sock`: remote port (network order), and local
    /// port (sock_common.skc_num, read through full sockets too)
    pub tw_dport: u32,
    pub tw_num: u32,
    /// `struct inet_timewait_sock`.tw_substate (u8)
    pub tw_substate: u32,
    /// sock_common's skc_rcv_saddr (full and timewait sockets) and the
    /// timewait socket's skc_daddr (IPv4)
    pub tw_saddr: u32,
    pub tw_daddr: u32,
    /// `struct sock_common` (at the start of sock and timewait sock alike):
    /// skc_state (u8) and skc_net (struct net *)
    pub skc_state: u32,
    pub skc_net: u32,
    /// `struct net`.ns.inum
    pub net_inum: u32,
    /// `struct sock`.sk_protocol (u16)
    pub sk_protocol: u32,
    /// `struct sock`: skc_family (u16)
    pub sk_family: u32,
    /// `struct inet_sock`.inet_sport and `struct sock` skc_dport (network order)
    pub sk_sport: u32,
    pub sk_dport: u32,
    /// `struct inet_sock`.inet_saddr and `struct sock` skc_daddr (IPv4)
    pub sk_saddr: u32,
    pub sk_daddr: u32,
    /// `struct sock` skc_v6_rcv_saddr and skc_v6_daddr (IPv6)
    pub sk_v6_saddr: u32,
    pub sk_v6_daddr: u32,
    /// Fields of the cgroup:cgroup_mkdir tracepoint's record (from its
    /// format file): root (the hierarchy's id, 0 for cgroup v2), id, and
    /// path (a __data_loc: offset in the low 16 bits, length above).
    pub mkdir_root: u32,
    pub mkdir_id: u32,
    pub mkdir_path: u32,
}

/// Load-time configuration of the probe (a read-only global).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProbeConfig {
    pub flags: u32,
    pub pid: u32,
    /// Address of tw_timer_handler(), to recognise timewait timers.
    pub tw_timer_handler: u64,
    /// `hist_by::*`.
    pub hist_by: u32,
    /// With CONFIG_NETNS_FILTER: the inode of the only network namespace
    /// to report.
    pub netns: u32,
    /// Wake the reader when this long has passed since the last wake-up...
    pub wake_interval_ns: u64,
    /// ...or when this many bytes wait in the ring; otherwise submit
    /// without a wake-up (the reader is woken soon anyway).
    pub wake_bytes: u64,
    /// With CONFIG_CGROUP_FILTER: the cgroup v2 id, and its level (the
    /// root is 0), of the only subtree to report.
    pub cgroup: u64,
    pub cgroup_level: u32,
    pub _pad: u32,
    pub offsets: KernelOffsets,
    /// Bit `new` of `transitions[old]` set: report old -> new.
    pub transitions: [u16; 16],
    /// Bitmaps of accepted local / remote ports.
    pub lports: [u64; 1024],
    pub rports: [u64; 1024],
}

impl ProbeConfig {
    pub const fn empty() -> Self {
        Self {
            flags: 0,
            pid: 0,
            tw_timer_handler: 0,
            hist_by: 0,
            netns: 0,
            wake_interval_ns: 0,
            wake_bytes: 0,
            cgroup: 0,
            cgroup_level: 0,
            _pad: 0,
            offsets: KernelOffsets {
                timer_function: 0,
                tw_timer: 0,
                timer_expires: 0,
                tw_dport: 0,
                tw_num: 0,
                tw_substate: 0,
                tw_saddr: 0,
                tw_daddr: 0,
                skc_state: 0,
                skc_net: 0,
                net_inum: 0,
                sk_protocol: 0,
                sk_family: 0,
                sk_sport: 0,
                sk_dport: 0,
                sk_saddr: 0,
                sk_daddr: 0,
                sk_v6_saddr: 0,
                sk_v6_daddr: 0,
                mkdir_root: 0,
                mkdir_id: 0,
                mkdir_path: 0,
            },
            transitions: [0; 16],
            lports: [0; 1024],
            rports: [0; 1024],
        }
    }

    pub fn wants(&self, old: u8, new: u8) -> bool {
        match self.transitions.get(old as usize) {
            Some(mask) => new < 16 && mask & (1 << new) != 0,
            None => false,
        }
    }

    pub fn allow(&mut self, old: u8, new: u8) {
        if let Some(mask) = self.transitions.get_mut(old as usize) {
            *mask |= 1 << new;
        }
    }
}

/// Whether `port` is set in a port bitmap.
#[inline(always)]
pub fn port_in(bitmap: &[u64; 1024], port: u16) -> bool {
    let word = bitmap[(port >> 6) as usize];
    word & (1u64 << (port & 63)) != 0
}

pub fn port_insert(bitmap: &mut [u64; 1024], port: u16) {
    bitmap[(port >> 6) as usize] |= 1u64 << (port & 63);
}

/// Indexes of the per-CPU counters array.
pub const COUNTER_RING_FULL: u32 = 0;
/// Socket records that could not be stored (map full even with LRU).
pub const COUNTER_SOCKET_MAP_FULL: u32 = 1;
/// Timewait hand-offs recognised (for the summary).
pub const COUNTER_TIMEWAIT_HANDOFFS: u32 = 2;
/// Events written to the ring: what userspace must end up reading.
pub const COUNTER_EMITTED: u32 = 3;
/// Runs of any program that lost their work because a read of a kernel
/// object failed (a transition, or a timewait socket's birth, FIN or end).
pub const COUNTER_READ_FAILED: u32 = 4;
/// Timewait sockets whose record could not be stored (map full even with LRU).
pub const COUNTER_TIMEWAIT_MAP_FULL: u32 = 5;
/// Histogram keys that did not fit the map and went to "other".
pub const COUNTER_HIST_OVERFLOW: u32 = 6;
/// Connections written to the ring (`life`).
pub const COUNTER_CONNECTIONS: u32 = 7;
/// Timewait sockets whose hand-off the state-change program never ran for
/// (the kernel skipped it: a recursion miss, or rarely without counting).
pub const COUNTER_HANDOFFS_UNSEEN: u32 = 8;
/// TIME_WAIT entries lost with such a hand-off (born in TIME_WAIT, they
/// are reported by the hand-off).
pub const COUNTER_TIMEWAIT_ENTRIES_LOST: u32 = 9;
/// Records added to SOCKETS and TIMEWAITS (new keys) and removed from them:
/// with the entries left, userspace tells how many the LRU maps evicted.
pub const COUNTER_RECORDS_ADDED: u32 = 10;
pub const COUNTER_RECORDS_REMOVED: u32 = 11;
pub const COUNTER_COUNT: u32 = 16;

/// A timewait socket born on this CPU whose full socket's hand-off
/// (-> CLOSE, microseconds later on the same CPU) is still to come.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArmedTimewait {
    pub ktime_ns: u64,
    /// Address of the new `inet_timewait_sock`.
    pub tw: u64,
    pub lport: u16,
    /// Remote port in host order.
    pub rport: u16,
    /// Its sub-state: FIN_WAIT2 (peer's FIN still to come) or TIME_WAIT.
    pub substate: u8,
    pub _pad: [u8; 3],
}

/// Births awaiting their hand-off on one CPU. More than one: tcp_time_wait()
/// re-enables softirqs between the birth and the hand-off, and a softirq
/// run there may close another connection into TIME_WAIT on this CPU,
/// nested between the first one's birth and hand-off.
pub const ARMED_SLOTS: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArmedTimewaits {
    pub slots: [ArmedTimewait; ARMED_SLOTS],
}

/// A timewait timer cancelled before its expiry on this CPU, waiting to be
/// told apart from a re-arm (mod_timer() cancels, then starts the timer
/// again, with interrupts off: if the very next timer event on this CPU is
/// not that start, the socket is gone).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingCancel {
    /// 0: nothing pending.
    pub tw: u64,
    pub timer: u64,
    pub ktime_ns: u64,
    /// `end_reason::REUSED` or `KILLED`.
    pub reason: u8,
    /// Sub-state when it was cancelled.
    pub substate: u8,
    pub _pad: [u8; 6],
    /// Read at the cancel: the socket may be freed by the time it is told
    /// apart from a re-arm.
    pub endpoints: Endpoints,
}

/// Where a connection runs: namespace, family, ports and addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Endpoints {
    pub netns: u32,
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

impl Endpoints {
    pub const EMPTY: Endpoints = Endpoints {
        netns: 0,
        family: 0,
        lport: 0,
        rport: 0,
        _pad: 0,
        laddr: [0; 16],
        raddr: [0; 16],
    };
}

/// The last connect() on this CPU (per-CPU slot), to recognise a timewait
/// socket taken over by it (tcp_tw_reuse).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecentConnect {
    pub ktime_ns: u64,
    pub pid_tgid: u64,
    /// Remote port (host order).
    pub rport: u16,
    pub _pad: [u8; 6],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for RecordHeader {}
    unsafe impl aya::Pod for TransitionEvent {}
    unsafe impl aya::Pod for SocketRecord {}
    unsafe impl aya::Pod for ListenerOwner {}
    unsafe impl aya::Pod for ProbeConfig {}
    unsafe impl aya::Pod for ArmedTimewait {}
    unsafe impl aya::Pod for ArmedTimewaits {}
    unsafe impl aya::Pod for ConnectionEvent {}
    unsafe impl aya::Pod for HistKey {}
    unsafe impl aya::Pod for HistValue {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(RecordHeader::SIZE, 8);
        assert_eq!(TransitionEvent::SIZE, 120);
        assert_eq!(ConnectionEvent::SIZE, 136);
        // The header comes first, and says how long the whole record is.
        assert_eq!(core::mem::offset_of!(TransitionEvent, header), 0);
        assert_eq!(core::mem::offset_of!(ConnectionEvent, header), 0);
        assert_eq!(TransitionEvent::HEADER.len as usize, TransitionEvent::SIZE);
        assert_eq!(ConnectionEvent::HEADER.len as usize, ConnectionEvent::SIZE);
        assert_eq!(core::mem::size_of::<SocketRecord>(), 72);
        assert_eq!(core::mem::size_of::<ListenerOwner>(), 32);
        assert_eq!(core::mem::size_of::<HistKey>(), 24);
        assert_eq!(core::mem::size_of::<HistValue>(), 24 + 8 * HIST_BUCKETS);
        assert_eq!(core::mem::size_of::<KernelOffsets>(), 4 * 22);
        assert_eq!(CgroupEvent::SIZE, 512);
        assert_eq!(
            core::mem::size_of::<ProbeConfig>(),
            4 + 4 + 8 + 8 + 16 + 16 + 88 + 32 + 8192 * 2
        );
    }

    #[test]
    fn transition_mask_round_trips() {
        let mut c = ProbeConfig::empty();
        c.allow(tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK);
        assert!(c.wants(tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK));
        assert!(!c.wants(tcp_state::LAST_ACK, tcp_state::CLOSE));
        assert!(!c.wants(200, 1));
    }

    #[test]
    fn port_bitmap() {
        let mut b = [0u64; 1024];
        port_insert(&mut b, 0);
        port_insert(&mut b, 65535);
        port_insert(&mut b, 8080);
        assert!(port_in(&b, 0) && port_in(&b, 65535) && port_in(&b, 8080));
        assert!(!port_in(&b, 8081));
    }
}
#[cfg(test)]
mod dwell_tests {
    /// Each state's metric: the two namespaces share names, not values.
    #[test]
    fn every_state_counts_towards_its_metric() {
        use super::{metric, tcp_state as tcp};
        for (state, expected) in [
            (tcp::TIME_WAIT, Some(metric::TIME_WAIT)),
            (tcp::SYN_SENT, Some(metric::HANDSHAKE)),
            (tcp::SYN_RECV, Some(metric::HANDSHAKE)),
            (tcp::ESTABLISHED, Some(metric::ESTABLISHED)),
            (tcp::CLOSE_WAIT, Some(metric::CLOSE_WAIT)),
            (tcp::FIN_WAIT2, Some(metric::FIN_WAIT2)),
            (tcp::LAST_ACK, Some(metric::LAST_ACK)),
            (tcp::FIN_WAIT1, None),
            (tcp::CLOSE, None),
            (tcp::LISTEN, None),
            (tcp::CLOSING, None),
        ] {
            assert_eq!(metric::of_dwell_in(state), expected, "state {state}");
        }
    }
}
