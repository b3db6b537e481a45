//! Every TCP socket right now, kept up to date from the event stream: the
//! table behind `stuck`, `census` and `doctor`.
//!
//! At start-up the kernel's own socket table is walked (`/proc/PID/net/tcp`
//! and `tcp6`, one process per network namespace: the kernel's
//! tcp4_seq_show/tcp6_seq_show list full sockets, request sockets and
//! timewait sockets), owners are found from socket inodes in `/proc/*/fd`
//! (as `ss -p` does), and from then on every transition the probe reports
//! moves, adds or removes a socket.
//!
//! A connection is keyed by its namespace and 4-tuple, which is unique in a
//! namespace and stays the same when the kernel hands the connection from
//! its full socket to a timewait socket. Listeners can share a tuple
//! (SO_REUSEPORT), so they are kept as a list per tuple. A connecting socket
//! has no local port yet at CLOSE -> SYN_SENT: it is keyed by its kernel
//! address until it gets one.
use std::{collections::HashMap, net::IpAddr};

use tcptrace_common::{tcp_state::*, COMM_LEN};

use crate::decode::{comm_bytes, Timewait, Transition};

/// Most sockets kept; more are counted in `SocketTable::dropped`.
pub const DEFAULT_MAX_SOCKETS: usize = 1 << 20;

/// One end of a connection, in one network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    pub netns: u32,
    pub local: IpAddr,
    pub lport: u16,
    pub remote: IpAddr,
    pub rport: u16,
}

impl Tuple {
    pub fn of(t: &Transition) -> Tuple {
        Tuple {
            netns: t.netns,
            local: t.local,
            lport: t.lport,
            remote: t.remote,
            rport: t.rport,
        }
    }
}

/// Who holds (or last held) a socket open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
    /// Its cgroup v2 id (0: unknown).
    pub cgroup: u64,
}

impl Owner {
    pub fn of(t: &Transition) -> Option<Owner> {
        let pid = t.pid?;
        let mut comm = [0u8; COMM_LEN];
        let bytes = t.comm();
        comm[..bytes.len()].copy_from_slice(bytes);
        Some(Owner {
            pid,
            comm,
            cgroup: t.cgroup,
        })
    }

    pub fn comm_str(&self) -> String {
        String::from_utf8_lossy(comm_bytes(&self.comm)).into_owned()
    }
}

/// What is known of one socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// A TCP state; for a timewait socket its sub-state (FIN_WAIT2 or TIME_WAIT).
    pub state: u8,
    /// Held by a timewait socket: the application has closed it.
    pub timewait: bool,
    /// When it entered `state` (CLOSE_MONOTONIC); `None` when it was found
    /// by the start-up walk and no event has moved it since.
    pub since_ns: Option<u64>,
    pub owner: Option<Owner>,
}

/// One socket found by walking the kernel's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Walked {
    pub tuple: Tuple,
    pub state: u8,
    pub timewait: bool,
    /// Socket inode (0 for timewait and request sockets).
    pub inode: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListenerId {
    /// Seen by an event: the kernel address of the socket.
    Sock(u64),
    /// Found by the walk, not yet matched to an event.
    Walked,
}

#[derive(Clone, Copy, Debug)]
struct Listener {
    id: ListenerId,
    owner: Option<Owner>,
}

/// Which network namespaces a view covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One namespace (tcptrace's own by default, like ss and netstat).
    Netns(u32),
    All,
}

impl Scope {
    pub fn covers(self, netns: u32) -> bool {
        match self {
            Scope::Netns(n) => n == netns,
            Scope::All => true,
        }
    }
}

pub struct SocketTable {
    scope: Scope,
    max: usize,
    conns: HashMap<Tuple, Entry>,
    listeners: HashMap<Tuple, Vec<Listener>>,
    /// Connecting sockets without a local port yet, by kernel address.
    connecting: HashMap<u64, (Tuple, Entry)>,
    /// When the start-up walk began and ended (CLOCK_MONOTONIC).
    walk_start_ns: u64,
    walk_end_ns: u64,
    /// Sockets not kept because the table was full.
    pub dropped: u64,
}

