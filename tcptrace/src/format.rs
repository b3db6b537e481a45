//! Human columns and JSON Lines, written into a reusable byte buffer.
//!
//! The per-event path appends to a `Vec<u8>` that the caller flushes once
//! per drained batch: no allocation, no write(2) per event.
use std::{io::Write, net::IpAddr};

use crate::{
    clock::Clock,
    decode::{end_name, Timewait, Transition},
    state,
};

/// Width of `255.255.255.255:65535`.
const NARROW_ADDR: usize = 21;
/// Width of `[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535`.
const WIDE_ADDR: usize = 47;
const TRANSITION_WIDTH: usize = 32;

pub enum Format {
    Human(HumanFormat),
    Json,
}

impl Format {
    pub fn write_transition(&mut self, out: &mut Vec<u8>, clock: &Clock, t: &Transition) {
        match self {
            Format::Human(human) => human.write_transition(out, clock, t),
            Format::Json => write_json_transition(out, clock, t),
        }
    }
}

pub struct HumanFormat {
    addr_width: usize,
}

impl HumanFormat {
    pub fn new(wide: bool) -> Self {
        HumanFormat {
            addr_width: if wide { WIDE_ADDR } else { NARROW_ADDR },
        }
    }

    pub fn write_header(&self, out: &mut Vec<u8>) {
        let w = self.addr_width;
        let _ = writeln!(
            out,
            "{:<15} {:>7} {:<15} {:<w$} {:<w$} {:<TRANSITION_WIDTH$} {:>9} {:>9}",
            "TIME", "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "TRANSITION", "IN-OLD", "AGE"
        );
    }

    pub fn write_transition(&mut self, out: &mut Vec<u8>, clock: &Clock, t: &Transition) {
        self.write_prefix(out, clock, t.ktime_ns, t.pid, t.comm(), t.endpoints());
        let start = out.len();
        out.extend_from_slice(state::name(t.old).as_bytes());
        out.extend_from_slice(b" -> ");
        out.extend_from_slice(state::name(t.new).as_bytes());
        match t.timewait {
            Timewait::Handoff => out.extend_from_slice(b" [timewait]"),
            Timewait::Unknown => out.extend_from_slice(b" [timewait?]"),
            Timewait::NotHandoff | Timewait::NotApplicable => {}
        }
        if let Some(end) = end_name(t.end) {
            out.extend_from_slice(b" (");
            out.extend_from_slice(end.as_bytes());
            out.push(b')');
        }
        pad_to(out, start, TRANSITION_WIDTH);
        out.push(b' ');
        write_duration_column(out, t.in_old_ns);
        out.push(b' ');
        write_duration_column(out, t.age_ns);
        out.push(b'\n');
    }
}

/// Who and where, shared by every per-socket record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub local: IpAddr,
    pub lport: u16,
    pub remote: IpAddr,
    pub rport: u16,
}

impl HumanFormat {
    /// TIME, PID, COMM and both endpoints, each followed by a space.
    pub fn write_prefix(
        &mut self,
        out: &mut Vec<u8>,
        clock: &Clock,
        ktime_ns: u64,
        pid: Option<u32>,
        comm: &[u8],
        ends: Endpoints,
    ) {
        clock.write_local_time(out, ktime_ns);
        out.push(b' ');
        match pid {
            Some(pid) => pad_left(out, itoa::Buffer::new().format(pid).as_bytes(), 7),
            None => pad_left(out, b"-", 7),
        }
        out.push(b' ');
        pad_right(out, if comm.is_empty() { b"-" } else { comm }, 15);
        out.push(b' ');
        self.write_endpoints(out, ends);
    }

