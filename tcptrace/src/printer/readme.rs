//! The README's JSON examples, pinned: each is checked against what the
//! printer writes for the record it describes, and every example must be
//! covered here.
//!
//! - The indented examples (transition, connection, histogram) are checked
//!   byte for byte; `..` and `...` in them stand for any text.
//! - The inline ones (`{"type":"lost",...}`, key lists such as
//!   `{"type":"stuck","state","pid",...}`) name keys in order, some with
//!   values: each key must be in the record, in that order (others may sit
//!   between them), with the value given, if any; `N`, `..` and `...` stand
//!   for any value.
use std::{net::IpAddr, time::Duration};

use serde_json::Value;
use tcptrace_common::{tcp_state::*, *};

use super::{json, ConnectionRecord, Endpoints, OwnerCgroup};
use crate::{
    cgroups::Cgroup,
    clock::Clock,
    decode::{tests::raw_event, Transition},
    probe::LossCounters,
    snapshot::{Counts, Facts, Histogram, Key, KeyValue, StuckRow},
    sockets::{Owner, Tuple},
    summary::{RunContext, RunStats},
};

const README: &str = include_str!("../../../README.md");

/// `ktime_ns` 5418615219511 is 2026-11-25T19:20:51.921580109Z.
fn clock() -> Clock {
    Clock::fixed(1_795_629_033_306_360_598, 0)
}

/// The indented examples, continuation lines joined.
fn block_examples() -> Vec<String> {
    let mut examples = Vec::new();
    let mut lines = README.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(first) = line.strip_prefix("    {\"type\":") else {
            continue;
        };
        let mut example = format!("{{\"type\":{first}");
        while let Some(next) = lines.peek() {
            match next.strip_prefix("     ") {
                Some(rest) if !rest.starts_with(' ') => {
                    example.push_str(rest);
                    lines.next();
                }
                _ => break,
            }
        }
        examples.push(example);
    }
    examples
}

/// The inline examples: code spans that start with `{"type":`, line
/// breaks inside them removed.
fn inline_examples() -> Vec<String> {
    let text: String = README
        .lines()
        .filter(|l| !l.starts_with("    "))
        .collect::<Vec<_>>()
        .join("\n");
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.starts_with("{\"type\":"))
        .map(|span| span.replace('\n', ""))
        .collect()
}

fn type_of(example: &str) -> &str {
    let rest = &example["{\"type\":\"".len()..];
    &rest[..rest.find('"').expect("a quoted type")]
}

