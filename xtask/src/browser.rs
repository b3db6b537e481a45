//! The headless browser the `report` integration tests render the page
//! with: Debian's `chromium`, installed with apt-get when it is missing
//! (as vm.rs installs qemu), and left alone when it is there.
use std::{os::unix::fs::PermissionsExt, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

/// The command the tests run.
pub const CHROMIUM: &str = "chromium";

/// Installs Debian's chromium if `chromium` is not on PATH; a no-op
/// otherwise.
pub fn ensure() -> Result<()> {
    if find(CHROMIUM).is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing chromium with apt-get (the report tests' headless browser)");
    apt(&["update", "-q"])?;
    apt(&["install", "-y", "-q", "--no-install-recommends", CHROMIUM])?;
    if find(CHROMIUM).is_none() {
        bail!("chromium is installed but {CHROMIUM} is still not on PATH");
    }
    Ok(())
}

fn apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("starting apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn find(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
