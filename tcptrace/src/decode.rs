//! Turning ring-buffer records into typed values (no allocation).
//!
//! Every record starts with a `RecordHeader` (kind, version, length):
//! `Record::decode` is the one place that checks it, and a record that is
//! short, of an unknown kind or version, or of the wrong length for its
//! kind is refused as a `BadRecord`, never read as something else.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Buf;

use tcptrace_common::{
    closer, end_reason, record_kind, CgroupEvent, ConnectionEvent, RecordHeader, TransitionEvent,
    AF_INET6, CGROUP_PATH_LEN, COMM_LEN, CONN_CLOSING_KNOWN, CONN_ESTABLISHED_KNOWN,
    CONN_HANDSHAKE_KNOWN, CONN_OWNER_KNOWN, CONN_START_SEEN, CONN_TIME_WAIT_KNOWN, EVENT_AGE_KNOWN,
    EVENT_IN_OLD_KNOWN, EVENT_OWNER_KNOWN, EVENT_TIMEWAIT_CHECKED, EVENT_TIMEWAIT_HANDOFF,
    EVENT_TIMEWAIT_SOCKET, RECORD_VERSION,
};

/// One record of the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Transition(Transition),
    Connection(Connection),
}

/// Why a ring-buffer record was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("ring-buffer record of {0} bytes, shorter than its header")]
    Short(usize),
    #[error("ring-buffer record of unknown kind {0}")]
    UnknownKind(u8),
    #[error("ring-buffer record of kind {kind} in version {version}, expected {RECORD_VERSION}")]
    Version { kind: u8, version: u8 },
    #[error(
        "ring-buffer record of kind {kind}: {len} bytes, its header says {header_len}, \
         expected {expected}"
    )]
    Length {
        kind: u8,
        len: usize,
        header_len: u16,
        expected: usize,
    },
    /// A well-formed record of another kind than the one asked for.
    #[error("ring-buffer record of kind {0} where another kind was expected")]
    OtherKind(u8),
}

impl Record {
    /// Decodes one record as the probe wrote it (native endian), after
    /// checking its header.
    pub fn decode(data: &[u8]) -> Result<Self, BadRecord> {
        let mut head = data;
        if head.len() < RecordHeader::SIZE {
            return Err(BadRecord::Short(data.len()));
        }
        let kind = head.get_u8();
        let version = head.get_u8();
        let header_len = head.get_u16_ne();
        let expected = match kind {
            record_kind::TRANSITION => TransitionEvent::SIZE,
            record_kind::CONNECTION => ConnectionEvent::SIZE,
            _ => return Err(BadRecord::UnknownKind(kind)),
        };
        // Version 1 (captures from before the owner's cgroup) is version 2
        // without its last field.
        let expected = match version {
            RECORD_VERSION => expected,
            1 => expected - CGROUP_FIELD,
            _ => return Err(BadRecord::Version { kind, version }),
        };
        if data.len() != expected || header_len as usize != expected {
            return Err(BadRecord::Length {
                kind,
                len: data.len(),
                header_len,
                expected,
            });
        }
        Ok(match kind {
            record_kind::TRANSITION => Record::Transition(Transition::from_checked(data)),
            _ => Record::Connection(Connection::from_checked(data)),
        })
    }

    fn kind(&self) -> u8 {
        match self {
            Record::Transition(_) => record_kind::TRANSITION,
            Record::Connection(_) => record_kind::CONNECTION,
        }
    }
}

/// Size of the owner's cgroup, the last field of every record since
/// version 2.
const CGROUP_FIELD: usize = 8;

/// The owner's cgroup id of a record `Record::decode` accepts (0 when it has
/// none): its last 8 bytes since version 2. For the capture writer, which
/// names the cgroups of the records it writes without decoding them.
pub fn cgroup_of_raw(data: &[u8]) -> u64 {
    let owned = matches!(
        data.first(),
        Some(&(record_kind::TRANSITION | record_kind::CONNECTION))
    );
    match (owned, data.get(1), data.len().checked_sub(CGROUP_FIELD)) {
        (true, Some(&RECORD_VERSION), Some(at)) => {
            u64::from_ne_bytes(data[at..].try_into().unwrap_or_default())
        }
        _ => 0,
    }
}

