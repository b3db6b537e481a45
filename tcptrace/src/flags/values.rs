//! Parsers of flag values: each turns text into a value or a one-line
//! usage error naming the flag's text.
use std::time::Duration;

use tcptrace_common::port_insert;

use crate::{census::STATES, error::UsageError, hist::METRICS, replay::TimeBound, state};

/// Inclusive port ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<(u16, u16)>);

impl PortList {
    pub fn fill(&self, bitmap: &mut [u64; 1024]) {
        for &(lo, hi) in &self.0 {
            for port in lo..=hi {
                port_insert(bitmap, port);
            }
        }
    }
}

pub fn parse_port_list(text: &str) -> Result<PortList, UsageError> {
    let bad = |why: String| UsageError(format!("bad port list '{text}': {why}"));
    let port = |p: &str| -> Result<u16, UsageError> {
        let p = p.trim();
        match p.parse::<u32>() {
            Ok(n @ 1..=65535) => Ok(n as u16),
            Ok(n) => Err(bad(format!("port {n} is outside 1-65535"))),
            Err(_) if p.is_empty() => Err(bad("empty entry".into())),
            Err(_) => Err(bad(format!("'{p}' is not a port number"))),
        }
    };
    let mut ranges = Vec::new();
    for item in text.split(',') {
        let range = match item.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(bad(format!("range {lo}-{hi} is backwards")));
                }
                (lo, hi)
            }
            None => {
                let p = port(item)?;
                (p, p)
            }
        };
        ranges.push(range);
    }
    Ok(PortList(ranges))
}

pub fn parse_seconds(text: &str) -> Result<Duration, UsageError> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(UsageError(format!(
            "bad duration '{text}': expected a positive number of seconds"
        ))),
    }
}

pub fn parse_ring_size(text: &str) -> Result<u32, UsageError> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let multiplier: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => {
            return Err(UsageError(format!(
                "bad ring size '{text}': unknown unit '{unit}' (use K, M or G)"
            )))
        }
    };
    let size = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| UsageError(format!("bad ring size '{text}': not a size")))?;
    // The kernel wants a power-of-two multiple of the page size.
    if size < 4096 || !size.is_power_of_two() || size > 1 << 30 {
        return Err(UsageError(format!(
            "bad ring size '{text}': must be a power of two between 4K and 1G"
        )));
    }
    Ok(size as u32)
}

/// The inode of a network namespace file.
pub fn parse_netns(text: &str) -> Result<u32, UsageError> {
    let path = match text {
        "self" => "/proc/self/ns/net".to_string(),
        name if !name.contains('/') => format!("/run/netns/{name}"),
        path => path.to_string(),
    };
    crate::sockets::netns_inode(std::path::Path::new(&path))
        .map_err(|e| UsageError(format!("--netns {text}: {path}: {e}")))
}

/// `census --states`: one value holding several states (a `Vec` field
/// would make clap expect the flag repeated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateList(pub Vec<u8>);

/// `census --states`: state names (any case, - or _), or "all".
pub fn parse_states(text: &str) -> Result<StateList, UsageError> {
    if text.trim().eq_ignore_ascii_case("all") {
        return Ok(StateList(STATES.to_vec()));
    }
    text.split(',')
        .map(|name| {
            let name = name.trim().to_ascii_uppercase().replace('-', "_");
            STATES
                .iter()
                .copied()
                .find(|&s| state::name(s) == name)
                .ok_or_else(|| {
                    UsageError(format!(
                        "unknown state '{}' (one of: {}, or all)",
                        name,
                        STATES.map(state::name).join(", ")
                    ))
                })
        })
        .collect::<Result<_, _>>()
        .map(StateList)
}

/// One `hist --metric` name.
pub fn parse_metric(text: &str) -> Result<u8, UsageError> {
    METRICS
        .iter()
        .find(|(_, name)| *name == text.trim())
        .map(|&(m, _)| m)
        .ok_or_else(|| {
            UsageError(format!(
                "unknown metric '{text}' (one of: {})",
                METRICS.map(|(_, n)| n).join(", ")
            ))
        })
}

/// `--since` / `--until`: an RFC 3339 time, or a duration after the
/// capture's start ("30s", "2m", "1h 30m", or plain seconds).
pub fn parse_time_bound(text: &str) -> Result<TimeBound, UsageError> {
    let t = text.trim();
    if let Ok(at) = humantime::parse_rfc3339_weak(t) {
        return Ok(TimeBound::At(at));
    }
    if let Ok(seconds) = t.parse::<f64>() {
        if seconds.is_finite() && (0.0..1e9).contains(&seconds) {
            return Ok(TimeBound::AfterStart(Duration::from_secs_f64(seconds)));
        }
    }
    humantime::parse_duration(t)
        .map(TimeBound::AfterStart)
        .map_err(|_| {
            UsageError(format!(
                "bad time '{text}': expected an RFC 3339 time (2026-12-02T01:20:04Z) or a \
                 duration after the capture's start (30s, 2m, 1h)"
            ))
        })
}

/// `record -C`: a file size in bytes with a K/M/G suffix (powers of 1024);
/// a plain number is millions of bytes, as tcpdump's -C.
pub fn parse_file_size(text: &str) -> Result<u64, UsageError> {
    let t = text.trim();
    let bad = || {
        UsageError(format!(
            "bad file size '{text}': expected e.g. 100M, 2G, or a number of millions of bytes"
        ))
    };
    let (digits, unit) = match t
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit() && *c != '.')
    {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: f64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" => 1e6,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = n * scale;
    // Room for the header and at least one full batch.
    if !(bytes.is_finite() && (2.0 * 1024.0 * 1024.0..1e15).contains(&bytes)) {
        return Err(UsageError(format!(
            "bad file size '{text}': at least 2M (a capture writes 1 MiB batches)"
        )));
    }
    Ok(bytes as u64)
}
