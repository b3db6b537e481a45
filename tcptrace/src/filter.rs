//! The probe's filters, applied in userspace to records read back from a
//! capture: `tcptrace -r FILE --port 80` keeps exactly what `tcptrace
//! --port 80` would have been sent by the kernel (tcptrace-ebpf's
//! `config::passes_filters` and the state program's emit conditions).
use std::net::IpAddr;

use tcptrace_common::{
    port_in, tcp_state::*, ProbeConfig, CONFIG_EMIT_CONNECTIONS, CONFIG_EMIT_TRANSITIONS,
    CONFIG_HANDOFF_ONLY, CONFIG_HIDE_HANDOFFS, CONFIG_IPV4, CONFIG_IPV6, CONFIG_LPORT_FILTER,
    CONFIG_NETNS_FILTER, CONFIG_PID_FILTER, CONFIG_PORT_EITHER, CONFIG_RPORT_FILTER,
    CONFIG_TIMEWAIT_EVENTS,
};

use crate::decode::{Connection, Record, Timewait, Transition};

/// Whether the probe, configured with `config`, would have reported `record`.
pub fn keeps(config: &ProbeConfig, record: &Record) -> bool {
    match record {
        Record::Transition(t) => keeps_transition(config, t),
        Record::Connection(c) => keeps_connection(config, c),
    }
}

fn keeps_transition(config: &ProbeConfig, t: &Transition) -> bool {
    let flags = config.flags;
    if flags & CONFIG_EMIT_TRANSITIONS == 0 {
        return false;
    }
    if t.timewait_socket {
        if flags & CONFIG_TIMEWAIT_EVENTS == 0 {
            return false;
        }
    } else {
        let mask = config.transitions[(t.old & 15) as usize];
        if t.new >= 16 || mask & (1 << t.new) == 0 {
            return false;
        }
        let closing_from_fin = t.new == CLOSE && matches!(t.old, FIN_WAIT1 | FIN_WAIT2 | CLOSING);
        let checked = matches!(t.timewait, Timewait::Handoff | Timewait::NotHandoff);
        if closing_from_fin && checked {
            let handoff = t.timewait == Timewait::Handoff;
            if (flags & CONFIG_HANDOFF_ONLY != 0 && !handoff)
                || (flags & CONFIG_HIDE_HANDOFFS != 0 && handoff)
            {
                return false;
            }
        }
    }
    passes(config, t.local, t.netns, t.lport, t.rport, t.pid)
}

fn keeps_connection(config: &ProbeConfig, c: &Connection) -> bool {
    if config.flags & CONFIG_EMIT_CONNECTIONS == 0 {
        return false;
    }
    let ends = c.endpoints();
    passes(
        config,
        ends.local,
        c.event.netns,
        ends.lport,
        ends.rport,
        c.pid(),
    )
}

/// `passes_filters`: family, namespace, ports, owner.
fn passes(
    config: &ProbeConfig,
    local: IpAddr,
    netns: u32,
    lport: u16,
    rport: u16,
    pid: Option<u32>,
) -> bool {
    let flags = config.flags;
    let family_ok = match local {
        IpAddr::V4(_) => flags & CONFIG_IPV4 != 0,
        IpAddr::V6(_) => flags & CONFIG_IPV6 != 0,
    };
    if !family_ok {
        return false;
    }
    if flags & CONFIG_NETNS_FILTER != 0 && netns != config.netns {
        return false;
    }
    if flags & CONFIG_PORT_EITHER != 0 {
        if !port_in(&config.lports, lport) && !port_in(&config.rports, rport) {
            return false;
        }
    } else {
        if flags & CONFIG_LPORT_FILTER != 0 && !port_in(&config.lports, lport) {
            return false;
        }
        if flags & CONFIG_RPORT_FILTER != 0 && !port_in(&config.rports, rport) {
            return false;
        }
    }
    !(flags & CONFIG_PID_FILTER != 0 && pid != Some(config.pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{bytes_of, raw_event};
    use tcptrace_common::{
        port_insert, AF_INET, AF_INET6, EVENT_TIMEWAIT_CHECKED, EVENT_TIMEWAIT_HANDOFF,
    };

    fn transition(family: u16, old: u8, new: u8, flags: u8) -> Record {
        Record::decode(bytes_of(&raw_event(family, old, new, flags))).unwrap()
    }

    fn config(all: bool) -> ProbeConfig {
        let mut c = ProbeConfig::empty();
        c.flags |= CONFIG_EMIT_TRANSITIONS | CONFIG_TIMEWAIT_EVENTS | CONFIG_IPV4 | CONFIG_IPV6;
        if all {
            crate::state::allow_all(&mut c);
        } else {
            crate::state::allow_headline(&mut c);
            c.flags |= CONFIG_HANDOFF_ONLY | CONFIG_HIDE_HANDOFFS;
        }
        c
    }

    #[test]
    fn the_default_view_hides_what_the_probe_hides() {
        let headline = config(false);
        let all = config(true);
        let established = transition(AF_INET, SYN_SENT, ESTABLISHED, 0);
        assert!(!keeps(&headline, &established));
        assert!(keeps(&all, &established));
        let handoff = transition(
            AF_INET,
            FIN_WAIT2,
            CLOSE,
            EVENT_TIMEWAIT_CHECKED | EVENT_TIMEWAIT_HANDOFF,
        );
        assert!(!keeps(&headline, &handoff));
        assert!(keeps(&all, &handoff));
        // Unclassified (no hook): shown, as the probe shows it.
        assert!(keeps(&headline, &transition(AF_INET, FIN_WAIT2, CLOSE, 0)));
        assert!(keeps(
            &headline,
            &transition(AF_INET, CLOSE_WAIT, LAST_ACK, 0)
        ));
    }

    #[test]
    fn family_port_and_owner_filters() {
        let mut c = config(true);
        c.flags &= !CONFIG_IPV6;
        let t = transition(AF_INET6, SYN_SENT, ESTABLISHED, 0);
        assert!(!keeps(&c, &t));
        let t = transition(AF_INET, SYN_SENT, ESTABLISHED, 0);
        let Record::Transition(decoded) = t else {
            unreachable!()
        };
        c.flags |= CONFIG_LPORT_FILTER;
        port_insert(&mut c.lports, decoded.lport);
        assert!(keeps(&c, &t));
        c.lports = [0; 1024];
        port_insert(&mut c.lports, decoded.lport.wrapping_add(1));
        assert!(!keeps(&c, &t));
        let mut c = config(true);
        c.flags |= CONFIG_PID_FILTER;
        c.pid = decoded.pid.unwrap_or(0).wrapping_add(1);
        assert!(!keeps(&c, &t));
    }
}