/// A `CgroupEvent` (a new cgroup's id and path), if `data` is one whose
/// path fitted. Views never see these: the session and `-r` hand them to
/// `View::learn_cgroups`.
pub fn cgroup_named(data: &[u8]) -> Option<(u64, &str)> {
    if data.first() != Some(&record_kind::CGROUP) || data.len() != CgroupEvent::SIZE {
        return None;
    }
    let id = u64::from_ne_bytes(data[8..16].try_into().ok()?);
    let path_len = u32::from_ne_bytes(data[16..20].try_into().ok()?) as usize;
    let path = &data[24..];
    let end = path.iter().position(|&b| b == 0)?;
    // A path cut short is no name (a walk names it, if it still exists).
    if path_len > CGROUP_PATH_LEN || end + 1 != path_len {
        return None;
    }
    std::str::from_utf8(&path[..end]).ok().map(|p| (id, p))
}

/// Whether `data` is a record of a cgroup's name (`cgroup_named`), cut short or not.
#[inline]
pub fn is_cgroup_record(data: &[u8]) -> bool {
    data.first() == Some(&record_kind::CGROUP)
}

/// Who and where, shared by every per-socket record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub local: IpAddr,
    pub lport: u16,
    pub remote: IpAddr,
    pub rport: u16,
}

/// What the timewait detection says about a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timewait {
    /// Not a transition that can hand over to a timewait socket.
    NotApplicable,
    Handoff,
    /// FIN_WAIT*/CLOSING -> CLOSE that is a reset, timeout or abort.
    NotHandoff,
    /// A candidate, but the detection hook is not attached.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub ktime_ns: u64,
    pub skaddr: u64,
    pub in_old_ns: Option<u64>,
    pub age_ns: Option<u64>,
    /// Owner pid; `None` when the probe never saw the owner.
    pub pid: Option<u32>,
    /// Inode of the socket's network namespace.
    pub netns: u32,
    comm: [u8; COMM_LEN],
    /// The owner's cgroup v2 id; 0 when the owner or its cgroup is unknown.
    pub cgroup: u64,
    pub local: IpAddr,
    pub lport: u16,
    pub remote: IpAddr,
    pub rport: u16,
    pub old: u8,
    pub new: u8,
    pub timewait: Timewait,
    /// The transition happened inside a timewait socket.
    pub timewait_socket: bool,
    /// Why a timewait socket ended (`end_reason::*`), 0 otherwise.
    pub end: u8,
}

/// The name of an `end_reason`, for JSON and the human view.
pub fn end_name(reason: u8) -> Option<&'static str> {
    match reason {
        end_reason::EXPIRED => Some("expired"),
        end_reason::FIN_TIMEOUT => Some("fin_timeout"),
        end_reason::REUSED => Some("reused"),
        end_reason::KILLED => Some("killed"),
        _ => None,
    }
}

impl Transition {
    /// Decodes one ring-buffer record that must be a transition.
    pub fn decode(data: &[u8]) -> Result<Self, BadRecord> {
        match Record::decode(data)? {
            Record::Transition(t) => Ok(t),
            other => Err(BadRecord::OtherKind(other.kind())),
        }
    }

    /// A `TransitionEvent` whose header `Record::decode` checked.
    fn from_checked(mut data: &[u8]) -> Self {
        data.advance(RecordHeader::SIZE);
        let ktime_ns = data.get_u64_ne();
        let skaddr = data.get_u64_ne();
        let in_old_ns = data.get_u64_ne();
        let age_ns = data.get_u64_ne();
        let pid = data.get_u32_ne();
        let netns = data.get_u32_ne();
        let family = data.get_u16_ne();
        let lport = data.get_u16_ne();
        let rport = data.get_u16_ne();
        let old = data.get_u8();
        let new = data.get_u8();
        let flags = data.get_u8();
        let end = data.get_u8();
        data.advance(6);
        let mut comm = [0u8; COMM_LEN];
        data.copy_to_slice(&mut comm);
        let mut laddr = [0u8; 16];
        data.copy_to_slice(&mut laddr);
        let mut raddr = [0u8; 16];
        data.copy_to_slice(&mut raddr);
        let cgroup = if data.remaining() >= CGROUP_FIELD && flags & EVENT_OWNER_KNOWN != 0 {
            data.get_u64_ne()
        } else {
            0
        };

        let addr = |raw: [u8; 16]| address(family, raw);
        let known = |bit: u8, value: u64| (flags & bit != 0).then_some(value);
        let timewait_socket = flags & EVENT_TIMEWAIT_SOCKET != 0;
        let timewait = if timewait_socket || !crate::state::is_timewait_candidate(old, new) {
            Timewait::NotApplicable
        } else if flags & EVENT_TIMEWAIT_CHECKED == 0 {
            Timewait::Unknown
        } else if flags & EVENT_TIMEWAIT_HANDOFF != 0 {
            Timewait::Handoff
        } else {
            Timewait::NotHandoff
        };
        Transition {
            ktime_ns,
            skaddr,
            in_old_ns: known(EVENT_IN_OLD_KNOWN, in_old_ns),
            age_ns: known(EVENT_AGE_KNOWN, age_ns),
            pid: (flags & EVENT_OWNER_KNOWN != 0).then_some(pid),
            netns,
            comm,
            cgroup,
            local: addr(laddr),
            lport,
            remote: addr(raddr),
            rport,
            old,
            new,
            timewait,
            timewait_socket,
            end,
        }
    }

