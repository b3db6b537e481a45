//! One tracing session: a tokio loop woken by the ring buffer's fd, shared
//! by every view (tail, life, hist, stuck, census, doctor).
//!
//! Reading is driven by epoll readiness of the ring. Each wake drains a
//! bounded batch and writes it with one write(2); a full batch leaves the fd
//! marked ready so that signals and timers still get their turn under load.
//!
//! Under load the probe announces at most one event per 4 ms (a wake-up
//! per event would cost more than the event). So after a wake that found
//! events, one catch-up read follows a few milliseconds later to
//! collect events submitted without a wake-up; it re-arms only while it
//! finds events, so an idle tracer sleeps. The once-a-second timer reads the
//! loss counters; a view may ask for its own refresh timer.
use std::time::Duration;

use anyhow::{Context, Result};
use tcptrace_common::CONFIG_CGROUP_FILTER;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{sleep, Instant},
};

use crate::{
    clock::Clock,
    decode,
    error::note,
    printer::{self, Sink},
    probe::{LossCounters, Probe, ProbeLog, ProbeOptions, TimewaitDetection},
    ring::RingReader,
    sockets,
    summary::RunContext,
};

/// Records handled per wake before other work gets a turn.
const BATCH: usize = 4096;
/// The probe wakes a live view's reader at most this often under load
/// (see `wakeup_flag` in the probe), or when an eighth of the ring is full.
/// 4 ms rather than 1: a quarter of the wake-ups (each a context switch,
/// and in a VM an IPI exit) cut reader CPU per event by a fifth, and a
/// live tail 4 ms late is not visibly late.
pub const WAKE_INTERVAL: Duration = Duration::from_millis(4);
/// A capture has no reader watching: 25 ms between wake-ups (under an
/// eighth of the default ring at the fastest churn) saves most of the
/// wake-ups' context switches, a fifth of `record`'s CPU.
pub const CAPTURE_WAKE_INTERVAL: Duration = Duration::from_millis(25);
/// When the catch-up read follows a wake that found events: a millisecond
/// after the probe may have written without a wake-up.
const CATCH_UP_AFTER_WAKE: Duration = Duration::from_millis(1);

/// What a command does with the records and the clock ticks of a session.
pub trait View {
    /// Handles one ring-buffer record, appending any output to `out`.
    fn record(&mut self, data: &[u8], clock: &Clock, out: &mut Vec<u8>);

    /// Names of cgroup ids a capture carries, before the records that need
    /// them (`-r`; live views name ids from the host's hierarchy).
    fn learn_cgroups(&mut self, _table: &[(u64, String)]) {}

    /// The probe's records of new cgroups go to `record` as they are
    /// (`record` writes them to its capture) instead of `learn_cgroups`.
    fn takes_cgroup_records(&self) -> bool {
        false
    }

    /// How often `refresh` runs; `None`: never.
    fn refresh_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic output (a redrawn table, histograms).
    fn refresh(&mut self, _probe: &Probe, _clock: &Clock, _out: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }

    /// A last look at the kernel's maps (histograms) before they go.
    fn before_detach(&mut self, _probe: &Probe) -> Result<()> {
        Ok(())
    }

    /// Whether the view has said all it had to say (e.g. `--once`).
    fn done(&self) -> bool {
        false
    }

    /// Final output and the summary, once the probe is detached.
    fn finish(&mut self, ctx: &RunContext, clock: &Clock, out: &mut Vec<u8>) -> Result<()>;
}

/// How a session runs, whatever the view.
pub struct SessionOptions {
    /// Loss reports go to stdout as JSON records instead of stderr lines.
    pub json: bool,
    pub duration: Option<Duration>,
    /// The line announcing the start (stderr); `None` to stay silent.
    pub banner: Option<String>,
}

impl SessionOptions {
    pub fn new(json: bool, duration: Option<Duration>, banner: Option<String>) -> Self {
        SessionOptions {
            json,
            duration,
            banner,
        }
    }
}

