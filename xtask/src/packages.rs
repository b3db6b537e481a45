//! Debian packages the integration tests run, installed with apt-get when
//! their command is missing (as vm.rs installs qemu), and left alone when
//! it is there: the headless browser the `report` tests render the page
//! with (`chromium`), the Prometheus server and promtool the `serve`
//! tests scrape and check with (`prometheus`), and the container runtime
//! the `cgroups` tests run a peer in (`runc`).
use anyhow::{bail, Result};

use crate::{
    vm::{apt, find_command},
    RunChecked,
};

/// The command the report tests run.
pub const CHROMIUM: &str = "chromium";

/// Installs Debian's chromium if `chromium` is not on PATH; a no-op
/// otherwise.
pub fn ensure_chromium() -> Result<()> {
    ensure_package(CHROMIUM, CHROMIUM, "the report tests' headless browser")
}

/// Installs Debian's prometheus (the server and promtool) if they are not
/// on PATH; a no-op otherwise.
pub fn ensure_prometheus() -> Result<()> {
    for command in ["prometheus", "promtool"] {
        ensure_package(
            command,
            "prometheus",
            "the serve tests' scraper and checker",
        )?;
    }
    Ok(())
}

/// Installs Debian's runc (a real container runtime) if it is not on PATH.
pub fn ensure_runc() -> Result<()> {
    ensure_package("runc", "runc", "the cgroups tests' container runtime")
}

fn ensure_package(command: &str, package: &str, why: &str) -> Result<()> {
    if find_command(command).is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing {package} with apt-get ({why})");
    apt("update").arg("-q").run("apt-get update")?;
    apt("install")
        .args(["-y", "-q", "--no-install-recommends", package])
        .run(&format!("apt-get install {package}"))?;
    if find_command(command).is_none() {
        bail!("{package} is installed but {command} is still not on PATH");
    }
    Ok(())
}