    /// The owner's command name (bytes up to the first NUL); empty if unknown.
    pub fn comm(&self) -> &[u8] {
        if self.pid.is_none() {
            return &[];
        }
        comm_bytes(&self.comm)
    }

    pub fn is_ipv6(&self) -> bool {
        self.local.is_ipv6()
    }

    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            local: self.local,
            lport: self.lport,
            remote: self.remote,
            rport: self.rport,
        }
    }
}

/// A decoded `ConnectionEvent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub event: ConnectionEvent,
}

impl Connection {
    /// Decodes one ring-buffer record that must be a connection.
    pub fn decode(data: &[u8]) -> Result<Self, BadRecord> {
        match Record::decode(data)? {
            Record::Connection(c) => Ok(c),
            other => Err(BadRecord::OtherKind(other.kind())),
        }
    }

    /// A `ConnectionEvent` whose header `Record::decode` checked.
    fn from_checked(data: &[u8]) -> Self {
        // A version 1 record lacks the last field (the cgroup): zero it.
        let mut full = [0u8; ConnectionEvent::SIZE];
        let n = data.len().min(ConnectionEvent::SIZE);
        full[..n].copy_from_slice(&data[..n]);
        // SAFETY: ConnectionEvent is plain integers and byte arrays: any
        // bytes are a valid value; read_unaligned copes with alignment.
        let event = unsafe { std::ptr::read_unaligned(full.as_ptr().cast::<ConnectionEvent>()) };
        Connection { event }
    }

    fn known(&self, bit: u8, value: u64) -> Option<u64> {
        (self.event.flags & bit != 0).then_some(value)
    }

    pub fn pid(&self) -> Option<u32> {
        self.known(CONN_OWNER_KNOWN, 0).map(|_| self.event.pid)
    }

    pub fn comm(&self) -> &[u8] {
        if self.pid().is_none() {
            return &[];
        }
        comm_bytes(&self.event.comm)
    }

    /// The owner's cgroup v2 id; 0 when unknown.
    pub fn cgroup(&self) -> u64 {
        self.pid().map_or(0, |_| self.event.cgroup)
    }

    pub fn endpoints(&self) -> Endpoints {
        let e = &self.event;
        Endpoints {
            local: address(e.family, e.laddr),
            lport: e.lport,
            remote: address(e.family, e.raddr),
            rport: e.rport,
        }
    }

    pub fn closer(&self) -> Option<&'static str> {
        match self.event.closer {
            closer::LOCAL => Some("local"),
            closer::REMOTE => Some("remote"),
            closer::RESET => Some("reset"),
            _ => None,
        }
    }

    pub fn start_seen(&self) -> bool {
        self.event.flags & CONN_START_SEEN != 0
    }

    pub fn handshake_ns(&self) -> Option<u64> {
        self.known(CONN_HANDSHAKE_KNOWN, self.event.handshake_ns)
    }

    pub fn established_ns(&self) -> Option<u64> {
        self.known(CONN_ESTABLISHED_KNOWN, self.event.established_ns)
    }

    pub fn closing_ns(&self) -> Option<u64> {
        self.known(CONN_CLOSING_KNOWN, self.event.closing_ns)
    }

    pub fn time_wait_ns(&self) -> Option<u64> {
        self.known(CONN_TIME_WAIT_KNOWN, self.event.time_wait_ns)
    }

    /// The whole lifetime, when its start was seen.
    pub fn lifetime_ns(&self) -> Option<u64> {
        self.known(CONN_START_SEEN, self.event.lifetime_ns)
    }
}

