//! Idempotent installation of what the BPF build needs.
//!
//! See shared/toolchain.md for why these versions: bpf-linker 0.10.3 loads
//! the running rustc's own libLLVM, so it never meets Debian's LLVM 14 and
//! needs no LLVM_PREFIX; aya-ebpf 0.2.1 builds on this nightly unchanged.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::RunChecked;

pub const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.10.3";

pub struct Tools {
    bin_dir: PathBuf,
}

impl Tools {
    /// PATH with the project's bpf-linker first (rustc finds the linker there).
    pub fn path_with_linker(&self) -> OsString {
        let mut paths = vec![self.bin_dir.clone()];
        if let Some(path) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&path));
        }
        std::env::join_paths(paths).expect("PATH entries contain no separator")
    }
}

/// Makes sure nightly with rust-src and bpf-linker are present.
pub fn ensure(root: &Path) -> Result<Tools> {
    ensure_nightly_with_rust_src()?;
    let bin_dir = ensure_cargo_tool(&root.join(".tools"), "bpf-linker", BPF_LINKER_VERSION)?;
    Ok(Tools { bin_dir })
}

/// `name` at `version` from crates.io in `tools_dir/bin`, installed when
/// missing or of another version (a stamp file says which); returns that
/// bin directory.
pub fn ensure_cargo_tool(tools_dir: &Path, name: &str, version: &str) -> Result<PathBuf> {
    let bin_dir = tools_dir.join("bin");
    let stamp = tools_dir.join(format!("{name}.version"));
    let installed = std::fs::read_to_string(&stamp).unwrap_or_default();
    if !bin_dir.join(name).exists() || installed.trim() != version {
        eprintln!(
            "xtask: installing {name} {version} into {}",
            tools_dir.display()
        );
        let mut cmd = Command::new("cargo");
        scrub_cargo_env(&mut cmd);
        cmd.args(["install", "--locked", "--force"])
            .arg(format!("{name}@{version}"))
            .arg("--root")
            .arg(tools_dir)
            .run(&format!("installing {name}"))?;
        std::fs::write(&stamp, version).with_context(|| format!("writing the {name} stamp"))?;
    }
    Ok(bin_dir)
}

fn ensure_nightly_with_rust_src() -> Result<()> {
    let sysroot = match nightly_sysroot() {
        Some(sysroot) => sysroot,
        None => {
            eprintln!("xtask: installing the {NIGHTLY} toolchain (minimal, with rust-src)");
            Command::new("rustup")
                .args(["toolchain", "install", NIGHTLY, "--profile", "minimal"])
                .args(["--component", "rust-src"])
                .run("installing the nightly toolchain")?;
            match nightly_sysroot() {
                Some(sysroot) => sysroot,
                None => bail!("rustup installed {NIGHTLY} but its rustc does not run"),
            }
        }
    };
    // build-std compiles `core` from source for the BPF target.
    if !sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        eprintln!("xtask: adding rust-src to {NIGHTLY}");
        Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
            .run("adding rust-src")?;
    }
    Ok(())
}

fn nightly_sysroot() -> Option<PathBuf> {
    let mut cmd = Command::new("rustup");
    scrub_cargo_env(&mut cmd);
    let out = cmd
        .args(["run", NIGHTLY, "rustc", "--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Drops what the outer (stable) cargo exported, so that the inner
/// command uses the toolchain it asks for.
pub fn scrub_cargo_env(cmd: &mut Command) {
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "CARGO",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
}
