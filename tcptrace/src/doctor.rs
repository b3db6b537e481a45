//! `tcptrace doctor`: the TIME_WAIT sysctls the usual advice tunes, read
//! on this host and checked against what its sockets do. Plain sentences,
//! each with the number behind it; advice only where a number calls for it.
use std::{collections::HashMap, fmt::Write as _, fs, net::IpAddr, time::Duration};

use anyhow::Result;
use tcptrace_common::tcp_state::SYN_RECV;

pub use crate::snapshot::{Facts, Finding, PortUse, Sysctls};
use crate::{
    census::Counts,
    clock::Clock,
    live::{self, Tracked},
    printer::{self, human::endpoint_text},
    probe::Probe,
    probe::ProbeOptions,
    session::{self, SessionOptions, View},
    sockets::{current_netns, Scope},
    summary::RunContext,
};

/// Share of the port range toward one peer from which tcp_tw_reuse or a
/// wider range is advised.
pub const PORT_PRESSURE: f64 = 0.5;
/// Share of tcp_max_tw_buckets from which the table is said to be near full.
pub const TABLE_PRESSURE: f64 = 0.8;
/// TIME_WAIT lasts this long in Linux (TCP_TIMEWAIT_LEN).
const TIME_WAIT_SECONDS: f64 = 60.0;

fn sysctl(name: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn sysctl_int(name: &str) -> Option<i64> {
    sysctl(name)?.parse().ok()
}

pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some((parts.next()??, parts.next()??))
}

impl Sysctls {
    pub fn read() -> Sysctls {
        Sysctls {
            tcp_tw_reuse: sysctl_int("tcp_tw_reuse"),
            tcp_fin_timeout: sysctl_int("tcp_fin_timeout"),
            tcp_max_tw_buckets: sysctl_int("tcp_max_tw_buckets"),
            ip_local_port_range: sysctl("ip_local_port_range")
                .as_deref()
                .and_then(parse_port_range),
            tcp_syncookies: sysctl_int("tcp_syncookies"),
            tcp_tw_recycle: sysctl_int("tcp_tw_recycle"),
        }
    }
}

/// TcpExt counters of /proc/net/netstat (this namespace, since it began).
pub fn parse_netstat(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some(("TcpExt", names)), Some(("TcpExt", values))) =
            (names.split_once(": "), values.split_once(": "))
        else {
            continue;
        };
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                out.insert(n.to_string(), v);
            }
        }
    }
    out
}

fn read_netstat() -> HashMap<String, u64> {
    fs::read_to_string("/proc/net/netstat")
        .map(|t| parse_netstat(&t))
        .unwrap_or_default()
}

pub fn port_use(tracked: &Tracked, range: (u16, u16)) -> PortUse {
    let (lo, hi) = range;
    let mut per_peer: HashMap<(IpAddr, u16), u64> = HashMap::new();
    let mut use_ = PortUse {
        range_size: u64::from(hi.saturating_sub(lo)) + 1,
        ..PortUse::default()
    };
    for (tuple, e) in tracked.table.connections() {
        if e.timewait && (lo..=hi).contains(&tuple.lport) {
            use_.timewait_in_range += 1;
            *per_peer.entry((tuple.remote, tuple.rport)).or_default() += 1;
        }
    }
    if let Some((peer, n)) = per_peer
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
    {
        use_.max_per_peer = n;
        use_.peer = Some(peer);
    }
    use_
}

fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        100.0 * part / whole
    } else {
        0.0
    }
}

fn reuse_meaning(v: i64) -> &'static str {
    match v {
        0 => "off",
        1 => "on: connect() may take over a TIME_WAIT port, for any peer",
        2 => "on for loopback connections only",
        _ => "an unknown value",
    }
}

/// The counter's increase in the window if observing, else its total.
fn counter(f: &Facts, name: &str) -> (u64, &'static str) {
    match &f.netstat_delta {
        Some(d) => (d.get(name).copied().unwrap_or(0), "during the window"),
        None => (
            f.netstat.get(name).copied().unwrap_or(0),
            "since the network namespace started",
        ),
    }
}