/// An address from the probe's 16 bytes (IPv4 in the first four).
#[inline]
pub fn address(family: u16, raw: [u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// Bytes of a comm up to the first NUL.
pub fn comm_bytes(comm: &[u8; COMM_LEN]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    &comm[..end]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tcptrace_common::{tcp_state::*, AF_INET};

    pub fn raw_event(family: u16, old: u8, new: u8, flags: u8) -> TransitionEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut laddr = [0u8; 16];
        let mut raddr = [0u8; 16];
        if family == AF_INET {
            laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        } else {
            laddr[15] = 1;
            raddr = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets();
        }
        TransitionEvent {
            header: TransitionEvent::HEADER,
            ktime_ns: 1_000_000_123,
            skaddr: 0xffff_8881_0000_1234,
            in_old_ns: 1_500_000,
            age_ns: 2_000_000_000,
            pid: 4242,
            netns: 4026531840,
            family,
            lport: 45678,
            rport: 80,
            old,
            new,
            flags,
            reason: 0,
            _pad: [0; 6],
            comm,
            laddr,
            raddr,
            cgroup: 4242,
        }
    }

    pub fn bytes_of(ev: &TransitionEvent) -> &[u8] {
        // SAFETY: TransitionEvent is repr(C) with explicit padding only.
        unsafe {
            std::slice::from_raw_parts((ev as *const TransitionEvent).cast(), TransitionEvent::SIZE)
        }
    }

    #[test]
    fn decodes_ipv4_handoff() {
        let flags = EVENT_OWNER_KNOWN
            | EVENT_IN_OLD_KNOWN
            | EVENT_AGE_KNOWN
            | EVENT_TIMEWAIT_CHECKED
            | EVENT_TIMEWAIT_HANDOFF;
        let ev = raw_event(AF_INET, FIN_WAIT2, CLOSE, flags);
        let t = Transition::decode(bytes_of(&ev)).unwrap();
        assert_eq!(t.local, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(t.remote, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!((t.lport, t.rport), (45678, 80));
        assert_eq!((t.old, t.new), (FIN_WAIT2, CLOSE));
        assert_eq!(t.pid, Some(4242));
        assert_eq!(t.comm(), b"curl");
        assert_eq!(t.in_old_ns, Some(1_500_000));
        assert_eq!(t.age_ns, Some(2_000_000_000));
        assert_eq!(t.timewait, Timewait::Handoff);
        assert_eq!(t.skaddr, 0xffff_8881_0000_1234);
    }

    #[test]
    fn unknown_fields_stay_unknown() {
        let ev = raw_event(AF_INET6, FIN_WAIT2, CLOSE, 0);
        let t = Transition::decode(bytes_of(&ev)).unwrap();
        assert!(t.is_ipv6());
        assert_eq!(t.local, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(t.pid, None);
        assert_eq!(t.comm(), b"");
        assert_eq!((t.in_old_ns, t.age_ns), (None, None));
        assert_eq!(t.timewait, Timewait::Unknown);
    }

    #[test]
    fn reset_is_not_a_handoff() {
        let ev = raw_event(AF_INET, FIN_WAIT1, CLOSE, EVENT_TIMEWAIT_CHECKED);
        let t = Transition::decode(bytes_of(&ev)).unwrap();
        assert_eq!(t.timewait, Timewait::NotHandoff);
        let ev = raw_event(AF_INET, CLOSE_WAIT, LAST_ACK, EVENT_TIMEWAIT_CHECKED);
        assert_eq!(
            Transition::decode(bytes_of(&ev)).unwrap().timewait,
            Timewait::NotApplicable
        );
    }

    #[test]
    fn timewait_socket_end() {
        let mut ev = raw_event(AF_INET, TIME_WAIT, CLOSE, EVENT_TIMEWAIT_SOCKET);
        ev.reason = end_reason::REUSED;
        let t = Transition::decode(bytes_of(&ev)).unwrap();
        assert!(t.timewait_socket);
        assert_eq!(t.timewait, Timewait::NotApplicable);
        assert_eq!(end_name(t.end), Some("reused"));
        assert_eq!(t.netns, 4026531840);
    }

    fn raw_connection() -> ConnectionEvent {
        let mut comm = [0u8; COMM_LEN];
        comm[..5].copy_from_slice(b"nginx");
        let mut laddr = [0u8; 16];
        laddr[..4].copy_from_slice(&[192, 0, 2, 1]);
        let mut raddr = [0u8; 16];
        raddr[..4].copy_from_slice(&[198, 51, 100, 7]);
        ConnectionEvent {
            header: ConnectionEvent::HEADER,
            ktime_ns: 61_000_000_000,
            handshake_ns: 120_000,
            established_ns: 5_000_000,
            closing_ns: 40_000,
            time_wait_ns: 60_000_000_000,
            lifetime_ns: 60_005_160_000,
            pid: 1234,
            netns: 4026531840,
            family: AF_INET,
            lport: 443,
            rport: 51000,
            closer: closer::LOCAL,
            flags: CONN_OWNER_KNOWN
                | CONN_START_SEEN
                | CONN_HANDSHAKE_KNOWN
                | CONN_ESTABLISHED_KNOWN
                | CONN_CLOSING_KNOWN
                | CONN_TIME_WAIT_KNOWN,
            end: end_reason::EXPIRED,
            _pad: [0; 7],
            comm,
            laddr,
            raddr,
            cgroup: 77,
        }
    }

    fn connection_bytes(ev: &ConnectionEvent) -> Vec<u8> {
        // SAFETY: ConnectionEvent is repr(C) with explicit padding only.
        unsafe {
            std::slice::from_raw_parts((ev as *const ConnectionEvent).cast(), ConnectionEvent::SIZE)
        }
        .to_vec()
    }

    #[test]
    fn transition_record_round_trips() {
        let ev = raw_event(AF_INET, ESTABLISHED, FIN_WAIT1, EVENT_OWNER_KNOWN);
        let Ok(Record::Transition(t)) = Record::decode(bytes_of(&ev)) else {
            panic!("not a transition");
        };
        assert_eq!(t, Transition::decode(bytes_of(&ev)).unwrap());
        assert_eq!(
            (t.ktime_ns, t.skaddr, t.netns),
            (ev.ktime_ns, ev.skaddr, ev.netns)
        );
        assert_eq!((t.old, t.new, t.pid), (ESTABLISHED, FIN_WAIT1, Some(4242)));
        assert_eq!((t.lport, t.rport), (45678, 80));
        assert_eq!(t.local, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn connection_record_round_trips() {
        let ev = raw_connection();
        let bytes = connection_bytes(&ev);
        let Ok(Record::Connection(c)) = Record::decode(&bytes) else {
            panic!("not a connection");
        };
        assert_eq!(c.event, ev);
        assert_eq!(c, Connection::decode(&bytes).unwrap());
        assert_eq!(c.pid(), Some(1234));
        assert_eq!(c.comm(), b"nginx");
        assert_eq!(c.closer(), Some("local"));
        assert!(c.start_seen());
        assert_eq!(c.handshake_ns(), Some(120_000));
        assert_eq!(c.time_wait_ns(), Some(60_000_000_000));
        assert_eq!(c.lifetime_ns(), Some(60_005_160_000));
        let e = c.endpoints();
        assert_eq!((e.lport, e.rport), (443, 51000));
        assert_eq!(e.remote, "198.51.100.7".parse::<IpAddr>().unwrap());
        // Unaligned in the buffer: still read whole.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(Record::decode(&shifted[1..]), Ok(Record::Connection(c)));
    }

    #[test]
    fn short_record_is_refused() {
        assert_eq!(Record::decode(&[]), Err(BadRecord::Short(0)));
        assert_eq!(
            Record::decode(&[record_kind::TRANSITION, RECORD_VERSION, 112, 0]),
            Err(BadRecord::Short(4))
        );
        let ev = raw_event(AF_INET, ESTABLISHED, FIN_WAIT1, 0);
        let bytes = bytes_of(&ev);
        assert_eq!(
            Record::decode(&bytes[..TransitionEvent::SIZE - 1]),
            Err(BadRecord::Length {
                kind: record_kind::TRANSITION,
                len: TransitionEvent::SIZE - 1,
                header_len: TransitionEvent::SIZE as u16,
                expected: TransitionEvent::SIZE,
            })
        );
    }

    #[test]
    fn unknown_kind_is_refused() {
        for kind in [0, 3, 255] {
            let mut ev = raw_event(AF_INET, ESTABLISHED, FIN_WAIT1, 0);
            ev.header.kind = kind;
            assert_eq!(
                Record::decode(bytes_of(&ev)),
                Err(BadRecord::UnknownKind(kind))
            );
        }
        // A record without a header (the layout before it had one) starts
        // with the low byte of a timestamp: refused, not misread.
        assert_eq!(
            Transition::decode(&[0u8; 10]),
            Err(BadRecord::UnknownKind(0))
        );
    }

    #[test]
    fn other_version_is_refused() {
        let mut ev = raw_connection();
        ev.header.version = RECORD_VERSION + 1;
        assert_eq!(
            Record::decode(&connection_bytes(&ev)),
            Err(BadRecord::Version {
                kind: record_kind::CONNECTION,
                version: RECORD_VERSION + 1
            })
        );
    }

    /// Captures written before the owner's cgroup (version 1) still read:
    /// the same records without their last 8 bytes.
    #[test]
    fn version_1_records_decode_without_a_cgroup() {
        let mut ev = raw_event(AF_INET, ESTABLISHED, FIN_WAIT1, EVENT_OWNER_KNOWN);
        ev.header.version = 1;
        ev.header.len = (TransitionEvent::SIZE - 8) as u16;
        let v1 = &bytes_of(&ev)[..TransitionEvent::SIZE - 8];
        let t = Transition::decode(v1).unwrap();
        assert_eq!((t.pid, t.cgroup, t.lport), (Some(4242), 0, 45678));
        assert_eq!(cgroup_of_raw(v1), 0);
        let current = raw_event(AF_INET, ESTABLISHED, FIN_WAIT1, EVENT_OWNER_KNOWN);
        assert_eq!(Transition::decode(bytes_of(&current)).unwrap().cgroup, 4242);
        assert_eq!(cgroup_of_raw(bytes_of(&current)), 4242);

        let mut conn = raw_connection();
        conn.header.version = 1;
        conn.header.len = (ConnectionEvent::SIZE - 8) as u16;
        let bytes = connection_bytes(&conn);
        let c = Connection::decode(&bytes[..ConnectionEvent::SIZE - 8]).unwrap();
        assert_eq!((c.pid(), c.cgroup(), c.event.lport), (Some(1234), 0, 443));
        assert_eq!(
            Connection::decode(&connection_bytes(&raw_connection()))
                .unwrap()
                .cgroup(),
            77
        );
    }

    #[test]
    fn cgroup_records_name_a_cgroup_unless_cut_short() {
        let mut ev = CgroupEvent {
            header: CgroupEvent::HEADER,
            id: 991,
            path_len: 6,
            _pad: 0,
            path: [0; CGROUP_PATH_LEN],
        };
        ev.path[..5].copy_from_slice(b"/a/bc");
        let bytes = |ev: &CgroupEvent| unsafe {
            std::slice::from_raw_parts((ev as *const CgroupEvent).cast::<u8>(), CgroupEvent::SIZE)
                .to_vec()
        };
        assert!(is_cgroup_record(&bytes(&ev)));
        assert_eq!(cgroup_named(&bytes(&ev)), Some((991, "/a/bc")));
        assert_eq!(cgroup_of_raw(&bytes(&ev)), 0, "no owner's cgroup in it");
        // The kernel's path was longer than the record's room.
        ev.path_len = CGROUP_PATH_LEN as u32 + 10;
        assert_eq!(cgroup_named(&bytes(&ev)), None);
        assert!(!is_cgroup_record(bytes_of(&raw_event(AF_INET, 1, 4, 0))));
    }

    #[test]
    fn wrong_length_is_refused() {
        // The header's length disagrees with the kind's.
        let mut ev = raw_event(AF_INET, ESTABLISHED, FIN_WAIT1, 0);
        ev.header.len += 8;
        assert!(matches!(
            Record::decode(bytes_of(&ev)),
            Err(BadRecord::Length { header_len, .. }) if header_len as usize == TransitionEvent::SIZE + 8
        ));
        // A connection record labelled a transition.
        let mut conn = raw_connection();
        conn.header.kind = record_kind::TRANSITION;
        assert!(matches!(
            Record::decode(&connection_bytes(&conn)),
            Err(BadRecord::Length { len, expected, .. })
                if len == ConnectionEvent::SIZE && expected == TransitionEvent::SIZE
        ));
        // Trailing bytes beyond the record.
        let mut long = connection_bytes(&raw_connection());
        long.extend_from_slice(&[0; 8]);
        assert!(matches!(
            Record::decode(&long),
            Err(BadRecord::Length { len, .. }) if len == ConnectionEvent::SIZE + 8
        ));
    }

    #[test]
    fn other_kind_is_refused_where_one_kind_is_expected() {
        let conn = connection_bytes(&raw_connection());
        assert_eq!(
            Transition::decode(&conn),
            Err(BadRecord::OtherKind(record_kind::CONNECTION))
        );
        let ev = raw_event(AF_INET, ESTABLISHED, FIN_WAIT1, 0);
        assert_eq!(
            Connection::decode(bytes_of(&ev)),
            Err(BadRecord::OtherKind(record_kind::TRANSITION))
        );
    }
}