    /// Both endpoints, each padded to the column and followed by a space.
    pub fn write_endpoints(&mut self, out: &mut Vec<u8>, ends: Endpoints) {
        // An address wider than the column widens it for the rest of the run
        // so that later lines stay aligned with each other.
        for (addr, port) in [(ends.local, ends.lport), (ends.remote, ends.rport)] {
            let start = out.len();
            write_endpoint(out, addr, port);
            let len = out.len() - start;
            if len > self.addr_width {
                self.addr_width = WIDE_ADDR.max(len);
            }
            pad_to(out, start, self.addr_width);
            out.push(b' ');
        }
    }

    pub fn addr_width(&self) -> usize {
        self.addr_width
    }
}

/// `{"type":"<kind>","time":..,"ktime_ns":..,"pid":..,"comm":..,
/// "owner_known":..,"family":..,"laddr":..,"lport":..,"raddr":..,"rport":..,
/// "netns":..` without the closing brace.
#[allow(clippy::too_many_arguments)]
pub fn write_json_prefix(
    out: &mut Vec<u8>,
    kind: &str,
    clock: &Clock,
    ktime_ns: u64,
    pid: Option<u32>,
    comm: &[u8],
    ends: Endpoints,
    netns: u32,
) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"time\":\"");
    clock.write_rfc3339(out, ktime_ns);
    out.extend_from_slice(b"\",\"ktime_ns\":");
    out.extend_from_slice(num.format(ktime_ns).as_bytes());
    out.extend_from_slice(b",\"pid\":");
    out.extend_from_slice(num.format(pid.unwrap_or(0)).as_bytes());
    out.extend_from_slice(b",\"comm\":");
    write_json_string(out, comm);
    out.extend_from_slice(b",\"owner_known\":");
    out.extend_from_slice(if pid.is_some() { b"true" } else { b"false" });
    out.extend_from_slice(if ends.local.is_ipv6() {
        b",\"family\":\"ipv6\",\"laddr\":\""
    } else {
        b",\"family\":\"ipv4\",\"laddr\":\""
    });
    write_addr(out, ends.local);
    out.extend_from_slice(b"\",\"lport\":");
    out.extend_from_slice(num.format(ends.lport).as_bytes());
    out.extend_from_slice(b",\"raddr\":\"");
    write_addr(out, ends.remote);
    out.extend_from_slice(b"\",\"rport\":");
    out.extend_from_slice(num.format(ends.rport).as_bytes());
    out.extend_from_slice(b",\"netns\":");
    out.extend_from_slice(num.format(netns).as_bytes());
}

pub fn write_endpoint(out: &mut Vec<u8>, addr: IpAddr, port: u16) {
    if addr.is_ipv6() {
        out.push(b'[');
        write_addr(out, addr);
        out.push(b']');
    } else {
        write_addr(out, addr);
    }
    out.push(b':');
    out.extend_from_slice(itoa::Buffer::new().format(port).as_bytes());
}

pub fn pad_to(out: &mut Vec<u8>, start: usize, width: usize) {
    let len = out.len() - start;
    out.extend(std::iter::repeat_n(b' ', width.saturating_sub(len)));
}

pub fn pad_right(out: &mut Vec<u8>, text: &[u8], width: usize) {
    let start = out.len();
    out.extend_from_slice(text);
    pad_to(out, start, width);
}

pub fn pad_left(out: &mut Vec<u8>, text: &[u8], width: usize) {
    out.extend(std::iter::repeat_n(b' ', width.saturating_sub(text.len())));
    out.extend_from_slice(text);
}

pub fn write_duration_column(out: &mut Vec<u8>, ns: Option<u64>) {
    let mut cell = [0u8; 16];
    let len = match ns {
        Some(ns) => {
            let mut cursor = std::io::Cursor::new(&mut cell[..]);
            write_duration(&mut cursor, ns);
            cursor.position() as usize
        }
        None => {
            cell[0] = b'-';
            1
        }
    };
    pad_left(out, &cell[..len], 9);
}

