//! The headless browser the `report` integration tests render the page
//! with: Debian's `chromium`, installed with apt-get when it is missing
//! (as vm.rs installs qemu), and left alone when it is there.
use anyhow::{bail, Result};

use crate::{
    vm::{apt, find_command},
    RunChecked,
};

/// The command the tests run.
pub const CHROMIUM: &str = "chromium";

/// Installs Debian's chromium if `chromium` is not on PATH; a no-op
/// otherwise.
pub fn ensure() -> Result<()> {
    if find_command(CHROMIUM).is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing chromium with apt-get (the report tests' headless browser)");
    apt("update").arg("-q").run("apt-get update")?;
    apt("install")
        .args(["-y", "-q", "--no-install-recommends", CHROMIUM])
        .run("apt-get install chromium")?;
    if find_command(CHROMIUM).is_none() {
        bail!("chromium is installed but {CHROMIUM} is still not on PATH");
    }
    Ok(())
}