pub fn findings(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let s = &f.sysctls;
    let c = &f.counts;

    // What tcptrace itself can see on this kernel.
    if let Some((hooks, detection)) = &f.hooks {
        out.push(Finding {
            topic: "hooks",
            text: format!(
                "on this kernel (Linux {}) tcptrace attaches {}; timewait detection: {detection}.",
                f.kernel,
                hooks.join(", ")
            ),
            advice: None,
        });
    }

    // tcp_tw_recycle.
    out.push(match s.tcp_tw_recycle {
        None => Finding {
            topic: "tcp_tw_recycle",
            text: format!(
                "net.ipv4.tcp_tw_recycle does not exist on this kernel (Linux {}): it was \
                 removed in Linux 4.12, so advice to set it cannot be applied here.",
                f.kernel
            ),
            advice: None,
        },
        Some(v) => Finding {
            topic: "tcp_tw_recycle",
            text: format!(
                "net.ipv4.tcp_tw_recycle exists on this kernel (Linux {}, before 4.12) and is {v}.",
                f.kernel
            ),
            advice: (v != 0).then(|| {
                "it drops connections from clients behind NAT whose timestamps disagree; \
                 it was removed in Linux 4.12 for that reason: set it to 0"
                    .to_string()
            }),
        },
    });

    // The timewait table.
    let tw = c.timewait_sockets();
    let (overflow, when) = counter(f, "TCPTimeWaitOverflow");
    if let Some(max) = s.tcp_max_tw_buckets {
        let share = pct(tw as f64, max as f64);
        let mut text = format!(
            "{tw} timewait sockets now ({} in TIME_WAIT, {} in FIN_WAIT2) against \
             net.ipv4.tcp_max_tw_buckets = {max} ({share:.1}% of it); the kernel skipped \
             TIME_WAIT {overflow} times {when} because that table was full \
             (TcpExt TCPTimeWaitOverflow).",
            c.timewait_time_wait, c.timewait_fin_wait2
        );
        let mut advice = None;
        if let Some((window, counts)) = &f.observed {
            let rate = counts.handoffs as f64 / window.as_secs_f64();
            let steady = rate * TIME_WAIT_SECONDS;
            let _ = write!(
                text,
                " In the {:.1} s window {} connections were handed to timewait sockets \
                 ({rate:.1}/s): at that rate about {steady:.0} would be in TIME_WAIT at once \
                 ({:.1}% of the limit).",
                window.as_secs_f64(),
                counts.handoffs,
                pct(steady, max as f64)
            );
            if steady >= TABLE_PRESSURE * max as f64 {
                advice = Some(format!(
                    "at {rate:.1} closes/s the timewait table would be {:.0}% full: raise \
                     net.ipv4.tcp_max_tw_buckets above {steady:.0}, or let the peer close first",
                    pct(steady, max as f64)
                ));
            }
        }
        if overflow > 0 {
            advice = Some(format!(
                "{overflow} connections {when} ended without TIME_WAIT because the table was \
                 full: raise net.ipv4.tcp_max_tw_buckets (now {max}) or let the peer close first"
            ));
        } else if advice.is_none() && share >= TABLE_PRESSURE * 100.0 {
            advice = Some(format!(
                "the timewait table is {share:.0}% full: raise net.ipv4.tcp_max_tw_buckets \
                 (now {max}) before it overflows"
            ));
        }
        out.push(Finding {
            topic: "tcp_max_tw_buckets",
            text,
            advice,
        });
    }

    // Ephemeral ports.
    if let (Some((lo, hi)), Some(ports)) = (s.ip_local_port_range, &f.ports) {
        let share = pct(ports.max_per_peer as f64, ports.range_size as f64);
        let mut text = format!(
            "net.ipv4.ip_local_port_range is {lo}-{hi}: {} local ports for connections to \
             each remote address and port. {} timewait sockets hold a port of that range",
            ports.range_size, ports.timewait_in_range
        );
        let mut advice = None;
        match ports.peer {
            Some((addr, port)) if ports.max_per_peer > 0 => {
                let _ = write!(
                    text,
                    "; the most toward one peer is {} toward {} ({share:.1}% of the range).",
                    ports.max_per_peer,
                    endpoint_text(addr, port)
                );
                if share >= PORT_PRESSURE * 100.0 {
                    let reuse_applies = match s.tcp_tw_reuse {
                        Some(1) => true,
                        Some(2) => addr.is_loopback(),
                        _ => false,
                    };
                    advice = Some(if reuse_applies {
                        format!(
                            "connections to {} may run out of local ports; tcp_tw_reuse \
                             already lets connect() take over TIME_WAIT ports there: widen \
                             ip_local_port_range or spread connections over more local \
                             addresses",
                            endpoint_text(addr, port)
                        )
                    } else {
                        format!(
                            "connections to {} may run out of local ports: \
                             net.ipv4.tcp_tw_reuse=1 lets connect() take over TIME_WAIT ports \
                             (with TCP timestamps on), or widen ip_local_port_range",
                            endpoint_text(addr, port)
                        )
                    });
                }
            }
            _ => text.push('.'),
        }
        out.push(Finding {
            topic: "ip_local_port_range",
            text,
            advice,
        });
    }

    // tcp_tw_reuse.
    if let Some(v) = s.tcp_tw_reuse {
        let (recycled, when) = counter(f, "TWRecycled");
        let mut text = format!(
            "net.ipv4.tcp_tw_reuse is {v} ({}); the kernel reused {recycled} TIME_WAIT \
             sockets {when} (TcpExt TWRecycled).",
            reuse_meaning(v)
        );
        if let Some((window, counts)) = &f.observed {
            let _ = write!(
                text,
                " In the {:.1} s window timewait sockets ended: {} after their 60 s, {} \
                 reused early by a new connection, {} killed early (RST or new SYN from \
                 the peer), {} by tcp_fin_timeout.",
                window.as_secs_f64(),
                counts.expired,
                counts.reused,
                counts.killed,
                counts.fin_timeout
            );
        }
        out.push(Finding {
            topic: "tcp_tw_reuse",
            text,
            advice: None,
        });
    }

    // tcp_fin_timeout.
    if let Some(v) = s.tcp_fin_timeout {
        let mut text = format!(
            "net.ipv4.tcp_fin_timeout is {v} s: a connection closed here first waits at most \
             that long in FIN_WAIT2 for the peer's FIN; {} orphaned connections are waiting for \
             it now ({} more are in FIN_WAIT2 with their application still holding them).",
            c.timewait_fin_wait2, c.fin_wait2_full
        );
        let mut advice = None;
        if let Some((window, counts)) = &f.observed {
            let _ = write!(
                text,
                " In the {:.1} s window {} ended by tcp_fin_timeout, their peer never having \
                 closed.",
                window.as_secs_f64(),
                counts.fin_timeout
            );
            if counts.fin_timeout > 0 {
                advice = Some(format!(
                    "{} peers left connections open after this side closed: look at the \
                     remote side (tcptrace stuck there shows CLOSE_WAIT); lowering \
                     tcp_fin_timeout (now {v} s) only frees these sockets sooner",
                    counts.fin_timeout
                ));
            }
        }
        out.push(Finding {
            topic: "tcp_fin_timeout",
            text,
            advice,
        });
    }

    // tcp_syncookies.
    if let Some(v) = s.tcp_syncookies {
        let (sent, when) = counter(f, "SyncookiesSent");
        let (overflows, _) = counter(f, "ListenOverflows");
        let meaning = match v {
            0 => "off",
            1 => "sent when a listen queue overflows",
            2 => "always sent",
            _ => "an unknown value",
        };
        let text = format!(
            "net.ipv4.tcp_syncookies is {v} ({meaning}); {when} SYN cookies were sent \
             {sent} times and listen queues overflowed {overflows} times (TcpExt \
             SyncookiesSent, ListenOverflows); {} connections are half-open (SYN_RECV) now.",
            c.per_state[SYN_RECV as usize]
        );
        let advice = (overflows > 0).then(|| {
            let mut a = format!(
                "listen queues overflowed {overflows} times: an application accepts too slowly \
                 or listens with too small a backlog (net.core.somaxconn caps it)"
            );
            if v == 0 {
                a.push_str("; with tcp_syncookies 0 the kernel drops those SYNs: set it to 1");
            }
            a
        });
        out.push(Finding {
            topic: "tcp_syncookies",
            text,
            advice,
        });
    }
    out
}

