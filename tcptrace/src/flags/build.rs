//! From flags to the commands' validated options. The one place that turns
//! filters and probe flags into the probe's configuration.
use anyhow::Result;
use tcptrace_common::{
    hist_by, ProbeConfig, CONFIG_CGROUP_FILTER, CONFIG_EMIT_CONNECTIONS, CONFIG_EMIT_TRANSITIONS,
    CONFIG_HANDOFF_ONLY, CONFIG_HIDE_HANDOFFS, CONFIG_HISTOGRAMS, CONFIG_IPV4, CONFIG_IPV6,
    CONFIG_LPORT_FILTER, CONFIG_NETNS_FILTER, CONFIG_PID_FILTER, CONFIG_PORT_EITHER,
    CONFIG_RPORT_FILTER, CONFIG_TIMEWAIT_EVENTS,
};

use super::defs::{
    CensusFlags, Cli, Columns, Command as Sub, Common, DoctorFlags, Filters, HistFlags, LifeFlags,
    Output, ProbeFlags, ReadFlags, RecordFlags, Refresh, ReportFlags, ServeFlags, StuckFlags,
    TailFlags, DEFAULT_HISTOGRAM_KEYS,
};
use crate::{
    census::CensusOptions,
    cgroups::CgroupFilter,
    command::Command,
    doctor::DoctorOptions,
    error::UsageError,
    hist::{self, HistOptions},
    life::LifeOptions,
    options,
    probe::{Floor, ProbeOptions},
    record::RecordOptions,
    replay::ReplayOptions,
    report::ReportOptions,
    serve::ServeOptions,
    sockets::{current_netns, Scope},
    source::Source,
    state,
    stuck::StuckOptions,
    tail::TailOptions,
};

/// What a probe is loaded for; decides what it reports.
enum Purpose {
    /// Transitions: the headline ones, or every one (`--all`).
    Tail { all: bool },
    /// One record per finished connection.
    Life,
    /// Histograms aggregated in the kernel.
    Hist { by: u32 },
    /// Every transition, unfiltered, to keep a socket table (the views).
    Table,
    /// Everything every view needs afterwards: all transitions and the
    /// connection records (`record`).
    Capture,
}

impl Cli {
    /// The command this command line asks for, validated.
    pub fn into_command(self) -> Result<Command> {
        Ok(match self.command {
            None => Command::Tail(self.tail.into_options()?),
            Some(Sub::Life(flags)) => Command::Life(flags.into_options()?),
            Some(Sub::Hist(flags)) => Command::Hist(flags.into_options()?),
            Some(Sub::Stuck(flags)) => Command::Stuck(flags.into_options()?),
            Some(Sub::Census(flags)) => Command::Census(flags.into_options()?),
            Some(Sub::Doctor(flags)) => Command::Doctor(flags.into_options()?),
            Some(Sub::Record(flags)) => Command::Record(flags.into_options()?),
            Some(Sub::Report(flags)) => Command::Report(flags.into_options()?),
            Some(Sub::Serve(flags)) => Command::Serve(flags.into_options()?),
        })
    }
}

impl TailFlags {
    fn into_options(self) -> Result<TailOptions> {
        Ok(TailOptions {
            columns: self.columns.options(&self.common.filters),
            output: self.common.output.options(),
            source: self
                .common
                .source(Purpose::Tail { all: self.all }, &self.read)?,
        })
    }
}

impl LifeFlags {
    fn into_options(self) -> Result<LifeOptions> {
        Ok(LifeOptions {
            columns: self.columns.options(&self.common.filters),
            output: self.common.output.options(),
            source: self.common.source(Purpose::Life, &self.read)?,
        })
    }
}

impl HistFlags {
    fn into_options(self) -> Result<HistOptions> {
        let by = self.by.map_or(hist_by::NONE, hist::By::probe_value);
        let mut source = self.common.source(Purpose::Hist { by }, &self.read)?;
        if let Source::Live(probe) = &mut source {
            probe.histogram_keys = self.max_keys;
        }
        Ok(HistOptions {
            output: self.common.output.options(),
            source,
            by: self.by,
            top: self.top.max(1),
            metrics: self.metric,
            interval: self.interval,
        })
    }
}

