//! Where a view's records come from: the live probe, or a capture read
//! back (`-r`). Opened before the view prints anything, so that a probe
//! that cannot load or a file that is no capture fails with nothing on
//! stdout.
use anyhow::Result;

use crate::{
    cgroups::{Hierarchy, Names},
    probe::{Probe, ProbeOptions},
    replay::{Replay, ReplayOptions},
    session::{self, SessionOptions, View},
};

/// Where a view's records come from, as the flags chose.
#[derive(Clone)]
pub enum Source {
    /// The probe, live.
    Live(ProbeOptions),
    /// A capture (`-r`).
    Capture(ReplayOptions),
}

/// A source ready to run a view: the probe loaded and attached, or the
/// capture's files opened and checked.
/// Both boxed: a loaded probe is hundreds of bytes, a capture's filter (a
/// probe configuration) 16 KiB of port bitmaps.
pub enum Opened {
    Live(Box<Probe>),
    Capture(Box<Replay>),
}

impl Source {
    pub fn open(self) -> Result<Opened> {
        Ok(match self {
            Source::Live(probe) => Opened::Live(Box::new(session::start_probe(&probe)?)),
            Source::Capture(capture) => Opened::Capture(Box::new(Replay::open(capture)?)),
        })
    }
}

impl Opened {
    /// Names for the owners' cgroup ids: this host's hierarchy, live; the
    /// capture's own table when reading one (the ids are the recording
    /// host's).
    pub fn cgroup_names(&self) -> Names {
        match self {
            Opened::Live(_) => Names::new(Hierarchy::find()),
            Opened::Capture(_) => Names::empty(),
        }
    }

    /// Feeds `view` until the live session ends (`options`) or the
    /// capture's records are all read.
    pub async fn run(self, view: &mut impl View, options: SessionOptions) -> Result<()> {
        match self {
            Opened::Live(probe) => session::run(*probe, view, options).await,
            Opened::Capture(replay) => replay.run(view),
        }
    }
}