/// Loads and attaches the probe, says what precision is missing, and gives
/// it the owners of listeners that already exist.
pub fn start_probe(options: &ProbeOptions) -> Result<Probe> {
    let mut options = *options;
    options.config.wake_interval_ns = options.wake_interval.as_nanos() as u64;
    options.config.wake_bytes = u64::from(options.ring_size / 8);
    let mut probe = Probe::load(&options)?;
    match &probe.timewait {
        TimewaitDetection::Unavailable(why) => note!(
            "tcptrace: warning: timewait sockets cannot be followed here ({why}); \
             FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE are shown unclassified, marked \
             [timewait?], and TIME_WAIT itself is not seen"
        ),
        TimewaitDetection::Partial(why) => note!(
            "tcptrace: warning: the peer's FIN reaching a timewait socket cannot be seen \
             here ({why}); FIN_WAIT2 -> TIME_WAIT is reported only when the kernel re-arms \
             the socket's timer, usually not"
        ),
        TimewaitDetection::Exact | TimewaitDetection::Disabled => {}
    }
    let cgroup = (options.config.flags & CONFIG_CGROUP_FILTER != 0)
        .then_some((options.config.cgroup, options.config.cgroup_level));
    if let Err(err) = probe.seed_listeners(&sockets::existing_listeners(cgroup)) {
        note!("tcptrace: warning: owners of existing listeners unknown: {err:#}");
    }
    Ok(probe)
}

/// A periodic timer on a timerfd: the kernel wakes the loop exactly once
/// per period. (tokio's timer wheel would wake it two or three times per
/// second-long timer, cascading it down its levels.)
struct Ticker {
    fd: AsyncFd<std::os::fd::OwnedFd>,
}

impl Ticker {
    fn new(period: Duration) -> Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain timerfd_create; the fd is owned at once.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_create");
        }
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let spec = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: period.subsec_nanos() as libc::c_long,
        };
        let value = libc::itimerspec {
            it_interval: spec,
            it_value: spec,
        };
        // SAFETY: valid timerfd and itimerspec.
        if unsafe { libc::timerfd_settime(raw, 0, &value, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_settime");
        }
        // SAFETY: the OwnedFd keeps the timerfd open for as long as the
        // AsyncFd that owns it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering a timerfd with epoll")?;
        Ok(Ticker { fd })
    }

    async fn tick(&self) -> Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer.
            let n = unsafe {
                libc::read(
                    std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref()),
                    expirations.as_mut_ptr().cast(),
                    8,
                )
            };
            if n == 8 {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}

