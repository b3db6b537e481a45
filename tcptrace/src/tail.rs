//! The live tail: a tokio loop woken by the ring buffer's fd.
//!
//! Reading is driven by epoll readiness of the ring. Each wake drains a
//! bounded batch and writes it with one write(2); a full batch leaves the fd
//! marked ready so that signals and timers still get their turn under load.
//!
//! Under load the probe announces at most one event per millisecond (a
//! wake-up per event would cost more than the event). So after a wake that
//! found events, one catch-up read follows a couple of milliseconds later to
//! collect events submitted without a wake-up; it re-arms only while it
//! finds events, so an idle tracer sleeps. The once-a-second timer reads the
//! loss counters and nothing else.
use std::{fs::File, io::Write, os::fd::AsFd, path::Path, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval, sleep, Instant, MissedTickBehavior},
};

use crate::{
    cli::Args,
    clock::Clock,
    decode::Transition,
    error::{note, UsageError},
    format::{Format, HumanFormat},
    owners,
    probe::{LossCounters, Probe, TimewaitDetection},
    summary::{self, RunContext, RunStats},
};

/// Records handled per wake before other work gets a turn.
const BATCH: usize = 4096;
/// The probe wakes the reader at most this often under load (see
/// `wakeup_flag` in the probe), or when an eighth of the ring is full.
const WAKE_INTERVAL: Duration = Duration::from_millis(1);
/// When the catch-up read follows a wake that found events.
const CATCH_UP: Duration = Duration::from_millis(2);

struct Sink {
    out: File,
    buf: Vec<u8>,
    json: bool,
}

impl Sink {
    fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf).context("writing to stdout")?;
            self.buf.clear();
        }
        Ok(())
    }
}

pub async fn run(args: Args) -> Result<()> {
    if let Some(pid) = args.pid {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(UsageError(format!("--pid {pid}: no such process")).into());
        }
    }
    let mut config = args.probe_config();
    config.wake_interval_ns = WAKE_INTERVAL.as_nanos() as u64;
    config.wake_bytes = u64::from(args.ring_size / 8);
    let mut probe = Probe::load(&config, args.ring_size, !args.no_timewait_hook)?;
    if let TimewaitDetection::Unavailable(why) = &probe.timewait {
        note!(
            "tcptrace: warning: timewait hand-offs cannot be told from resets here ({why}); \
             FIN_WAIT1/FIN_WAIT2/CLOSING -> CLOSE are shown unclassified, marked [timewait?]"
        );
    }
    if let Err(err) = probe.seed_listeners(&owners::existing_listeners()) {
        note!("tcptrace: warning: owners of existing listeners unknown: {err:#}");
    }
    let ring = probe.take_ring()?;
    // SAFETY: the ring owns its fd and keeps it open until it is dropped,
    // which happens after the AsyncFd (it is the AsyncFd's inner value).
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with epoll")?;

    let clock = Clock::new();
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating stdout")?;
    let mut sink = Sink {
        out: File::from(stdout),
        buf: Vec::with_capacity(BATCH * 200),
        json: args.json,
    };
    let mut format = if args.json {
        Format::Json
    } else {
        let human = HumanFormat::new(args.wide || args.ipv6);
        if !args.no_header {
            human.write_header(&mut sink.buf);
        }
        Format::Human(human)
    };
    sink.flush()?;

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let deadline = sleep(
        args.duration
            .unwrap_or(Duration::from_secs(u32::MAX as u64)),
    );
    tokio::pin!(deadline);
    let catch_up = sleep(CATCH_UP);
    tokio::pin!(catch_up);
    let mut catch_up_armed = false;
    let mut loss_check = interval(Duration::from_secs(1));
    loss_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loss_check.reset_at(Instant::now() + Duration::from_secs(1));

    let mut stats = RunStats::new();
    let mut losses = LossCounters::default();
    note!(
        "tcptrace: tracing TCP state transitions{}",
        match args.duration {
            Some(d) => format!(" for {:.1} s", d.as_secs_f64()),
            None => " (Ctrl-C to stop)".into(),
        }
    );

    loop {
        tokio::select! {
            biased;
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
            _ = loss_check.tick() => {
                losses = report_losses(&probe, &clock, &mut sink, losses)?;
            }
            _ = &mut catch_up, if catch_up_armed => {
                let drained = drain(ring.get_mut(), &clock, &mut format, &mut stats, &mut sink)?;
                catch_up_armed = drained > 0;
                if catch_up_armed {
                    catch_up.as_mut().reset(Instant::now() + CATCH_UP);
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                let drained = drain(guard.get_inner_mut(), &clock, &mut format, &mut stats, &mut sink)?;
                if drained < BATCH {
                    guard.clear_ready();
                }
                if drained > 0 && !catch_up_armed {
                    catch_up.as_mut().reset(Instant::now() + CATCH_UP);
                    catch_up_armed = true;
                }
            }
        }
    }

    // Detached from now on: what is already in the ring still gets out.
    while drain(ring.get_mut(), &clock, &mut format, &mut stats, &mut sink)? == BATCH {}
    losses = report_losses(&probe, &clock, &mut sink, losses)?;
    let timewait_detection = probe.timewait.describe();
    let ctx = RunContext {
        losses,
        timewait_detection: &timewait_detection,
        probe_handoffs: probe.timewait_handoffs().unwrap_or(0),
        probe_emitted: probe.emitted().unwrap_or(0),
        run_stats: probe.run_stats().unwrap_or_default(),
    };
    drop(ring);
    drop(probe);
    if sink.json {
        summary::write_json_summary(&mut sink.buf, &clock, &stats, &ctx);
        sink.flush()?;
    } else {
        summary::write_human_summary(&mut std::io::stderr(), &stats, &ctx);
    }
    Ok(())
}

fn drain(
    ring: &mut RingBuf<MapData>,
    clock: &Clock,
    format: &mut Format,
    stats: &mut RunStats,
    sink: &mut Sink,
) -> Result<usize> {
    let mut drained = 0;
    while drained < BATCH {
        let Some(item) = ring.next() else { break };
        match Transition::decode(&item) {
            Ok(t) => {
                stats.record(&t);
                format.write_transition(&mut sink.buf, clock, &t);
            }
            Err(_) => stats.bad_records += 1,
        }
        drained += 1;
    }
    sink.flush()?;
    Ok(drained)
}

fn report_losses(
    probe: &Probe,
    clock: &Clock,
    sink: &mut Sink,
    before: LossCounters,
) -> Result<LossCounters> {
    let now = probe.loss_counters()?;
    if now.total() > before.total() || now.timewait_hook_misses > before.timewait_hook_misses {
        if sink.json {
            summary::write_json_lost(&mut sink.buf, clock, &before, &now);
            sink.flush()?;
        } else {
            note!("{}", summary::human_lost_line(&before, &now));
        }
    }
    Ok(now)
}