fn facts(
    tracked: &Tracked,
    netstat_before: &HashMap<String, u64>,
    observed: Option<Duration>,
    hooks: Option<(Vec<String>, String)>,
) -> Facts {
    let sysctls = Sysctls::read();
    let netstat = read_netstat();
    let netstat_delta = observed.map(|_| {
        netstat
            .iter()
            .map(|(k, v)| {
                let before = netstat_before.get(k).copied().unwrap_or(0);
                (k.clone(), v.saturating_sub(before))
            })
            .collect()
    });
    Facts {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        ports: sysctls
            .ip_local_port_range
            .map(|range| port_use(tracked, range)),
        sysctls,
        counts: Counts::of(&tracked.table),
        netstat,
        netstat_delta,
        observed: observed.map(|w| (w, tracked.counts)),
        hooks,
    }
}

/// The hooks a probe attached, and the timewait detection they allow.
pub(crate) fn hooks_of(probe: &Probe) -> (Vec<String>, String) {
    (
        probe.hooks.iter().map(|hook| hook.name()).collect(),
        probe.timewait.describe(),
    )
}

fn write_report(json: bool, f: &Facts, netns: u32, out: &mut Vec<u8>) {
    let findings = findings(f);
    if json {
        printer::json::write_doctor(out, f, &findings, netns);
    } else {
        printer::human::write_doctor(out, &findings);
    }
}

