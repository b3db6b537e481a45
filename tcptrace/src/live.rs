//! What `stuck`, `census` and `doctor` share: a probe that reports every
//! transition, the socket table seeded from the kernel's and kept up to
//! date, and a table redrawn in place on a terminal.
use std::{
    io::{IsTerminal, Write},
    time::Duration,
};

use anyhow::Result;

use crate::{
    clock::Clock,
    decode::{Record, Transition},
    error::note,
    printer,
    probe::Probe,
    probe::ProbeOptions,
    session,
    sockets::{self, walk_with_owners, Scope, SocketTable, TimewaitCounts, DEFAULT_MAX_SOCKETS},
    summary::{RunContext, TableTally},
};

/// The socket table and the event counts of one run.
pub struct Tracked {
    pub table: SocketTable,
    pub counts: TimewaitCounts,
    pub bad_records: u64,
    /// Whether timewait sockets are followed (else TIME_WAIT is re-read
    /// from the kernel's table at each refresh).
    pub timewait_followed: bool,
    last_owner_lookup_ns: u64,
}

impl Tracked {
    pub fn new(table: SocketTable, timewait_followed: bool) -> Self {
        Tracked {
            table,
            counts: TimewaitCounts::default(),
            bad_records: 0,
            timewait_followed,
            last_owner_lookup_ns: 0,
        }
    }

    pub fn record(&mut self, data: &[u8]) {
        match Record::decode(data) {
            Ok(Record::Transition(t)) => {
                self.apply(&t);
            }
            _ => self.bad_records += 1,
        }
    }

    /// One decoded transition; whether it was in scope (and applied).
    pub fn apply(&mut self, t: &Transition) -> bool {
        let covered = self.table.scope().covers(t.netns);
        if covered {
            self.counts.note(t);
            self.table.apply(t);
        }
        covered
    }

    /// Before a refresh: owners of full sockets in `states` that the
    /// events did not give (e.g. accepted through a listener whose owner
    /// was unknown), looked up by inode at most every 5 s.
    pub fn find_missing_owners(&mut self, states: &[u8]) {
        let now = Clock::now_ktime_ns();
        if self.table.ownerless(states) == 0
            || now.saturating_sub(self.last_owner_lookup_ns) < 5_000_000_000
        {
            return;
        }
        self.last_owner_lookup_ns = now;
        if let Ok((walked, owners)) = walk_with_owners(self.table.scope()) {
            self.table.adopt_owners(&walked, &owners);
        }
    }
}

/// Loads the probe, then walks the kernel's socket table: whatever
/// changes during the walk is in the ring and applied after it.
pub async fn start(probe: &ProbeOptions, scope: Scope) -> Result<(Probe, Tracked)> {
    let probe = session::start_probe(probe)?;
    let tracked = seed(scope, probe.timewait.hooked())?;
    if !tracked.timewait_followed {
        note!("tcptrace: warning: timewait sockets are not followed live: TIME_WAIT counts are those of the start-up walk");
    }
    Ok((probe, tracked))
}

/// The table from the kernel's alone (no probe).
pub fn seed(scope: Scope, timewait_followed: bool) -> Result<Tracked> {
    let mut table = SocketTable::new(scope, DEFAULT_MAX_SOCKETS);
    let start_ns = Clock::now_ktime_ns();
    let (walked, owners) = walk_with_owners(scope)?;
    let end_ns = Clock::now_ktime_ns();
    table.seed(&walked, &owners, start_ns, end_ns);
    let mut tracked = Tracked::new(table, timewait_followed);
    tracked.last_owner_lookup_ns = end_ns;
    Ok(tracked)
}

/// Redraws in place on a terminal; elsewhere, snapshots one after the
/// other separated by a blank line. The cursor is hidden while drawing
/// and shown again on the way out.
pub struct Screen {
    tty: bool,
    drawn: bool,
}

impl Screen {
    pub fn new(json: bool) -> Self {
        Screen {
            tty: !json && std::io::stdout().is_terminal(),
            drawn: false,
        }
    }

    pub fn begin(&mut self, out: &mut Vec<u8>) {
        if self.tty {
            if !self.drawn {
                out.extend_from_slice(b"\x1b[?25l");
            }
            out.extend_from_slice(b"\x1b[H\x1b[2J");
        } else if self.drawn {
            out.push(b'\n');
        }
        self.drawn = true;
    }

    pub fn end(&mut self, out: &mut Vec<u8>) {
        if self.tty && self.drawn {
            out.extend_from_slice(b"\x1b[?25h");
            self.tty = false;
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.tty && self.drawn {
            let _ = std::io::stdout().write_all(b"\x1b[?25h");
            let _ = std::io::stdout().flush();
        }
    }
}

/// How often a view refreshes: at once for `--once`.
pub fn refresh_every(once: bool, interval: Duration) -> Duration {
    if once {
        Duration::from_millis(1)
    } else {
        interval
    }
}

/// The end of a run: the JSON summary, or what was missed on stderr.
pub fn finish(json: bool, tracked: &Tracked, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) {
    let tally = TableTally {
        events: tracked.counts.events,
        sockets: tracked.table.len(),
        sockets_dropped: tracked.table.dropped,
        bad_records: tracked.bad_records,
    };
    if json {
        printer::json::write_table_summary(out, clock, &tally, ctx);
    } else {
        let mut text = Vec::new();
        printer::human::write_table_summary(&mut text, &tally, DEFAULT_MAX_SOCKETS, ctx);
        printer::write_stderr(&text);
    }
}

/// Re-reads the timewait sockets from the kernel when the hooks that
/// follow them are not attached.
/// Also re-reads the timewait sockets found in FIN_WAIT2 by the start-up
/// walk, whose move to TIME_WAIT the probe cannot see (it has no record of
/// them), until none is left.
pub fn resync_timewait(tracked: &mut Tracked) {
    if tracked.timewait_followed && !tracked.table.has_walked_fin_wait2() {
        return;
    }
    if let Ok(walked) = sockets::walk(tracked.table.scope()) {
        if tracked.timewait_followed {
            tracked.table.update_walked_fin_wait2(&walked);
        } else {
            tracked.table.replace_timewait(&walked);
        }
    }
}
