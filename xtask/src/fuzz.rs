//! `cargo xtask fuzz`: libFuzzer on the capture reader (tcptrace/fuzz/,
//! a package of its own), through cargo-fuzz, which is installed into
//! `.tools/cargo-fuzz/` when missing, as bpf-linker is into `.tools/`.
//! It runs on the nightly the probe builds with.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Instant, SystemTime},
};

use anyhow::{bail, Context, Result};

use crate::{toolchain, RunChecked};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The fuzz targets (tcptrace/fuzz/Cargo.toml's bins).
pub const TARGETS: &[&str] = &["capture_reader"];

#[derive(clap::Args)]
pub struct Options {
    /// How long to fuzz (libFuzzer's -max_total_time), after the build.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Which fuzz target.
    #[arg(long, default_value = "capture_reader", value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    target: String,
}

pub fn run(root: &Path, probe: &Path, options: &Options) -> Result<()> {
    let bin_dir = ensure_cargo_fuzz(root)?;
    let crate_dir = root.join("tcptrace");
    let fuzz_dir = crate_dir.join("fuzz");
    let target = &options.target;
    // The committed seeds stay as they are: libFuzzer adds what it finds
    // to the first corpus directory, kept under target/ between runs.
    let corpus = root.join("target/fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    let before = newest_file(&artifacts);

    let mut path = vec![bin_dir.clone()];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut cmd = Command::new("rustup");
    toolchain::scrub_cargo_env(&mut cmd);
    cmd.current_dir(&crate_dir)
        .args(["run", toolchain::NIGHTLY, "cargo", "fuzz", "run", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", options.seconds))
        // Captures' blocks are small in practice; 64 KiB holds several.
        .arg("-max_len=65536")
        // No input may take a second to read, and none of at most 64 KiB
        // needs a large allocation (a lying block length must not cost
        // its claimed size).
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-malloc_limit_mb=32")
        .arg("-print_final_stats=1")
        .env("TCPTRACE_PROBE_OBJECT", probe)
        .env("PATH", std::env::join_paths(path).context("PATH")?);
    let started = Instant::now();
    let result = cmd.run(&format!("fuzzing {target}"));
    eprintln!(
        "xtask: fuzzing {target}: {:.0} s in all (build and run)",
        started.elapsed().as_secs_f64()
    );
    if let Err(err) = result {
        // A new file, or one rewritten (libFuzzer names them by content).
        match newest_file(&artifacts).filter(|new| Some(new) != before.as_ref()) {
            Some((_, input)) => bail!(
                "{err}: the input is saved as {}; reproduce with `PATH={}:$PATH cargo +{} fuzz \
                 run {target} {}` in tcptrace/, then make it a unit test in \
                 tcptrace/src/capture/",
                input.display(),
                bin_dir.display(),
                toolchain::NIGHTLY,
                input.display()
            ),
            None => return Err(err),
        }
    }
    Ok(())
}

/// cargo-fuzz in .tools/cargo-fuzz/bin, installed from crates.io when
/// missing or of another version; returns that directory.
fn ensure_cargo_fuzz(root: &Path) -> Result<PathBuf> {
    toolchain::ensure_cargo_tool(
        &root.join(".tools/cargo-fuzz"),
        "cargo-fuzz",
        CARGO_FUZZ_VERSION,
    )
}

/// The most recently modified file in `dir`, if any, with its time.
fn newest_file(dir: &Path) -> Option<(SystemTime, PathBuf)> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
}
