//! The one printer layer: every command prints through it, and it imports
//! no command (commands call the printer, not the reverse).
//!
//! - `mod.rs`: the record types the printer is fed that have no other home
//!   (`Endpoints`, `ConnectionRecord`), the per-event `Format`, and the
//!   sinks: `Sink` (stdout, written once per drained batch), `write_stdout`
//!   (headers, one-shot reports) and `write_stderr` (human summaries).
//! - `json.rs`: one schema per JSON record type (transition, connection,
//!   lost, summary, the view snapshots).
//! - `human.rs`: the columns and the human summaries.
//!
//! The per-event path (transition and connection lines) appends to a
//! reusable `Vec<u8>`: no allocation, no write(2) per event. A closed
//! stdout comes back as a broken-pipe error, which `error::report` turns
//! into a quiet exit 0.
use std::{
    fs::File,
    io::{self, Write},
    os::fd::AsFd,
};

use anyhow::{Context, Result};

use crate::{cgroups::Cgroup, clock::Clock, decode::Transition};

pub mod human;
pub mod json;
#[cfg(test)]
mod readme;

/// What the printer's unit tests build their records from.
#[cfg(test)]
mod fixtures {
    use crate::{
        clock::Clock,
        decode::{
            tests::{bytes_of, raw_event},
            Transition,
        },
    };
    use tcptrace_common::{EVENT_AGE_KNOWN, EVENT_IN_OLD_KNOWN, EVENT_OWNER_KNOWN};

    pub fn clock() -> Clock {
        // ktime 1_000_000_123 ns == 2026-11-25T17:58:01.000000123Z
        Clock::fixed(1_795_629_480_000_000_000, 0)
    }

    pub fn transition(family: u16, old: u8, new: u8, flags: u8) -> Transition {
        Transition::decode(bytes_of(&raw_event(family, old, new, flags))).unwrap()
    }

    pub const ALL_KNOWN: u8 = EVENT_OWNER_KNOWN | EVENT_IN_OLD_KNOWN | EVENT_AGE_KNOWN;
}

pub use human::HumanFormat;

pub use crate::decode::Endpoints;

/// The owner's cgroup as the printer shows it: its id (0: unknown) and,
/// once the hierarchy named it, its path and container.
#[derive(Clone, Copy, Debug, Default)]
pub struct OwnerCgroup<'a> {
    pub id: u64,
    pub name: Option<&'a Cgroup>,
}

/// What a `connection` record (`life`) says, as the printer is fed it.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionRecord<'a> {
    pub ktime_ns: u64,
    pub pid: Option<u32>,
    pub comm: &'a [u8],
    pub ends: Endpoints,
    pub netns: u32,
    pub closer: Option<&'static str>,
    pub start_seen: bool,
    pub handshake_ns: Option<u64>,
    pub established_ns: Option<u64>,
    pub closing_ns: Option<u64>,
    pub time_wait_ns: Option<u64>,
    /// The whole lifetime, when its start was seen.
    pub lifetime_ns: Option<u64>,
    /// How long it was seen (the lifetime's lower bound when the start was
    /// not seen).
    pub seen_for_ns: u64,
    pub end: Option<&'static str>,
    pub cgroup: OwnerCgroup<'a>,
}

/// How per-event records are printed.
pub enum Format {
    Human(HumanFormat),
    Json,
}

impl Format {
    pub fn new(json: bool, wide: bool) -> Self {
        if json {
            Format::Json
        } else {
            Format::Human(HumanFormat::new(wide))
        }
    }

    #[inline]
    pub fn write_transition(
        &mut self,
        out: &mut Vec<u8>,
        clock: &Clock,
        t: &Transition,
        cgroup: OwnerCgroup,
    ) {
        match self {
            Format::Human(human) => human.write_transition(out, clock, t, cgroup),
            Format::Json => json::write_transition(out, clock, t, cgroup),
        }
    }

    #[inline]
    pub fn write_connection(&mut self, out: &mut Vec<u8>, clock: &Clock, c: &ConnectionRecord) {
        match self {
            Format::Human(human) => human.write_connection(out, clock, c),
            Format::Json => json::write_connection(out, clock, c),
        }
    }

    pub fn is_json(&self) -> bool {
        matches!(self, Format::Json)
    }
}

/// Stdout for a session: records are appended to `buf` and written with
/// one write(2) per `flush`.
pub struct Sink {
    out: File,
    pub buf: Vec<u8>,
}

impl Sink {
    /// A duplicate of stdout with room for `capacity` bytes per batch.
    pub fn stdout(capacity: usize) -> Result<Self> {
        let stdout = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating stdout")?;
        Ok(Sink {
            out: File::from(stdout),
            buf: Vec::with_capacity(capacity),
        })
    }

    pub fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf).context("writing to stdout")?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Writes directly to stdout (headers before the loop starts, one-shot
/// reports).
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    io::stdout()
        .write_all(bytes)
        .and_then(|()| io::stdout().flush())
        .context("writing to stdout")
}

/// Human summaries and loss lines. A closed stderr is not an error.
pub fn write_stderr(bytes: &[u8]) {
    let _ = io::stderr().write_all(bytes);
}

#[cfg(test)]
mod tests {
    /// Commands call the printer, never the reverse.
    #[test]
    fn printing_imports_no_command() {
        const COMMANDS: [&str; 10] = [
            "census", "cli", "doctor", "hist", "life", "live", "session", "stuck", "tail", "lib",
        ];
        for (file, text) in [
            ("mod.rs", include_str!("mod.rs")),
            ("json.rs", include_str!("json.rs")),
            ("human.rs", include_str!("human.rs")),
            ("snapshot.rs", include_str!("../snapshot.rs")),
        ] {
            let code = text.split("#[cfg(test)]").next().unwrap();
            for command in COMMANDS {
                for needle in [format!("crate::{command}"), format!("    {command}::")] {
                    assert!(!code.contains(&needle), "{file} imports {command}");
                }
            }
        }
    }
}
