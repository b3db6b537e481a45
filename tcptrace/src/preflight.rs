//! Refuse early, with the reason, when this host cannot run the probe.
//!
//! What the kernel offers is probed (a map or program of each kind is
//! created, files are looked for), never guessed from the version number:
//! distributions backport features, and build them out.
use std::path::Path;

use anyhow::{bail, Result};
use aya::{maps::MapType, programs::ProgramType};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";
const STATE_EVENT: &str = "events/sock/inet_sock_set_state";
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub fn check() -> Result<()> {
    check_privileges()?;
    ensure_tracefs()?;
    check_features(&ThisKernel)
}

/// What tcptrace needs of the kernel, each answered by probing it.
pub trait KernelFeatures {
    /// Type information of the running kernel (/sys/kernel/btf/vmlinux).
    fn btf(&self) -> bool;
    /// The sock:inet_sock_set_state tracepoint.
    fn state_tracepoint(&self) -> bool;
    /// BTF-typed tracing programs (tp_btf).
    fn tracing_programs(&self) -> bool;
    /// BPF ring buffers (BPF_MAP_TYPE_RINGBUF).
    fn ring_buffer(&self) -> bool;
}

/// The running kernel.
struct ThisKernel;

impl KernelFeatures for ThisKernel {
    fn btf(&self) -> bool {
        Path::new(VMLINUX_BTF).exists()
    }

    fn state_tracepoint(&self) -> bool {
        [TRACEFS, DEBUGFS_TRACING]
            .iter()
            .any(|root| Path::new(root).join(STATE_EVENT).exists())
    }

    fn tracing_programs(&self) -> bool {
        // An unknown answer (the probe itself failed) is not a refusal:
        // loading the real programs will say what is wrong.
        aya::sys::is_program_supported(ProgramType::Tracing).unwrap_or(true)
    }

    fn ring_buffer(&self) -> bool {
        aya::sys::is_map_supported(MapType::RingBuf).unwrap_or(true)
    }
}

/// Refuses, naming the first missing feature and the Linux version that
/// brought it.
pub fn check_features(kernel: &impl KernelFeatures) -> Result<()> {
    if !kernel.btf() {
        bail!(
            "this kernel has no BTF type information ({VMLINUX_BTF}): tcptrace needs a \
             kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.4 or later)"
        );
    }
    if !kernel.state_tracepoint() {
        bail!("this kernel has no sock:inet_sock_set_state tracepoint (it came in Linux 4.16)");
    }
    if !kernel.tracing_programs() {
        bail!(
            "this kernel cannot load BTF tracepoint programs (tp_btf, BPF_PROG_TYPE_TRACING): \
             tcptrace needs Linux 5.5 or later"
        );
    }
    if !kernel.ring_buffer() {
        bail!(
            "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF): tcptrace needs \
             Linux 5.8 or later"
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

/// The tracepoint is attached through tracefs; mount it if nobody has.
fn ensure_tracefs() -> Result<()> {
    for root in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(root).join("events").exists() {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel that has everything but what is switched off.
    #[derive(Default)]
    struct FakeKernel {
        no_btf: bool,
        no_tracepoint: bool,
        no_tracing: bool,
        no_ring: bool,
    }

    impl KernelFeatures for FakeKernel {
        fn btf(&self) -> bool {
            !self.no_btf
        }
        fn state_tracepoint(&self) -> bool {
            !self.no_tracepoint
        }
        fn tracing_programs(&self) -> bool {
            !self.no_tracing
        }
        fn ring_buffer(&self) -> bool {
            !self.no_ring
        }
    }

    fn refusal(kernel: FakeKernel) -> String {
        let err = check_features(&kernel).expect_err("refused");
        let text = format!("{err:#}");
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        text
    }

    #[test]
    fn a_kernel_with_everything_passes() {
        assert!(check_features(&FakeKernel::default()).is_ok());
    }

    #[test]
    fn each_missing_feature_is_named_with_its_version() {
        // Ubuntu 20.04's 5.4: BTF where enabled, tp_btf, no ring buffer.
        let text = refusal(FakeKernel {
            no_ring: true,
            ..Default::default()
        });
        assert!(
            text.contains("BPF ring buffer") && text.contains("Linux 5.8"),
            "{text}"
        );
        // RHEL 8's 4.18 (no tp_btf).
        let text = refusal(FakeKernel {
            no_tracing: true,
            no_ring: true,
            ..Default::default()
        });
        assert!(
            text.contains("tp_btf") && text.contains("Linux 5.5"),
            "{text}"
        );
        let text = refusal(FakeKernel {
            no_btf: true,
            ..Default::default()
        });
        assert!(
            text.contains("CONFIG_DEBUG_INFO_BTF") && text.contains("5.4"),
            "{text}"
        );
        let text = refusal(FakeKernel {
            no_tracepoint: true,
            ..Default::default()
        });
        assert!(
            text.contains("inet_sock_set_state") && text.contains("4.16"),
            "{text}"
        );
    }

    #[test]
    fn this_kernel_has_what_tcptrace_needs() {
        // The real probes, against the kernel the tests run on.
        assert!(ThisKernel.btf());
        assert!(ThisKernel.ring_buffer());
        assert!(ThisKernel.tracing_programs());
    }
}
