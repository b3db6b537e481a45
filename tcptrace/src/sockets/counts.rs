//! What the event stream said about timewait sockets, counted for
//! `doctor`'s --observe window (kept by every table-keeping view).
use tcptrace_common::{
    end_reason,
    tcp_state::{CLOSE, TIME_WAIT},
};

use crate::decode::{Timewait, Transition};

/// Counts of what the event stream said, for `doctor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimewaitCounts {
    /// Full sockets handed to a timewait socket.
    pub handoffs: u64,
    /// Connections entering sub-state TIME_WAIT (at the hand-off or later).
    pub time_wait_entries: u64,
    pub expired: u64,
    pub fin_timeout: u64,
    pub reused: u64,
    pub killed: u64,
    /// Every transition seen in scope.
    pub events: u64,
}

impl TimewaitCounts {
    pub fn note(&mut self, t: &Transition) {
        self.events += 1;
        if t.timewait == Timewait::Handoff {
            self.handoffs += 1;
        }
        if t.timewait_socket {
            match (t.new, t.end) {
                (TIME_WAIT, _) => self.time_wait_entries += 1,
                (CLOSE, end_reason::EXPIRED) => self.expired += 1,
                (CLOSE, end_reason::FIN_TIMEOUT) => self.fin_timeout += 1,
                (CLOSE, end_reason::REUSED) => self.reused += 1,
                (CLOSE, end_reason::KILLED) => self.killed += 1,
                _ => {}
            }
        }
    }
}
