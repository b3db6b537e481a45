//! Refuse early, with the reason, when this host cannot run the probe.
use std::path::Path;

use anyhow::{bail, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn check() -> Result<()> {
    check_privileges()?;
    check_kernel_version()?;
    ensure_tracefs()?;
    if !Path::new(VMLINUX_BTF).exists() {
        bail!(
            "kernel BTF ({VMLINUX_BTF}) is missing: tcptrace needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    Ok(())
}

fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        bail!("permission denied: tracing needs root, or the CAP_BPF and CAP_PERFMON capabilities (try sudo)");
    }
    Ok(())
}

/// BPF ring buffers arrived in Linux 5.8.
fn check_kernel_version() -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if let Some((major, minor)) = parse_release(release.trim()) {
        if (major, minor) < (5, 8) {
            bail!(
                "kernel {} is too old: tcptrace needs Linux 5.8 or later (BPF ring buffers)",
                release.trim()
            );
        }
    }
    Ok(())
}

pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The tracepoint is attached through tracefs; mount it if nobody has.
fn ensure_tracefs() -> Result<()> {
    let event = "events/sock/inet_sock_set_state";
    for root in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(root).join("events").exists() {
            if !Path::new(root).join(event).exists() {
                bail!("this kernel has no sock:inet_sock_set_state tracepoint (it needs Linux 4.16 or later)");
            }
            return Ok(());
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {TRACEFS} failed ({err}); \
             mount it with: mount -t tracefs nodev {TRACEFS}"
        );
    }
    if !Path::new(TRACEFS).join(event).exists() {
        bail!(
            "this kernel has no sock:inet_sock_set_state tracepoint (it needs Linux 4.16 or later)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
    }
}