/// `text` matches `pattern`, where runs of two or more dots are wildcards.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let mut pieces = Vec::new();
    let mut rest = pattern;
    while let Some(at) = rest.find("..") {
        pieces.push(&rest[..at]);
        rest = rest[at..].trim_start_matches('.');
    }
    pieces.push(rest);
    if pieces.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut middle = &text[first.len()..text.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match middle.find(piece) {
            Some(at) => middle = &middle[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// An inline example's shape: keys in order, with a value or not.
#[derive(Debug)]
enum Spec {
    Any,
    Str(String),
    Bare(String),
    Object(Vec<(String, Option<Spec>)>),
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> u8 {
        self.text.get(self.at).copied().unwrap_or(0)
    }

    fn eat(&mut self, b: u8) {
        assert_eq!(self.peek() as char, b as char, "at {}", self.at);
        self.at += 1;
    }

    fn string(&mut self) -> String {
        self.eat(b'"');
        let start = self.at;
        while self.peek() != b'"' {
            self.at += 1;
        }
        let s = String::from_utf8(self.text[start..self.at].to_vec()).unwrap();
        self.at += 1;
        s
    }

    fn bare(&mut self) -> String {
        let start = self.at;
        while !matches!(self.peek(), b',' | b'}' | b']' | 0) {
            self.at += 1;
        }
        String::from_utf8(self.text[start..self.at].to_vec()).unwrap()
    }

    fn value(&mut self) -> Spec {
        match self.peek() {
            b'{' => self.object(),
            b'"' => Spec::Str(self.string()),
            _ => match self.bare().as_str() {
                "N" | ".." | "..." => Spec::Any,
                other => Spec::Bare(other.to_string()),
            },
        }
    }

    fn object(&mut self) -> Spec {
        self.eat(b'{');
        let mut items = Vec::new();
        loop {
            if self.peek() == b'.' {
                self.bare();
            } else {
                let key = self.string();
                let value = (self.peek() == b':').then(|| {
                    self.at += 1;
                    self.value()
                });
                items.push((key, value));
            }
            match self.peek() {
                b',' => self.at += 1,
                _ => break,
            }
        }
        self.eat(b'}');
        Spec::Object(items)
    }
}

fn check(spec: &Spec, value: &Value, path: &str) {
    match spec {
        Spec::Any => {}
        Spec::Str(s) => assert_eq!(value.as_str(), Some(s.as_str()), "{path}"),
        Spec::Bare(b) => assert_eq!(value.to_string(), *b, "{path}"),
        Spec::Object(items) => {
            let map = value
                .as_object()
                .unwrap_or_else(|| panic!("{path}: not an object"));
            let keys: Vec<&String> = map.keys().collect();
            let mut after = 0;
            for (key, spec) in items {
                let at = keys
                    .iter()
                    .position(|k| *k == key)
                    .unwrap_or_else(|| panic!("{path}.{key}: missing in {value}"));
                assert!(at >= after, "{path}.{key}: out of order in {value}");
                after = at;
                if let Some(spec) = spec {
                    check(spec, &map[key], &format!("{path}.{key}"));
                }
            }
        }
    }
}

fn ends(local: &str, lport: u16, remote: &str, rport: u16) -> Endpoints {
    Endpoints {
        local: local.parse().unwrap(),
        lport,
        remote: remote.parse().unwrap(),
        rport,
    }
}

fn context() -> RunContext<'static> {
    RunContext {
        capture_span: None,
        losses: LossCounters::default(),
        timewait_detection: "exact",
        hooks: vec!["tp_btf/inet_sock_set_state".into()],
        probe_handoffs: 0,
        probe_emitted: 0,
        probe_connections: 0,
        records_evicted: 0,
        run_stats: Vec::new(),
    }
}

/// The printer's lines for the record type the README describes.
fn printed(kind: &str) -> Vec<u8> {
    let clock = clock();
    let mut out = Vec::new();
    match kind {
        "transition" => {
            let mut ev = raw_event(
                AF_INET,
                FIN_WAIT2,
                TIME_WAIT,
                EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN | EVENT_TIMEWAIT_SOCKET,
            );
            ev.ktime_ns = 5_418_615_219_511;
            ev.pid = 28252;
            ev.comm = [0; COMM_LEN];
            ev.comm[..7].copy_from_slice(b"python3");
            ev.laddr = [0; 16];
            ev.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            ev.raddr = ev.laddr;
            ev.lport = 44136;
            ev.rport = 5556;
            ev.netns = 4026532177;
            ev.in_old_ns = 49_281_693;
            ev.age_ns = 55_370_000;
            ev.skaddr = 0xffff_8881_234c_8000;
            ev.cgroup = 5210;
            let t = Transition::decode(crate::decode::tests::bytes_of(&ev)).unwrap();
            let name = Cgroup::new("/system.slice/docker-3f4e5d6c7b8a99887766554433221100ffeeddccbbaa00112233445566778899.scope");
            let cgroup = OwnerCgroup {
                id: 5210,
                name: Some(&name),
            };
            json::write_transition(&mut out, &clock, &t, cgroup);
        }
        "connection" => json::write_connection(
            &mut out,
            &clock,
            &ConnectionRecord {
                ktime_ns: 5_418_615_219_511,
                pid: Some(28252),
                comm: b"python3",
                ends: ends("127.0.0.1", 44136, "127.0.0.1", 5556),
                netns: 4026532177,
                closer: Some("local"),
                start_seen: true,
                handshake_ns: Some(50976),
                established_ns: Some(5118838),
                closing_ns: Some(50232042),
                time_wait_ns: Some(986996607),
                lifetime_ns: Some(1042398463),
                seen_for_ns: 1042398463,
                end: Some("killed"),
                cgroup: OwnerCgroup {
                    id: 5210,
                    name: Some(&Cgroup::new("/user.slice/user-1000.slice/session-3.scope")),
                },
            },
        ),
        "histogram" => {
            let mut h = Histogram::empty();
            h.count = 3;
            h.max_ns = 140_540_333;
            for i in [25, 26, 27] {
                h.buckets[i] = 1;
            }
            json::write_histogram(&mut out, metric::CLOSE_WAIT, &KeyValue::Port(5556), &h);
        }
        "lost" => {
            let now = LossCounters {
                ring_full: 2,
                ..Default::default()
            };
            json::write_lost(&mut out, &clock, &LossCounters::default(), &now);
        }
        "summary" => json::write_summary(&mut out, &clock, &RunStats::new(), &context()),
        "stuck_snapshot" | "stuck" | "stuck_process" | "stuck_group" => {
            let mut comm = [0u8; COMM_LEN];
            comm[..6].copy_from_slice(b"server");
            let owner = Owner {
                pid: 7,
                comm,
                cgroup: 812,
            };
            let local: IpAddr = "127.0.0.1".parse().unwrap();
            let rows = [StuckRow {
                tuple: Tuple {
                    netns: 1,
                    local,
                    lport: 5556,
                    remote: local,
                    rport: 40000,
                },
                state: CLOSE_WAIT,
                owner: Some(owner),
                orphaned: false,
                age_ns: 6_000_000_000,
                age_at_least: false,
                cgroup: Some(Cgroup::new("/system.slice/nginx.service")),
            }];
            let processes = [(Some(owner), [1, 0, 0, 0])].into_iter().collect();
            json::write_stuck(
                &mut out,
                &clock,
                0,
                Duration::from_secs(5),
                &rows,
                &crate::snapshot::StuckCounts {
                    processes,
                    groups: Some(crate::snapshot::GroupCounts {
                        by: "container",
                        counts: [("nginx.service".to_string(), [1, 0, 0, 0])].into(),
                    }),
                },
            );
        }
        "census" => {
            let top = vec![(TIME_WAIT, vec![(Key::Port(443), 2)])];
            json::write_census(
                &mut out,
                &clock,
                0,
                Some(1),
                &Counts::default(),
                Some(("rport", &top)),
            );
        }
        "doctor" => json::write_doctor(&mut out, &Facts::default(), &[], 1),
        other => {
            panic!("the README shows a JSON record of type {other:?} that this test does not cover")
        }
    }
    out
}

/// The printed line of type `kind` (a call may print several).
fn line_of(kind: &str) -> String {
    let out = String::from_utf8(printed(kind)).unwrap();
    assert!(out.ends_with('\n'), "{out}");
    let prefix = format!("{{\"type\":\"{kind}\",");
    out.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {kind} line in {out}"))
        .to_string()
}

#[test]
fn readme_block_examples_are_what_the_printer_writes() {
    let examples = block_examples();
    let kinds: Vec<&str> = examples.iter().map(|e| type_of(e)).collect();
    assert_eq!(kinds, ["connection", "histogram", "transition"]);
    for example in &examples {
        let line = line_of(type_of(example));
        assert!(
            glob_matches(example, &line),
            "README:  {example}\nprinter: {line}"
        );
    }
    // The transition example has no placeholder: it is the exact line.
    let transition = examples.iter().find(|e| type_of(e) == "transition");
    assert_eq!(
        printed("transition"),
        format!("{}\n", transition.unwrap()).into_bytes()
    );
}

#[test]
fn readme_inline_examples_name_the_printers_keys() {
    let examples = inline_examples();
    let kinds: Vec<&str> = examples.iter().map(|e| type_of(e)).collect();
    for kind in [
        "lost",
        "summary",
        "stuck_snapshot",
        "stuck",
        "stuck_process",
        "census",
        "doctor",
    ] {
        assert!(kinds.contains(&kind), "no inline {kind} example: {kinds:?}");
    }
    for example in &examples {
        let spec = Parser {
            text: example.as_bytes(),
            at: 0,
        }
        .object();
        let line = line_of(type_of(example));
        let value: Value = serde_json::from_str(&line).unwrap();
        check(&spec, &value, type_of(example));
    }
}

#[test]
fn glob_and_parser_work() {
    assert!(glob_matches(
        "{\"a\":..,\"b\":\"...\"}",
        "{\"a\":12,\"b\":\"x\"}"
    ));
    assert!(!glob_matches("{\"a\":..,\"b\":1}", "{\"a\":12,\"b\":2}"));
    assert!(glob_matches("10.0.0.1", "10.0.0.1"));
    let spec = Parser {
        text: br#"{"type":"x","n":N,"o":{"a","b"},...}"#,
        at: 0,
    }
    .object();
    check(
        &spec,
        &serde_json::json!({"type": "x", "n": 3, "o": {"a": 1, "c": 0, "b": 2}, "z": 1}),
        "x",
    );
}