struct DoctorView {
    tracked: Tracked,
    json: bool,
    netns: u32,
    window: Duration,
    netstat_before: HashMap<String, u64>,
    hooks: (Vec<String>, String),
}

impl View for DoctorView {
    fn record(&mut self, data: &[u8], _clock: &Clock, _out: &mut Vec<u8>) {
        self.tracked.record(data);
    }

    fn finish(&mut self, _ctx: &RunContext, _clock: &Clock, out: &mut Vec<u8>) -> Result<()> {
        live::resync_timewait(&mut self.tracked);
        let f = facts(
            &self.tracked,
            &self.netstat_before,
            Some(self.window),
            Some(self.hooks.clone()),
        );
        write_report(self.json, &f, self.netns, out);
        Ok(())
    }
}

/// `tcptrace doctor`.
pub struct DoctorOptions {
    pub probe: ProbeOptions,
    pub json: bool,
    /// Watch the event stream this long before reporting.
    pub observe: Option<Duration>,
}

pub async fn run(args: DoctorOptions) -> Result<()> {
    let netns = current_netns()?;
    let scope = Scope::Netns(netns);
    let Some(window) = args.observe else {
        // Loaded only to learn which hooks this kernel accepts, then
        // detached.
        let probe = session::start_probe(&args.probe)?;
        let hooks = hooks_of(&probe);
        let followed = probe.timewait.hooked();
        drop(probe);
        let tracked = live::seed(scope, followed)?;
        let f = facts(&tracked, &HashMap::new(), None, Some(hooks));
        let mut out = Vec::new();
        write_report(args.json, &f, netns, &mut out);
        return printer::write_stdout(&out);
    };
    let netstat_before = read_netstat();
    let (probe, tracked) = live::start(&args.probe, scope).await?;
    let mut view = DoctorView {
        tracked,
        json: args.json,
        netns,
        window,
        netstat_before,
        hooks: hooks_of(&probe),
    };
    session::run(
        probe,
        &mut view,
        SessionOptions::new(
            args.json,
            Some(window),
            Some(format!(
                "tcptrace: tracing for {:.1} s before reporting",
                window.as_secs_f64()
            )),
        ),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::{SocketTable, Tuple, Walked};
    use tcptrace_common::tcp_state::TIME_WAIT;

    #[test]
    fn netstat_pairs() {
        let text = "TcpExt: SyncookiesSent TW TCPTimeWaitOverflow\nTcpExt: 3 10 0\n\
                    IpExt: InNoRoutes\nIpExt: 1\n";
        let m = parse_netstat(text);
        assert_eq!(m["SyncookiesSent"], 3);
        assert_eq!(m["TW"], 10);
        assert!(!m.contains_key("InNoRoutes"));
        assert_eq!(parse_port_range("32768\t60999"), Some((32768, 60999)));
    }

    fn tracked_with_time_wait(n: u16, rport: u16) -> Tracked {
        let mut table = SocketTable::new(Scope::Netns(1), 100_000);
        let walked: Vec<Walked> = (0..n)
            .map(|i| Walked {
                tuple: Tuple {
                    netns: 1,
                    local: "10.0.0.1".parse().unwrap(),
                    lport: 40000 + i,
                    remote: "10.0.0.2".parse().unwrap(),
                    rport,
                },
                state: TIME_WAIT,
                timewait: true,
                inode: 0,
            })
            .collect();
        table.seed(&walked, &HashMap::new(), 0, 1);
        Tracked::new(table, true)
    }

    fn facts_for(tracked: &Tracked, reuse: i64) -> Facts {
        let sysctls = Sysctls {
            tcp_tw_reuse: Some(reuse),
            tcp_fin_timeout: Some(60),
            tcp_max_tw_buckets: Some(1000),
            ip_local_port_range: Some((40000, 40099)),
            tcp_syncookies: Some(1),
            tcp_tw_recycle: None,
        };
        Facts {
            kernel: "6.18.0".into(),
            ports: Some(port_use(tracked, (40000, 40099))),
            sysctls,
            counts: Counts::of(&tracked.table),
            ..Facts::default()
        }
    }

    #[test]
    fn advice_only_when_numbers_call_for_it() {
        let quiet = tracked_with_time_wait(10, 80);
        let f = facts_for(&quiet, 2);
        let found = findings(&f);
        assert!(found.iter().all(|x| x.advice.is_none()), "{found:#?}");
        let ports = found
            .iter()
            .find(|x| x.topic == "ip_local_port_range")
            .unwrap();
        assert!(ports
            .text
            .contains("10 toward 10.0.0.2:80 (10.0% of the range)"));
        assert!(found[0].text.contains("removed in Linux 4.12"));

        let busy = tracked_with_time_wait(60, 80);
        let f = facts_for(&busy, 2);
        let found = findings(&f);
        let ports = found
            .iter()
            .find(|x| x.topic == "ip_local_port_range")
            .unwrap();
        assert!(ports.advice.as_ref().unwrap().contains("tcp_tw_reuse=1"));
        let f = facts_for(&busy, 1);
        let ports = findings(&f)
            .into_iter()
            .find(|x| x.topic == "ip_local_port_range")
            .unwrap();
        assert!(ports.advice.unwrap().contains("already"));

        let mut f = facts_for(&quiet, 2);
        f.netstat.insert("TCPTimeWaitOverflow".into(), 5);
        let table = findings(&f)
            .into_iter()
            .find(|x| x.topic == "tcp_max_tw_buckets")
            .unwrap();
        assert!(table.advice.unwrap().contains("5 connections"));
    }
}
