//! `cargo xtask`: everything between a fresh clone and a running tracer.
//!
//! Set-up is idempotent and lands in places the project owns: bpf-linker in
//! `.tools/`, the probe object in `target/bpf/`, virtme-ng and test kernels
//! in `.tools/` too (`test --kernel`, see vm.rs). The only things installed
//! outside the tree are the nightly `rust-src` component, which rustup keeps
//! per toolchain, and, when missing, from the system's packages: for `test
//! --kernel`, qemu, kmod and busybox; for `test` (the `report` module),
//! Debian's chromium, the headless browser that renders the report, and
//! (the `serve` module) Debian's prometheus, the server that scrapes
//! `tcptrace serve` and the promtool that checks it, and (the `cgroups`
//! module) Debian's runc, a real container runtime (see packages.rs).
mod bench;
mod fuzz;
mod packages;
mod toolchain;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use xtask::harness::PEER;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test tcptrace")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build needs (nightly rust-src, bpf-linker); no-op when present.
    Setup,
    /// Build the probe and the CLI (release).
    Build,
    /// Build, then run tcptrace with the given arguments (needs root).
    Run {
        /// Arguments for tcptrace, after `--`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the probe, then run every test, including those that load it.
    ///
    /// With `--kernel NAME` (not host), the integration tests run inside a
    /// qemu guest booted with that kernel by virtme-ng (installed into
    /// .tools/ when missing, as is the kernel): by default close_paths,
    /// lifetimes, views and cli, each module of the integration binary run
    /// on its own; results in target/vm/NAME/. KVM is used if
    /// it boots a guest here, TCG otherwise; TCPTRACE_VM_ACCEL=kvm|tcg
    /// overrides. The guest is killed after 25 minutes
    /// (TCPTRACE_VM_TIMEOUT=SECONDS overrides).
    Test {
        /// Kernel to test on: host (the running kernel, plain `cargo test`),
        /// or one xtask boots in a VM.
        #[arg(long, default_value = "host", value_parser = clap::builder::PossibleValuesParser::new(vm::kernel_names()))]
        kernel: String,
        /// Only this module of the integration tests (repeatable): capture,
        /// capture_disk, capture_input, cli, close_paths, lifetimes, load,
        /// report, startup, timewait_expiry, views.
        #[arg(long = "test", value_name = "MODULE", value_parser = clap::builder::PossibleValuesParser::new(INTEGRATION_MODULES))]
        tests: Vec<String>,
        /// Only the library's unit tests (or these with --test/--bin).
        #[arg(long)]
        lib: bool,
        /// Only the unit tests of this binary (repeatable).
        #[arg(long = "bin", value_name = "NAME")]
        bins: Vec<String>,
        /// Extra arguments: for `cargo test` on the host (e.g. a test name
        /// filter); in a VM, for each test binary (a filter, --nocapture).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// rustfmt check (the fuzz target's too) and clippy with warnings denied.
    Lint,
    /// Fuzz the capture reader (`tcptrace -r`) with libFuzzer for a while;
    /// installs cargo-fuzz into .tools/cargo-fuzz when missing, runs on the
    /// probe's nightly. A crash fails, naming the saved input
    /// (tcptrace/fuzz/artifacts/TARGET/).
    Fuzz(fuzz::Options),
    /// Benchmark under loopback churn: no tracer, tcptrace --all --json,
    /// tcptrace's default view and libbpf-tools tcpstates, in alternating
    /// rounds (needs root).
    Bench(bench::Options),
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    match cli.command {
        Cmd::Setup => toolchain::ensure(&root).map(|_| ()),
        Cmd::Build => build(&root).map(|_| ()),
        Cmd::Run { args } => {
            let bin = build(&root)?;
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            // Pass tcptrace's own exit code through.
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test {
            kernel,
            tests,
            lib,
            bins,
            args,
        } => {
            let probe = build_probe(&root)?;
            build_peer(&root)?;
            // The report module renders its page in a real browser.
            let all_modules = tests.is_empty() && !lib && bins.is_empty() && kernel == "host";
            if all_modules || tests.iter().any(|t| t == "report") {
                packages::ensure_chromium()?;
            }
            // The serve module scrapes with a real Prometheus server.
            if all_modules || tests.iter().any(|t| t == "serve") {
                packages::ensure_prometheus()?;
            }
            // The containers module runs a peer in a real container.
            if all_modules || tests.iter().any(|t| t == "containers") {
                packages::ensure_runc()?;
            }
            if kernel == "host" {
                let mut cmd = cargo(&root, &probe);
                cmd.args(["test", "--release"]);
                if lib {
                    cmd.arg("--lib");
                }
                if !tests.is_empty() {
                    cmd.args(["--test", INTEGRATION]);
                }
                for bin in &bins {
                    cmd.args(["--bin", bin]);
                }
                cmd.args(&args);
                if !tests.is_empty() {
                    // Modules by test-name filter (`close_paths::`), after
                    // the `--` that separates cargo's options from libtest's.
                    if !args.iter().any(|a| a == "--") {
                        cmd.arg("--");
                    }
                    cmd.args(tests.iter().map(|module| format!("{module}::")));
                }
                return cmd.run("cargo test");
            }
            // As with cargo test, a `--` between filter and test options.
            let mut args = args;
            if let Some(dashes) = args.iter().position(|a| a == "--") {
                args.remove(dashes);
            }
            vm::test(
                &root,
                &probe,
                &vm::Request {
                    kernel: &kernel,
                    tests: &tests,
                    lib,
                    bins: &bins,
                    args: &args,
                },
            )
        }
        Cmd::Bench(options) => bench::run(&root, options),
        Cmd::Fuzz(options) => {
            let probe = build_probe(&root)?;
            fuzz::run(&root, &probe, &options)
        }
        Cmd::Lint => {
            let probe = build_probe(&root)?;
            cargo(&root, &probe)
                .args(["fmt", "--all", "--check"])
                .run("cargo fmt --check")?;
            // The fuzz target is a workspace of its own (tcptrace/fuzz).
            cargo(&root, &probe)
                .args([
                    "fmt",
                    "--manifest-path",
                    "tcptrace/fuzz/Cargo.toml",
                    "--check",
                ])
                .run("cargo fmt --check (tcptrace/fuzz)")?;
            cargo(&root, &probe)
                .args([
                    "clippy",
                    "--all-targets",
                    "--release",
                    "--",
                    "-D",
                    "warnings",
                ])
                .run("cargo clippy")
        }
    }
}

/// The integration-test binary (tcptrace/tests/integration/main.rs).
const INTEGRATION: &str = "integration";
/// Its modules: a test's name starts with its module's (`cli::...`).
const INTEGRATION_MODULES: &[&str] = &[
    "capture",
    "capture_disk",
    "capture_input",
    "cgroups",
    "cli",
    "close_paths",
    "containers",
    "lifetimes",
    "load",
    "report",
    "serve",
    "startup",
    "timewait_expiry",
    "views",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Builds the probe and the release CLI; returns the CLI's path.
fn build(root: &Path) -> Result<PathBuf> {
    let probe = build_probe(root)?;
    cargo(root, &probe)
        .args(["build", "--release", "--package", "tcptrace"])
        .run("cargo build")?;
    Ok(root.join("target/release/tcptrace"))
}

/// Builds the test and bench peer (xtask/src/bin/tcptrace-peer.rs, a
/// development tool, not installed with tcptrace) next to the release CLI,
/// where the integration tests look for it; returns its path.
fn build_peer(root: &Path) -> Result<PathBuf> {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "--package", "xtask", "--bin", PEER])
        .run("building tcptrace-peer")?;
    Ok(root.join("target/release").join(PEER))
}

/// Builds the BPF object with nightly and bpf-linker; returns its path.
fn build_probe(root: &Path) -> Result<PathBuf> {
    probe_cargo(root, "build")?.run("building the probe")?;
    let object = root.join("target/bpf/bpfel-unknown-none/release/tcptrace-probe");
    if !object.exists() {
        bail!("the probe build produced no {}", object.display());
    }
    Ok(object)
}

/// `cargo +nightly <subcommand>` for the probe crate on the BPF target.
fn probe_cargo(root: &Path, subcommand: &str) -> Result<Command> {
    let tools = toolchain::ensure(root)?;
    let mut cmd = Command::new("rustup");
    toolchain::scrub_cargo_env(&mut cmd);
    cmd.current_dir(root)
        .args(["run", toolchain::NIGHTLY, "cargo", subcommand, "--release"])
        .args([
            "--package",
            "tcptrace-ebpf",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(root.join("target/bpf"))
        // BTF in the object lets the kernel check map and global types.
        // Without --disable-expand-memcpy-in-order, bpf-linker has LLVM turn
        // every memset/memcpy (zeroing an address, copying a record) into a
        // call to a byte-at-a-time loop: a fifth of the state program's run
        // time. With it, LLVM writes them out as word loads and stores.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\x1f-Clink-arg=--btf\x1f-Clink-arg=--disable-expand-memcpy-in-order",
        )
        .env("PATH", tools.path_with_linker());
    Ok(cmd)
}

/// A stable `cargo` command that knows where the probe object is.
fn cargo(root: &Path, probe: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root).env("TCPTRACE_PROBE_OBJECT", probe);
    cmd
}

trait RunChecked {
    fn run(&mut self, what: &str) -> Result<()>;
}

impl RunChecked for Command {
    fn run(&mut self, what: &str) -> Result<()> {
        let status = self
            .status()
            .with_context(|| format!("{what}: could not start {:?}", self.get_program()))?;
        if !status.success() {
            bail!("{what} failed ({status})");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// `--test MODULE` offers exactly the integration binary's modules.
    #[test]
    fn integration_modules_are_the_binarys() {
        let main = include_str!("../../tcptrace/tests/integration/main.rs");
        let declared: Vec<&str> = main
            .lines()
            .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
            .filter(|&m| m != "harness")
            .collect();
        assert_eq!(declared, super::INTEGRATION_MODULES);
    }
}
