//! Turning ring-buffer records into typed transitions (no allocation).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Buf;

use crate::printer::Endpoints;
use tcptrace_common::{
    end_reason, TransitionEvent, AF_INET6, COMM_LEN, EVENT_AGE_KNOWN, EVENT_IN_OLD_KNOWN,
    EVENT_OWNER_KNOWN, EVENT_TIMEWAIT_CHECKED, EVENT_TIMEWAIT_HANDOFF, EVENT_TIMEWAIT_SOCKET,
};

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

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("ring-buffer record of {0} bytes, expected {expected}", expected = TransitionEvent::SIZE)]
pub struct BadRecord(pub usize);

impl Transition {
    /// Decodes one `TransitionEvent` as the probe wrote it (native endian).
    pub fn decode(mut data: &[u8]) -> Result<Self, BadRecord> {
        if data.len() < TransitionEvent::SIZE {
            return Err(BadRecord(data.len()));
        }
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
        Ok(Transition {
            ktime_ns,
            skaddr,
            in_old_ns: known(EVENT_IN_OLD_KNOWN, in_old_ns),
            age_ns: known(EVENT_AGE_KNOWN, age_ns),
            pid: (flags & EVENT_OWNER_KNOWN != 0).then_some(pid),
            netns,
            comm,
            local: addr(laddr),
            lport,
            remote: addr(raddr),
            rport,
            old,
            new,
            timewait,
            timewait_socket,
            end,
        })
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

    #[test]
    fn short_record_is_an_error() {
        assert_eq!(Transition::decode(&[0u8; 10]), Err(BadRecord(10)));
    }
}