impl RecordFlags {
    fn into_options(self) -> Result<RecordOptions> {
        if self.file_count.is_some() && self.file_size.is_none() && self.rotate_seconds.is_none() {
            return Err(UsageError(
                "-W/--file-count needs -C/--file-size or -G/--rotate-seconds".into(),
            )
            .into());
        }
        let f = &self.common.filters;
        let ports = |list: &Option<super::values::PortList>| {
            list.as_ref().map(|l| {
                l.0.iter()
                    .map(|&(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
        };
        let filters = serde_json::json!({
            "ipv4_only": f.ipv4,
            "ipv6_only": f.ipv6,
            "lport": ports(&f.lport),
            "rport": ports(&f.rport),
            "port": ports(&f.port),
            "pid": f.pid,
            "netns": f.netns,
            "cgroup": f.cgroup.path,
        });
        Ok(RecordOptions {
            output: self.common.output.options(),
            probe: ProbeOptions {
                wake_interval: crate::session::CAPTURE_WAKE_INTERVAL,
                ..self.common.probe_options(Purpose::Capture)?
            },
            rotation: crate::capture::writer::Rotation {
                path: self.write,
                max_bytes: self.file_size,
                every: self.rotate_seconds,
                keep: self.file_count.map(|n| n as usize),
            },
            queue_bytes: self.buffer_size,
            filters,
        })
    }
}

impl ReportFlags {
    fn into_options(self) -> Result<ReportOptions> {
        if self.top == 0 {
            return Err(UsageError("--top must be at least 1".into()).into());
        }
        Ok(ReportOptions {
            files: self.read,
            output: self.output,
            top: self.top,
            since: self.since,
            until: self.until,
        })
    }
}

impl StuckFlags {
    fn into_options(self) -> Result<StuckOptions> {
        Ok(StuckOptions {
            output: self.table.output.options(),
            refresh: self.refresh.options(),
            probe: self.table.probe.options(Purpose::Table.config()),
            scope: scope(self.table.all_netns)?,
            min_age: self.min_age,
            limit: self.limit.max(1),
            cgroup: self.cgroup.live()?,
            by: self.by,
        })
    }
}

impl CensusFlags {
    fn into_options(self) -> Result<CensusOptions> {
        Ok(CensusOptions {
            output: self.table.output.options(),
            refresh: self.refresh.options(),
            probe: self.table.probe.options(Purpose::Table.config()),
            scope: scope(self.table.all_netns)?,
            by: self.by,
            states: self.states.0,
            top: self.top.max(1),
            cgroup: self.cgroup.live()?,
        })
    }
}

impl DoctorFlags {
    fn into_options(self) -> Result<DoctorOptions> {
        Ok(DoctorOptions {
            json: self.json,
            observe: self.observe,
            probe: self.probe.options(Purpose::Table.config()),
        })
    }
}

impl ServeFlags {
    fn into_options(self) -> Result<ServeOptions> {
        let scope = scope(self.table.all_netns)?;
        let mut config = Purpose::Table.config();
        // The kernel's histograms too (one per metric, no key), and in
        // tcptrace's own namespace only, as the census counts it.
        config.flags |= CONFIG_HISTOGRAMS;
        config.hist_by = hist_by::NONE;
        if let Scope::Netns(inode) = scope {
            config.flags |= CONFIG_NETNS_FILTER;
            config.netns = inode;
        }
        Ok(ServeOptions {
            output: self.table.output.options(),
            probe: self.table.probe.options(config),
            scope,
            listen: self.listen,
            interval: self.interval,
            top_keys: self.top_keys as usize,
            min_age: self.min_age,
        })
    }
}

fn scope(all_netns: bool) -> Result<Scope> {
    Ok(if all_netns {
        Scope::All
    } else {
        Scope::Netns(current_netns()?)
    })
}

impl Output {
    fn options(&self) -> options::Output {
        options::Output {
            json: self.json,
            duration: self.duration,
        }
    }
}

impl Refresh {
    fn options(&self) -> options::Refresh {
        options::Refresh {
            interval: self.interval,
            once: self.once,
        }
    }
}

impl Columns {
    /// IPv6 addresses need the wide columns from the start.
    fn options(&self, filters: &Filters) -> options::Columns {
        options::Columns {
            wide: self.wide || filters.ipv6,
            header: !self.no_header,
        }
    }
}

impl Common {
    /// The live probe, or with -r the capture, filtered as the probe would be.
    fn source(&self, purpose: Purpose, read: &ReadFlags) -> Result<Source> {
        if read.read.is_empty() {
            return Ok(Source::Live(self.probe_options(purpose)?));
        }
        // What the probe would have sent for this view: histograms are
        // rebuilt from every transition and connection.
        let mut filter = match purpose {
            Purpose::Hist { .. } => Purpose::Capture.config(),
            _ => purpose.config(),
        };
        self.filters.apply(&mut filter);
        Ok(Source::Capture(ReplayOptions {
            files: read.read.clone(),
            since: read.since,
            until: read.until,
            filter,
            // By path: the ids are the recording host's, named in the capture.
            cgroup: self
                .filters
                .cgroup
                .path
                .as_deref()
                .map(CgroupFilter::by_path),
        }))
    }

    fn probe_options(&self, purpose: Purpose) -> Result<ProbeOptions> {
        self.filters.check_pid()?;
        let mut config = purpose.config();
        self.filters.apply(&mut config);
        if let Some(filter) = self.filters.cgroup.live()? {
            config.flags |= CONFIG_CGROUP_FILTER;
            config.cgroup = filter.id.unwrap_or(0);
            config.cgroup_level = filter.level;
        }
        Ok(self.probe.options(config))
    }
}

impl Purpose {
    fn config(&self) -> ProbeConfig {
        let mut config = ProbeConfig::empty();
        match *self {
            Purpose::Tail { all } => {
                config.flags |= CONFIG_EMIT_TRANSITIONS | CONFIG_TIMEWAIT_EVENTS;
                if all {
                    state::allow_all(&mut config);
                } else {
                    // Hand-offs and resets from FIN_WAIT*/CLOSING are hidden
                    // when the hooks can tell them apart; shown unclassified
                    // otherwise.
                    state::allow_headline(&mut config);
                    config.flags |= CONFIG_HANDOFF_ONLY | CONFIG_HIDE_HANDOFFS;
                }
            }
            Purpose::Life => config.flags |= CONFIG_EMIT_CONNECTIONS,
            Purpose::Hist { by } => {
                config.flags |= CONFIG_HISTOGRAMS;
                config.hist_by = by;
            }
            Purpose::Capture => {
                config.flags |=
                    CONFIG_EMIT_TRANSITIONS | CONFIG_TIMEWAIT_EVENTS | CONFIG_EMIT_CONNECTIONS;
                state::allow_all(&mut config);
            }
            Purpose::Table => {
                config.flags |= CONFIG_EMIT_TRANSITIONS | CONFIG_TIMEWAIT_EVENTS;
                state::allow_all(&mut config);
                // No filter flags: both families, every port, pid, namespace.
                Filters::default().apply(&mut config);
            }
        }
        config
    }
}

impl ProbeFlags {
    fn options(&self, config: ProbeConfig) -> ProbeOptions {
        ProbeOptions {
            config,
            ring_size: self.ring_size,
            timewait_hook: !self.no_timewait_hook,
            histogram_keys: DEFAULT_HISTOGRAM_KEYS,
            probe_log: self.probe_log,
            floor: match (self.floor_probe, self.floor_hooks) {
                (_, true) => Floor::Hooks,
                (true, false) => Floor::State,
                (false, false) => Floor::Off,
            },
            wake_interval: crate::session::WAKE_INTERVAL,
        }
    }
}

impl Filters {
    fn apply(&self, config: &mut ProbeConfig) {
        config.flags |= match (self.ipv4, self.ipv6) {
            (true, false) => CONFIG_IPV4,
            (false, true) => CONFIG_IPV6,
            _ => CONFIG_IPV4 | CONFIG_IPV6,
        };
        if let Some(list) = &self.lport {
            config.flags |= CONFIG_LPORT_FILTER;
            list.fill(&mut config.lports);
        }
        if let Some(list) = &self.rport {
            config.flags |= CONFIG_RPORT_FILTER;
            list.fill(&mut config.rports);
        }
        if let Some(list) = &self.port {
            config.flags |= CONFIG_PORT_EITHER;
            list.fill(&mut config.lports);
            list.fill(&mut config.rports);
        }
        if let Some(pid) = self.pid {
            config.flags |= CONFIG_PID_FILTER;
            config.pid = pid;
        }
        if let Some(inode) = self.netns {
            config.flags |= CONFIG_NETNS_FILTER;
            config.netns = inode;
        }
    }

    /// `--pid` names a process that exists.
    fn check_pid(&self) -> Result<(), UsageError> {
        match self.pid {
            Some(pid) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                Err(UsageError(format!("--pid {pid}: no such process")))
            }
            _ => Ok(()),
        }
    }
}