impl SocketTable {
    pub fn new(scope: Scope, max: usize) -> Self {
        SocketTable {
            scope,
            max,
            conns: HashMap::new(),
            listeners: HashMap::new(),
            connecting: HashMap::new(),
            walk_start_ns: 0,
            walk_end_ns: 0,
            dropped: 0,
        }
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// When the start-up walk began: the lower bound of the entry time of
    /// every socket it found.
    pub fn walk_start_ns(&self) -> u64 {
        self.walk_start_ns
    }

    pub fn len(&self) -> usize {
        self.conns.len()
            + self.connecting.len()
            + self.listeners.values().map(Vec::len).sum::<usize>()
    }

    /// Adds what the start-up walk found. Events already in the ring are
    /// applied afterwards: they are as new as the walk or newer, except for
    /// listeners, which are matched rather than counted twice.
    pub fn seed(
        &mut self,
        walked: &[Walked],
        owners: &HashMap<u64, Owner>,
        start_ns: u64,
        end_ns: u64,
    ) {
        self.walk_start_ns = start_ns;
        self.walk_end_ns = end_ns;
        let scope = self.scope;
        for w in walked.iter().filter(|w| scope.covers(w.tuple.netns)) {
            let owner = (w.inode != 0)
                .then(|| owners.get(&w.inode).copied())
                .flatten();
            if w.state == LISTEN {
                self.add_listener(
                    w.tuple,
                    Listener {
                        id: ListenerId::Walked,
                        owner,
                    },
                );
                continue;
            }
            self.insert(
                w.tuple,
                Entry {
                    state: w.state,
                    timewait: w.timewait,
                    since_ns: None,
                    owner,
                },
            );
        }
    }

    fn insert(&mut self, tuple: Tuple, entry: Entry) {
        if !self.conns.contains_key(&tuple) && self.len() >= self.max {
            self.dropped += 1;
            return;
        }
        self.conns.insert(tuple, entry);
    }

    fn add_listener(&mut self, tuple: Tuple, listener: Listener) {
        if self.len() >= self.max {
            self.dropped += 1;
            return;
        }
        self.listeners.entry(tuple).or_default().push(listener);
    }

    /// Follows one transition.
    pub fn apply(&mut self, t: &Transition) {
        if !self.scope.covers(t.netns) {
            return;
        }
        let tuple = Tuple::of(t);
        let owner = Owner::of(t);
        if t.timewait_socket {
            match t.new {
                CLOSE => {
                    if self.conns.get(&tuple).is_some_and(|e| e.timewait) {
                        self.conns.remove(&tuple);
                    }
                }
                new => {
                    let previous = self.conns.get(&tuple).copied();
                    self.insert(
                        tuple,
                        Entry {
                            state: new,
                            timewait: true,
                            since_ns: Some(t.ktime_ns),
                            owner: owner.or(previous.and_then(|e| e.owner)),
                        },
                    );
                }
            }
            return;
        }

        // A full socket.
        let connecting = self.connecting.remove(&t.skaddr);
        if (t.old == LISTEN && t.new == CLOSE) || t.new == LISTEN {
            self.apply_listener(t, tuple, owner);
            return;
        }
        if t.new == CLOSE {
            let previous = self.conns.get(&tuple).copied();
            match t.timewait {
                Timewait::Handoff => {
                    // Sub-state TIME_WAIT was reported just before (same
                    // instant) when the peer's FIN was already in.
                    if previous.is_some_and(|e| e.timewait && e.since_ns.is_some()) {
                        return;
                    }
                    let since_ns = if t.old == FIN_WAIT2 {
                        match previous {
                            Some(e) if !e.timewait && e.state == FIN_WAIT2 => e.since_ns,
                            _ => t.in_old_ns.map(|ns| t.ktime_ns.saturating_sub(ns)),
                        }
                    } else {
                        Some(t.ktime_ns)
                    };
                    self.insert(
                        tuple,
                        Entry {
                            state: FIN_WAIT2,
                            timewait: true,
                            since_ns,
                            owner: owner
                                .or(previous.and_then(|e| e.owner))
                                .or(connecting.and_then(|(_, e)| e.owner)),
                        },
                    );
                }
                _ => {
                    if previous.is_some_and(|e| !e.timewait) {
                        self.conns.remove(&tuple);
                    }
                }
            }
            return;
        }
        let previous_owner = self
            .conns
            .get(&tuple)
            .and_then(|e| e.owner)
            .or(connecting.and_then(|(_, e)| e.owner));
        let entry = Entry {
            state: t.new,
            timewait: false,
            since_ns: Some(t.ktime_ns),
            owner: owner.or(previous_owner),
        };
        if t.lport == 0 {
            // connect() before the local port is chosen.
            if self.len() >= self.max {
                self.dropped += 1;
            } else {
                self.connecting.insert(t.skaddr, (tuple, entry));
            }
            return;
        }
        self.insert(tuple, entry);
    }

    fn apply_listener(&mut self, t: &Transition, tuple: Tuple, owner: Option<Owner>) {
        if t.new == LISTEN {
            if let Some(list) = self.listeners.get_mut(&tuple) {
                // Listening since before the walk: the walk found it.
                if t.ktime_ns < self.walk_end_ns {
                    if let Some(l) = list.iter_mut().find(|l| l.id == ListenerId::Walked) {
                        l.id = ListenerId::Sock(t.skaddr);
                        l.owner = owner.or(l.owner);
                        return;
                    }
                }
            }
            self.add_listener(
                tuple,
                Listener {
                    id: ListenerId::Sock(t.skaddr),
                    owner,
                },
            );
            return;
        }
        // LISTEN -> CLOSE.
        let Some(list) = self.listeners.get_mut(&tuple) else {
            return;
        };
        let at = list
            .iter()
            .position(|l| l.id == ListenerId::Sock(t.skaddr))
            .or_else(|| {
                // Gone before the walk: not one the walk found.
                (t.ktime_ns >= self.walk_start_ns)
                    .then(|| list.iter().position(|l| l.id == ListenerId::Walked))
                    .flatten()
            });
        if let Some(at) = at {
            list.swap_remove(at);
            if list.is_empty() {
                self.listeners.remove(&tuple);
            }
        }
    }

    /// Every socket: connections (full and timewait), connecting sockets
    /// and listeners.
    pub fn for_each(&self, mut f: impl FnMut(&Tuple, &Entry)) {
        for (tuple, entry) in &self.conns {
            f(tuple, entry);
        }
        for (tuple, entry) in self.connecting.values() {
            f(tuple, entry);
        }
        for (tuple, list) in &self.listeners {
            for l in list {
                f(
                    tuple,
                    &Entry {
                        state: LISTEN,
                        timewait: false,
                        since_ns: None,
                        owner: l.owner,
                    },
                );
            }
        }
    }

    /// Connections (full and timewait sockets) only.
    pub fn connections(&self) -> impl Iterator<Item = (&Tuple, &Entry)> {
        self.conns.iter()
    }

    /// Gives owners to full sockets that have none (found through their
    /// inode by a later walk).
    pub fn adopt_owners(&mut self, walked: &[Walked], owners: &HashMap<u64, Owner>) {
        for w in walked {
            let Some(owner) = owners.get(&w.inode) else {
                continue;
            };
            if let Some(e) = self.conns.get_mut(&w.tuple) {
                if !e.timewait && e.owner.is_none() {
                    e.owner = Some(*owner);
                }
            }
        }
    }

    /// Replaces the timewait sockets with those of a new walk (when the
    /// hooks that follow them are not attached).
    pub fn replace_timewait(&mut self, walked: &[Walked]) {
        let old: HashMap<Tuple, Entry> = self
            .conns
            .iter()
            .filter(|(_, e)| e.timewait)
            .map(|(t, e)| (*t, *e))
            .collect();
        self.conns.retain(|_, e| !e.timewait);
        let scope = self.scope;
        for w in walked
            .iter()
            .filter(|w| w.timewait && scope.covers(w.tuple.netns))
        {
            let entry = match old.get(&w.tuple) {
                Some(e) if e.state == w.state => *e,
                previous => Entry {
                    state: w.state,
                    timewait: true,
                    since_ns: None,
                    owner: previous.and_then(|e| e.owner),
                },
            };
            if !self.conns.contains_key(&w.tuple) {
                self.insert(w.tuple, entry);
            }
        }
    }

    /// Whether timewait sockets found by the walk are still in sub-state
    /// FIN_WAIT2: the probe has no record of them, so it cannot report the
    /// peer's FIN moving them to TIME_WAIT.
    pub fn has_walked_fin_wait2(&self) -> bool {
        self.conns
            .values()
            .any(|e| e.timewait && e.since_ns.is_none() && e.state == FIN_WAIT2)
    }

    /// Updates those from a new walk: now in TIME_WAIT, or gone.
    pub fn update_walked_fin_wait2(&mut self, walked: &[Walked]) {
        let now: HashMap<&Tuple, &Walked> = walked
            .iter()
            .filter(|w| w.timewait)
            .map(|w| (&w.tuple, w))
            .collect();
        self.conns.retain(|tuple, e| {
            if !(e.timewait && e.since_ns.is_none() && e.state == FIN_WAIT2) {
                return true;
            }
            match now.get(tuple) {
                Some(w) => {
                    e.state = w.state;
                    true
                }
                None => false,
            }
        });
    }

    /// Full sockets in these states whose owner is unknown.
    pub fn ownerless(&self, states: &[u8]) -> usize {
        self.conns
            .values()
            .filter(|e| !e.timewait && e.owner.is_none() && states.contains(&e.state))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{bytes_of, raw_event};
    use crate::sockets::Walked;
    use tcptrace_common::{
        AF_INET, EVENT_OWNER_KNOWN, EVENT_TIMEWAIT_CHECKED, EVENT_TIMEWAIT_HANDOFF,
        EVENT_TIMEWAIT_SOCKET,
    };

    fn event(old: u8, new: u8, flags: u8, ktime_ns: u64) -> Transition {
        let mut ev = raw_event(AF_INET, old, new, flags);
        ev.ktime_ns = ktime_ns;
        Transition::decode(bytes_of(&ev)).unwrap()
    }

    fn table() -> SocketTable {
        SocketTable::new(Scope::Netns(4026531840), 100)
    }

    #[test]
    fn close_wait_until_closed() {
        let mut t = table();
        t.apply(&event(ESTABLISHED, CLOSE_WAIT, 0, 10));
        let (_, e) = t.connections().next().unwrap();
        assert_eq!((e.state, e.since_ns, e.owner), (CLOSE_WAIT, Some(10), None));
        t.apply(&event(CLOSE_WAIT, LAST_ACK, EVENT_OWNER_KNOWN, 20));
        let (_, e) = t.connections().next().unwrap();
        assert_eq!(e.state, LAST_ACK);
        assert_eq!(e.owner.unwrap().pid, 4242);
        t.apply(&event(LAST_ACK, CLOSE, 0, 30));
        assert!((t.len() == 0));
    }

    #[test]
    fn handoff_keeps_the_connection_in_its_timewait_socket() {
        let mut t = table();
        t.apply(&event(FIN_WAIT1, FIN_WAIT2, EVENT_OWNER_KNOWN, 10));
        let handoff = EVENT_TIMEWAIT_CHECKED | EVENT_TIMEWAIT_HANDOFF;
        t.apply(&event(FIN_WAIT2, CLOSE, handoff, 12));
        let (_, e) = t.connections().next().unwrap();
        assert_eq!(
            (e.state, e.timewait, e.since_ns),
            (FIN_WAIT2, true, Some(10))
        );
        assert_eq!(e.owner.unwrap().pid, 4242, "last known owner kept");
        t.apply(&event(FIN_WAIT2, TIME_WAIT, EVENT_TIMEWAIT_SOCKET, 50));
        let (_, e) = t.connections().next().unwrap();
        assert_eq!(
            (e.state, e.timewait, e.since_ns),
            (TIME_WAIT, true, Some(50))
        );
        t.apply(&event(TIME_WAIT, CLOSE, EVENT_TIMEWAIT_SOCKET, 60));
        assert!((t.len() == 0));
    }

    #[test]
    fn time_wait_reported_before_the_handoff_stays() {
        let mut t = table();
        t.apply(&event(FIN_WAIT2, TIME_WAIT, EVENT_TIMEWAIT_SOCKET, 12));
        let handoff = EVENT_TIMEWAIT_CHECKED | EVENT_TIMEWAIT_HANDOFF;
        t.apply(&event(FIN_WAIT2, CLOSE, handoff, 12));
        let (_, e) = t.connections().next().unwrap();
        assert_eq!((e.state, e.timewait), (TIME_WAIT, true));
    }

    #[test]
    fn reset_removes_and_reuse_is_not_undone() {
        let mut t = table();
        t.apply(&event(FIN_WAIT2, CLOSE, EVENT_TIMEWAIT_CHECKED, 5));
        assert!((t.len() == 0));
        // A new connection took the tuple before the old timewait socket's
        // end was reported: the end must not remove it.
        t.apply(&event(SYN_SENT, ESTABLISHED, 0, 10));
        t.apply(&event(TIME_WAIT, CLOSE, EVENT_TIMEWAIT_SOCKET, 11));
        assert_eq!(t.connections().next().unwrap().1.state, ESTABLISHED);
    }

    #[test]
    fn walked_sockets_get_event_times() {
        let mut t = table();
        let ev = event(ESTABLISHED, CLOSE_WAIT, 0, 5);
        let walked = [Walked {
            tuple: Tuple::of(&ev),
            state: CLOSE_WAIT,
            timewait: false,
            inode: 77,
        }];
        let owner = Owner {
            pid: 9,
            comm: [b'x'; COMM_LEN],
            cgroup: 0,
        };
        t.seed(&walked, &HashMap::from([(77, owner)]), 3, 8);
        let (_, e) = t.connections().next().unwrap();
        assert_eq!((e.since_ns, e.owner), (None, Some(owner)));
        t.apply(&ev);
        let (_, e) = t.connections().next().unwrap();
        assert_eq!((e.since_ns, e.owner), (Some(5), Some(owner)));
    }

    #[test]
    fn listeners_are_matched_not_double_counted() {
        let mut t = table();
        let listen = event(CLOSE, LISTEN, EVENT_OWNER_KNOWN, 5);
        let w = Walked {
            tuple: Tuple::of(&listen),
            state: LISTEN,
            timewait: false,
            inode: 1,
        };
        t.seed(&[w, w], &HashMap::new(), 6, 8);
        t.apply(&listen);
        assert_eq!(t.len(), 2, "the event is one of the two walked");
        t.apply(&event(CLOSE, LISTEN, EVENT_OWNER_KNOWN, 9));
        assert_eq!(t.len(), 3);
        t.apply(&event(LISTEN, CLOSE, EVENT_OWNER_KNOWN, 10));
        t.apply(&event(LISTEN, CLOSE, EVENT_OWNER_KNOWN, 11));
        t.apply(&event(LISTEN, CLOSE, EVENT_OWNER_KNOWN, 12));
        assert!((t.len() == 0));
    }

    #[test]
    fn connecting_sockets_move_to_their_tuple() {
        let mut t = table();
        let mut ev = raw_event(AF_INET, CLOSE, SYN_SENT, EVENT_OWNER_KNOWN);
        ev.lport = 0;
        t.apply(&Transition::decode(bytes_of(&ev)).unwrap());
        assert_eq!(t.len(), 1);
        t.apply(&event(SYN_SENT, ESTABLISHED, 0, 10));
        assert_eq!(t.len(), 1);
        let (tuple, e) = t.connections().next().unwrap();
        assert_eq!((tuple.lport, e.state), (45678, ESTABLISHED));
        assert_eq!(e.owner.unwrap().pid, 4242, "owner from connect()");
    }

    #[test]
    fn bounded() {
        let mut t = SocketTable::new(Scope::All, 1);
        t.apply(&event(SYN_SENT, ESTABLISHED, 0, 10));
        let mut ev = raw_event(AF_INET, SYN_SENT, ESTABLISHED, 0);
        ev.rport = 81;
        t.apply(&Transition::decode(bytes_of(&ev)).unwrap());
        assert_eq!((t.len(), t.dropped), (1, 1));
    }
}