/// Runs `view` on the probe's records until Ctrl-C, SIGTERM, the duration
/// or the view itself ends it; then drains the ring and lets the view
/// write its summary.
pub async fn run(mut probe: Probe, view: &mut impl View, options: SessionOptions) -> Result<()> {
    let ring = probe.take_ring()?;
    let mut probe_log = match probe.take_log() {
        // SAFETY: as for the ring below: the logger owns its fd.
        Some(log) => Some(
            unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("registering the probe's log with epoll")?,
        ),
        None => None,
    };
    // SAFETY: the ring owns its fd and keeps it open until it is dropped,
    // which happens after the AsyncFd (it is the AsyncFd's inner value).
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with epoll")?;

    let clock = Clock::new();
    let mut sink = Sink::stdout(BATCH * 200)?;

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let deadline = sleep(
        options
            .duration
            .unwrap_or(Duration::from_secs(u32::MAX as u64)),
    );
    tokio::pin!(deadline);
    let catch_up_delay = probe.wake_interval + CATCH_UP_AFTER_WAKE;
    let catch_up = sleep(catch_up_delay);
    tokio::pin!(catch_up);
    let mut catch_up_armed = false;
    let loss_check = Ticker::new(Duration::from_secs(1))?;
    let refresh_every = view.refresh_interval();
    let refresh = Ticker::new(refresh_every.unwrap_or(Duration::from_secs(3600)))?;

    let mut losses = LossCounters::default();
    if let Some(banner) = &options.banner {
        note!("{banner}");
    }
    crate::notify::ready();

    while !view.done() {
        tokio::select! {
            biased;
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
            tick = loss_check.tick() => {
                tick?;
                losses = report_losses(&probe, &clock, &mut sink, options.json, losses)?;
            }
            tick = refresh.tick(), if refresh_every.is_some() => {
                tick?;
                // Everything already in the ring counts in the refresh.
                while drain(ring.get_mut(), &clock, view, &mut sink)? == BATCH {}
                view.refresh(&probe, &clock, &mut sink.buf)?;
                sink.flush()?;
            }
            guard = log_readable(&mut probe_log), if probe_log.is_some() => {
                let mut guard = guard.context("waiting on the probe's log")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = &mut catch_up, if catch_up_armed => {
                let drained = drain(ring.get_mut(), &clock, view, &mut sink)?;
                catch_up_armed = drained > 0;
                if catch_up_armed {
                    catch_up.as_mut().reset(Instant::now() + catch_up_delay);
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let drained = drain(guard.get_inner_mut(), &clock, view, &mut sink)?;
                if drained < BATCH {
                    guard.clear_ready();
                }
                if drained > 0 && !catch_up_armed {
                    catch_up.as_mut().reset(Instant::now() + catch_up_delay);
                    catch_up_armed = true;
                }
            }
        }
    }

    if let Some(log) = probe_log.as_mut() {
        log.get_mut().flush();
    }
    // Detached from now on: what is already in the ring still gets out.
    while drain(ring.get_mut(), &clock, view, &mut sink)? == BATCH {}
    losses = report_losses(&probe, &clock, &mut sink, options.json, losses)?;
    let timewait_detection = probe.timewait.describe();
    let ctx = RunContext {
        capture_span: None,
        losses,
        timewait_detection: &timewait_detection,
        hooks: probe.hooks.iter().map(|hook| hook.name()).collect(),
        probe_handoffs: probe.timewait_handoffs().unwrap_or(0),
        probe_emitted: probe.emitted().unwrap_or(0),
        probe_connections: probe.connections_emitted().unwrap_or(0),
        records_evicted: probe.records_evicted().unwrap_or(0),
        run_stats: probe.run_stats().unwrap_or_default(),
    };
    view.before_detach(&probe)?;
    drop(ring);
    drop(probe);
    view.finish(&ctx, &clock, &mut sink.buf)?;
    sink.flush()
}

/// Waits until the probe's log has records (only called when it exists).
async fn log_readable(
    log: &mut Option<AsyncFd<aya_log::EbpfLogger<ProbeLog>>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, aya_log::EbpfLogger<ProbeLog>>> {
    match log {
        Some(log) => log.readable_mut().await,
        None => std::future::pending().await,
    }
}

fn drain(
    ring: &mut RingReader,
    clock: &Clock,
    view: &mut impl View,
    sink: &mut Sink,
) -> Result<usize> {
    let drained = ring.drain(BATCH, |record| {
        if decode::is_cgroup_record(record) && !view.takes_cgroup_records() {
            if let Some((id, path)) = decode::cgroup_named(record) {
                view.learn_cgroups(&[(id, path.to_string())]);
            }
        } else {
            view.record(record, clock, &mut sink.buf);
        }
    });
    sink.flush()?;
    Ok(drained)
}

fn report_losses(
    probe: &Probe,
    clock: &Clock,
    sink: &mut Sink,
    json: bool,
    before: LossCounters,
) -> Result<LossCounters> {
    let now = probe.loss_counters()?;
    if now.total() > before.total() || now.timewait_hook_misses > before.timewait_hook_misses {
        if json {
            printer::json::write_lost(&mut sink.buf, clock, &before, &now);
            sink.flush()?;
        } else {
            note!("{}", printer::human::lost_line(&before, &now));
        }
    }
    Ok(now)
}
