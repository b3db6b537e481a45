//! Duration histograms, per metric and `--by` key.
use aya_ebpf::bindings::BPF_NOEXIST;
use tcptrace_common::{
    hist_by, Endpoints, HistKey, SocketRecord, COUNTER_HIST_OVERFLOW, HIST_BUCKETS,
};

use crate::{
    config::{config_u32, passes_filters_apart, CONFIG},
    maps::{count, HISTOGRAMS, HIST_ZERO},
};

pub use tcptrace_common::metric::of_dwell_in as dwell_metric;

/// Floor of log2, 0 for 0 and 1 (BPF has no count-leading-zeros).
#[inline(always)]
pub fn log2(mut v: u64) -> usize {
    let mut r = 0usize;
    let mut shift = 32u32;
    while shift > 0 {
        if v >> shift != 0 {
            v >>= shift;
            r += shift as usize;
        }
        shift >>= 1;
    }
    r
}

/// Adds one duration to its histogram (per metric and `--by` key).
#[inline(never)]
pub fn record_duration(which: u8, ns: u64, record: &SocketRecord, endpoints: &Endpoints) {
    if !passes_filters_apart(endpoints, record.flags, record.pid) {
        return;
    }
    let mut key = HistKey {
        metric: which,
        family: 0,
        other: 0,
        _pad: [0; 5],
        value: [0; 16],
    };
    match config_u32(&CONFIG.hist_by) {
        hist_by::LPORT => key.value[..2].copy_from_slice(&endpoints.lport.to_ne_bytes()),
        hist_by::RPORT => key.value[..2].copy_from_slice(&endpoints.rport.to_ne_bytes()),
        hist_by::RADDR => {
            key.family = endpoints.family as u8;
            key.value = endpoints.raddr;
        }
        hist_by::COMM => key.value = record.comm,
        hist_by::PID => key.value[..4].copy_from_slice(&record.pid.to_ne_bytes()),
        hist_by::CGROUP => key.value[..8].copy_from_slice(&record.cgroup.to_ne_bytes()),
        _ => {}
    }
    let value = match HISTOGRAMS.get_ptr_mut(key) {
        Some(value) => value,
        None => {
            let Some(zero) = HIST_ZERO.get_ptr(0) else {
                return;
            };
            let zero = unsafe { &*zero };
            // Another CPU may insert the same key first: that is fine.
            let _ = HISTOGRAMS.insert(key, zero, BPF_NOEXIST as u64);
            match HISTOGRAMS.get_ptr_mut(key) {
                Some(value) => value,
                None => {
                    // Full: this key's durations go to the metric's "other".
                    count(COUNTER_HIST_OVERFLOW);
                    key = HistKey {
                        metric: which,
                        family: 0,
                        other: 1,
                        _pad: [0; 5],
                        value: [0; 16],
                    };
                    let _ = HISTOGRAMS.insert(key, zero, BPF_NOEXIST as u64);
                    match HISTOGRAMS.get_ptr_mut(key) {
                        Some(value) => value,
                        None => return,
                    }
                }
            }
        }
    };
    let value = unsafe { &mut *value };
    let bucket = log2(ns);
    if bucket < HIST_BUCKETS {
        value.buckets[bucket] += 1;
    }
    value.count += 1;
    value.sum_ns += ns;
    if ns > value.max_ns {
        value.max_ns = ns;
    }
}
