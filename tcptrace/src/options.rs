//! Validated options the commands share, built from the flags by `flags`.
use std::time::Duration;

/// Output format and run length.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    /// JSON Lines instead of human columns.
    pub json: bool,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
}

/// The human table of commands that print one line per socket.
#[derive(Clone, Copy, Debug)]
pub struct Columns {
    /// Columns wide enough for any IPv6 address from the start.
    pub wide: bool,
    pub header: bool,
}

/// How a live table refreshes.
#[derive(Clone, Copy, Debug)]
pub struct Refresh {
    pub interval: Duration,
    /// One snapshot, then exit.
    pub once: bool,
}
