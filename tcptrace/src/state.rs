//! TCP state names and the transition sets the CLI selects.
use tcptrace_common::{tcp_state::*, ProbeConfig};

/// The kernel's name of a state, without the `TCP_` prefix.
pub fn name(state: u8) -> &'static str {
    match state {
        ESTABLISHED => "ESTABLISHED",
        SYN_SENT => "SYN_SENT",
        SYN_RECV => "SYN_RECV",
        FIN_WAIT1 => "FIN_WAIT1",
        FIN_WAIT2 => "FIN_WAIT2",
        TIME_WAIT => "TIME_WAIT",
        CLOSE => "CLOSE",
        CLOSE_WAIT => "CLOSE_WAIT",
        LAST_ACK => "LAST_ACK",
        LISTEN => "LISTEN",
        CLOSING => "CLOSING",
        NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Whether `old -> new` can be the full socket handing over to a timewait
/// socket (tcp_time_wait() is called from these states only).
pub fn is_timewait_candidate(old: u8, new: u8) -> bool {
    new == CLOSE && matches!(old, FIN_WAIT1 | FIN_WAIT2 | CLOSING)
}

/// The default view: timewait hand-offs and CLOSE_WAIT -> LAST_ACK.
pub fn allow_headline(config: &mut ProbeConfig) {
    for old in [FIN_WAIT1, FIN_WAIT2, CLOSING] {
        config.allow(old, CLOSE);
    }
    config.allow(CLOSE_WAIT, LAST_ACK);
}

pub fn allow_all(config: &mut ProbeConfig) {
    for old in 1..COUNT as u8 {
        for new in 1..COUNT as u8 {
            config.allow(old, new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_kernel() {
        assert_eq!(name(FIN_WAIT2), "FIN_WAIT2");
        assert_eq!(name(NEW_SYN_RECV), "NEW_SYN_RECV");
        assert_eq!(name(0), "UNKNOWN");
        assert_eq!(name(99), "UNKNOWN");
    }

    #[test]
    fn headline_set() {
        let mut c = ProbeConfig::empty();
        allow_headline(&mut c);
        assert!(c.wants(FIN_WAIT2, CLOSE));
        assert!(c.wants(CLOSE_WAIT, LAST_ACK));
        assert!(!c.wants(ESTABLISHED, CLOSE));
        assert!(!c.wants(LAST_ACK, CLOSE));
        assert!(is_timewait_candidate(CLOSING, CLOSE));
        assert!(!is_timewait_candidate(ESTABLISHED, CLOSE));
    }
}
