//! Kernel monotonic timestamps to wall-clock text, without allocating.
use std::cell::Cell;

/// Converts `bpf_ktime_get_ns()` values (CLOCK_MONOTONIC) to wall time using
/// the offset between the two clocks taken once at start-up.
#[derive(Clone, Debug)]
pub struct Clock {
    realtime_minus_monotonic_ns: i128,
    local_utc_offset_s: i64,
    /// `YYYY-MM-DDTHH:MM:SS` of the last second formatted: events come in
    /// bursts within the same second, and the calendar maths is the
    /// costliest part of a timestamp.
    rfc3339_second: Cell<(i64, [u8; 19])>,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mono_after = clock_ns(libc::CLOCK_MONOTONIC);
        Clock {
            realtime_minus_monotonic_ns: real - (mono + mono_after) / 2,
            local_utc_offset_s: local_utc_offset(),
            rfc3339_second: Cell::new((i64::MIN, [0; 19])),
        }
    }

    /// The clock of a capture: its kernel times turn into the wall-clock
    /// times of the host and moment it was taken.
    pub fn with_offset(realtime_minus_monotonic_ns: i128) -> Self {
        Clock {
            realtime_minus_monotonic_ns,
            local_utc_offset_s: local_utc_offset(),
            rfc3339_second: Cell::new((i64::MIN, [0; 19])),
        }
    }

    pub fn realtime_minus_monotonic_ns(&self) -> i128 {
        self.realtime_minus_monotonic_ns
    }

    #[cfg(test)]
    pub fn fixed(realtime_minus_monotonic_ns: i128, local_utc_offset_s: i64) -> Self {
        Clock {
            realtime_minus_monotonic_ns,
            local_utc_offset_s,
            rfc3339_second: Cell::new((i64::MIN, [0; 19])),
        }
    }

    pub fn now_ktime_ns() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }

    fn unix_ns(&self, ktime_ns: u64) -> i128 {
        ktime_ns as i128 + self.realtime_minus_monotonic_ns
    }

    /// `2026-11-25T17:58:01.123456789Z`
    pub fn write_rfc3339(&self, out: &mut Vec<u8>, ktime_ns: u64) {
        let ns = self.unix_ns(ktime_ns);
        let secs = ns.div_euclid(1_000_000_000) as i64;
        let frac = ns.rem_euclid(1_000_000_000) as u64;
        let (cached_secs, mut text) = self.rfc3339_second.get();
        if cached_secs != secs {
            let mut buf = Vec::with_capacity(19);
            let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u64);
            let (y, m, d) = civil_from_days(days);
            push_padded(&mut buf, y as u64, 4);
            buf.push(b'-');
            push_padded(&mut buf, m as u64, 2);
            buf.push(b'-');
            push_padded(&mut buf, d as u64, 2);
            buf.push(b'T');
            write_hms(&mut buf, sod);
            let n = buf.len().min(19);
            text[..n].copy_from_slice(&buf[..n]);
            self.rfc3339_second.set((secs, text));
        }
        out.extend_from_slice(&text);
        out.push(b'.');
        push_padded(out, frac, 9);
        out.push(b'Z');
    }

    /// Local time of day with microseconds: `17:58:01.123456`
    pub fn write_local_time(&self, out: &mut Vec<u8>, ktime_ns: u64) {
        let ns = self.unix_ns(ktime_ns) + self.local_utc_offset_s as i128 * 1_000_000_000;
        let secs = ns.div_euclid(1_000_000_000) as i64;
        let micros = ns.rem_euclid(1_000_000_000) as u64 / 1000;
        write_hms(out, secs.rem_euclid(86_400) as u64);
        out.push(b'.');
        push_padded(out, micros, 6);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn write_hms(out: &mut Vec<u8>, seconds_of_day: u64) {
    push_padded(out, seconds_of_day / 3600, 2);
    out.push(b':');
    push_padded(out, seconds_of_day / 60 % 60, 2);
    out.push(b':');
    push_padded(out, seconds_of_day % 60, 2);
}

/// Writes `value` in decimal, left-padded with zeros to `width` digits.
pub fn push_padded(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(value).as_bytes();
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The local time zone's offset now (DST changes during a run are ignored).
fn local_utc_offset() -> i64 {
    // SAFETY: localtime_r only writes into the provided tm.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rfc3339_with_nanoseconds() {
        // 2026-11-25T17:58:01.000000042Z is 1795629481 s after the epoch.
        let clock = Clock::fixed(1_795_629_481_000_000_000 - 5_000, 0);
        assert_eq!(
            text(|o| clock.write_rfc3339(o, 5_042)),
            "2026-11-25T17:58:01.000000042Z"
        );
        // The cached second is reused within it and replaced after it.
        assert_eq!(
            text(|o| clock.write_rfc3339(o, 999_999_999)),
            "2026-11-25T17:58:01.999994999Z"
        );
        assert_eq!(
            text(|o| clock.write_rfc3339(o, 86_400_000_005_000)),
            "2026-11-26T17:58:01.000000000Z"
        );
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }

    #[test]
    fn local_time_applies_offset() {
        let clock = Clock::fixed(3_600 * 1_000_000_000, 2 * 3600);
        assert_eq!(
            text(|o| clock.write_local_time(o, 1_500)),
            "03:00:00.000001"
        );
    }

    #[test]
    fn padding() {
        assert_eq!(text(|o| push_padded(o, 7, 3)), "007");
        assert_eq!(text(|o| push_padded(o, 12345, 3)), "12345");
    }
}