/// `812ns`, `12.3us`, `4.56ms`, `1.234s`, `61.2s`
pub fn write_duration(out: &mut impl Write, ns: u64) {
    let _ = match ns {
        0..1_000 => write!(out, "{ns}ns"),
        1_000..1_000_000 => write!(out, "{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => write!(out, "{:.2}ms", ns as f64 / 1e6),
        _ => write!(out, "{:.3}s", ns as f64 / 1e9),
    };
}

pub fn write_json_transition(out: &mut Vec<u8>, clock: &Clock, t: &Transition) {
    write_json_prefix(
        out,
        "transition",
        clock,
        t.ktime_ns,
        t.pid,
        t.comm(),
        t.endpoints(),
        t.netns,
    );
    out.extend_from_slice(b",\"old\":\"");
    out.extend_from_slice(state::name(t.old).as_bytes());
    out.extend_from_slice(b"\",\"new\":\"");
    out.extend_from_slice(state::name(t.new).as_bytes());
    out.extend_from_slice(b"\",\"in_old_ns\":");
    write_json_opt_u64(out, t.in_old_ns);
    out.extend_from_slice(b",\"age_ns\":");
    write_json_opt_u64(out, t.age_ns);
    out.extend_from_slice(b",\"timewait\":");
    out.extend_from_slice(match t.timewait {
        Timewait::Handoff => b"true",
        Timewait::NotHandoff | Timewait::NotApplicable => b"false",
        Timewait::Unknown => b"null",
    });
    out.extend_from_slice(b",\"timewait_socket\":");
    out.extend_from_slice(if t.timewait_socket { b"true" } else { b"false" });
    out.extend_from_slice(b",\"end\":");
    write_json_opt_str(out, end_name(t.end));
    out.extend_from_slice(b",\"sk\":\"0x");
    write_hex(out, t.skaddr);
    out.extend_from_slice(b"\"}\n");
}

pub fn write_json_opt_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(text) => {
            out.push(b'"');
            escape_into(out, text);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// An address as text; IPv4 without the formatting machinery (hot path).
pub fn write_addr(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            let mut num = itoa::Buffer::new();
            let [a, b, c, d] = a.octets();
            out.extend_from_slice(num.format(a).as_bytes());
            for octet in [b, c, d] {
                out.push(b'.');
                out.extend_from_slice(num.format(octet).as_bytes());
            }
        }
        IpAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// Lower-case hex without leading zeros.
fn write_hex(out: &mut Vec<u8>, value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [b'0'; 16];
    let mut i = buf.len();
    let mut v = value;
    loop {
        i -= 1;
        buf[i] = DIGITS[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

pub fn write_json_opt_u64(out: &mut Vec<u8>, value: Option<u64>) {
    match value {
        Some(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string from bytes that are normally ASCII (a task's comm). Bytes
/// that are not valid UTF-8 become U+FFFD.
pub fn write_json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    match std::str::from_utf8(bytes) {
        Ok(text) => escape_into(out, text),
        Err(_) => escape_into(out, &String::from_utf8_lossy(bytes)),
    }
    out.push(b'"');
}

fn escape_into(out: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 | 0x7f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{bytes_of, raw_event};
    use tcptrace_common::{tcp_state::*, *};

    fn clock() -> Clock {
        // ktime 1_000_000_123 ns == 2026-11-25T17:58:01.000000123Z
        Clock::fixed(1_795_629_480_000_000_000, 0)
    }

    fn transition(family: u16, old: u8, new: u8, flags: u8) -> Transition {
        Transition::decode(bytes_of(&raw_event(family, old, new, flags))).unwrap()
    }

    const ALL_KNOWN: u8 = EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN;

    #[test]
    fn json_record_has_every_field() {
        let t = transition(
            AF_INET,
            FIN_WAIT2,
            CLOSE,
            ALL_KNOWN | EVENT_TIMEWAIT_CHECKED | EVENT_TIMEWAIT_HANDOFF,
        );
        let mut out = Vec::new();
        write_json_transition(&mut out, &clock(), &t);
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "transition");
        assert_eq!(v["time"], "2026-11-25T17:58:01.000000123Z");
        assert_eq!(v["ktime_ns"], 1_000_000_123u64);
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["comm"], "curl");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["laddr"], "127.0.0.1");
        assert_eq!(v["lport"], 45678);
        assert_eq!(v["raddr"], "10.1.2.3");
        assert_eq!(v["rport"], 80);
        assert_eq!(v["old"], "FIN_WAIT2");
        assert_eq!(v["new"], "CLOSE");
        assert_eq!(v["in_old_ns"], 1_500_000);
        assert_eq!(v["age_ns"], 2_000_000_000u64);
        assert_eq!(v["timewait"], true);
        assert_eq!(v["sk"], "0xffff888100001234");
    }

    #[test]
    fn json_unknowns_are_null() {
        let t = transition(AF_INET6, FIN_WAIT2, CLOSE, 0);
        let mut out = Vec::new();
        write_json_transition(&mut out, &clock(), &t);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["family"], "ipv6");
        assert_eq!(v["laddr"], "::1");
        assert_eq!(v["raddr"], "2001:db8::7");
        assert_eq!(v["pid"], 0);
        assert_eq!(v["owner_known"], false);
        assert_eq!(v["comm"], "");
        assert!(v["in_old_ns"].is_null() && v["age_ns"].is_null());
        assert!(v["timewait"].is_null());
    }

    #[test]
    fn json_escapes_comm() {
        let mut out = Vec::new();
        write_json_string(&mut out, b"a\"b\\c\x01\xff");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\u0001\u{fffd}\""
        );
    }

    #[test]
    fn human_line_marks_handoff() {
        let t = transition(
            AF_INET,
            FIN_WAIT2,
            CLOSE,
            ALL_KNOWN | EVENT_TIMEWAIT_CHECKED | EVENT_TIMEWAIT_HANDOFF,
        );
        let mut human = HumanFormat::new(false);
        let mut out = Vec::new();
        human.write_transition(&mut out, &clock(), &t);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(
            line,
            "17:58:01.000000    4242 curl            127.0.0.1:45678       10.1.2.3:80           \
             FIN_WAIT2 -> CLOSE [timewait]       1.50ms    2.000s\n"
        );
    }

    #[test]
    fn human_line_widens_for_ipv6_and_dashes_unknowns() {
        let t = transition(AF_INET6, CLOSE_WAIT, LAST_ACK, 0);
        let mut human = HumanFormat::new(false);
        let mut out = Vec::new();
        human.write_transition(&mut out, &clock(), &t);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains("      - -               [::1]:45678"),
            "{line}"
        );
        assert!(line.contains("[2001:db8::7]:80"));
        assert!(line.trim_end().ends_with("-         -"), "{line}");
        assert_eq!(human.addr_width, NARROW_ADDR, "short IPv6 addresses fit");
        let mut wide = HumanFormat::new(true);
        let mut header = Vec::new();
        wide.write_header(&mut header);
        assert!(header.len() > 2 * WIDE_ADDR);
        let _ = &mut wide;
    }

    #[test]
    fn hex_and_addresses() {
        let text = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            f(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(&|o| write_hex(o, 0)), "0");
        assert_eq!(
            text(&|o| write_hex(o, 0xffff_8881_0abc_0000)),
            "ffff88810abc0000"
        );
        assert_eq!(
            text(&|o| write_addr(o, "10.0.255.1".parse().unwrap())),
            "10.0.255.1"
        );
        assert_eq!(
            text(&|o| write_endpoint(o, "fe80::1".parse().unwrap(), 443)),
            "[fe80::1]:443"
        );
    }

    #[test]
    fn durations() {
        let text = |ns| {
            let mut out = Vec::new();
            write_duration(&mut out, ns);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(812), "812ns");
        assert_eq!(text(12_345), "12.3us");
        assert_eq!(text(4_560_000), "4.56ms");
        assert_eq!(text(61_200_000_000), "61.200s");
    }
}
