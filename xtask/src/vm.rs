//! `cargo xtask test --kernel NAME`: the integration tests inside a guest
//! running another kernel, with the real probe and real connections.
//!
//! The guest is booted with virtme-ng over the host's root filesystem (9p),
//! so the checkout and the test binaries are at the same paths inside. The
//! guest writes each binary's output and exit status into a directory of
//! ours shared read-write (`target/vm/NAME/`); those files, not vng's exit
//! code (255 even on success) nor the console (kernel messages mixed in),
//! decide the verdict. Everything is installed idempotently into places the
//! project owns: virtme-ng in `.tools/virtme-ng`, kernels (Debian packages,
//! extracted, never installed) in `.tools/kernels/NAME`. Only qemu, kmod and
//! busybox come from the system's package manager, when missing.
//!
//! KVM is used where it boots a guest, TCG otherwise: a short probe boot
//! decides, once per host boot (TCPTRACE_VM_ACCEL=kvm|tcg overrides).
use std::{
    fs,
    io::Write,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::RunChecked;

/// Kernels the tests can boot: name for `--kernel`, then the regex
/// (`apt-cache search --names-only`) of its Debian image package. The newest
/// match is taken (package names end in the kernel release, e.g.
/// linux-image-6.1.0-57-amd64); another kernel is one more line.
pub const KERNELS: &[(&str, &str)] = &[("debian-6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64$")];

/// `--kernel` values: the host's own kernel, then the table's.
pub fn kernel_names() -> Vec<&'static str> {
    std::iter::once("host")
        .chain(KERNELS.iter().map(|(name, _)| *name))
        .collect()
}

/// What `.ci/run` runs on every kernel (the issue's list): modules of the
/// integration binary, each run on its own (a verdict and result files each).
const DEFAULT_TESTS: &[&str] = &[
    "close_paths",
    "lifetimes",
    "views",
    "cli",
    "capture",
    "cgroups",
];

const VIRTME_NG_VERSION: &str = "1.42";
/// Host commands virtme-ng needs, and the Debian packages that bring them.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("depmod", "kmod"),
    ("busybox", "busybox-static"),
];
const MEMORY: &str = "2G";
const CPUS: &str = "2";
/// The whole guest run, boot to power-off; qemu is killed after it
/// (TCPTRACE_VM_TIMEOUT, in seconds, overrides).
const RUN_LIMIT: Duration = Duration::from_secs(25 * 60);
/// One test binary inside the guest (coreutils `timeout`, then SIGKILL).
const BINARY_LIMIT_SECS: u64 = 15 * 60;
/// The KVM probe: a KVM guest that boots reaches its script in seconds.
const KVM_PROBE_LIMIT: Duration = Duration::from_secs(25);

/// What to run in the guest.
pub struct Request<'a> {
    pub kernel: &'a str,
    /// Modules of the integration tests (`--test`); with no target at all,
    /// the default set.
    pub tests: &'a [String],
    /// Whether to run the library's unit tests (`--lib`).
    pub lib: bool,
    /// Binaries whose unit tests to run (`--bin`).
    pub bins: &'a [String],
    /// Arguments for each test binary (a name filter, `--nocapture`, ...).
    pub args: &'a [String],
}

#[derive(Clone, Copy, PartialEq)]
enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// One run of a test executable as cargo built it.
struct Binary {
    /// Name of its result files and in the report.
    label: String,
    path: PathBuf,
    /// Test-name filter, ahead of the request's arguments: the module's
    /// (`close_paths::`) for a module of the integration binary.
    filter: Option<String>,
}

pub fn test(root: &Path, probe: &Path, request: &Request) -> Result<()> {
    let started = Instant::now();
    let (name, pattern) = KERNELS
        .iter()
        .find(|(name, _)| *name == request.kernel)
        .copied()
        .ok_or_else(|| anyhow!("unknown kernel {:?}", request.kernel))?;

    let limit =
        match std::env::var("TCPTRACE_VM_TIMEOUT") {
            Ok(secs) => Duration::from_secs(secs.trim().parse().map_err(|_| {
                anyhow!("TCPTRACE_VM_TIMEOUT={secs}: expected a number of seconds")
            })?),
            Err(_) => RUN_LIMIT,
        };
    let forced = accel_override()?;
    let binaries = build_tests(root, probe, request)?;

    ensure_host_tools()?;
    let vng = ensure_virtme_ng(root)?;
    let kernel = ensure_kernel(root, name, pattern)?;
    let accel = match forced {
        Some(accel) => accel,
        None => probe_accel(root, &vng, &kernel)?,
    };

    let results = root.join("target/vm").join(name);
    if results.exists() {
        fs::remove_dir_all(&results)
            .with_context(|| format!("removing old results in {}", results.display()))?;
    }
    fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let script = results.join("guest.sh");
    write_script(
        &script,
        &guest_script(root, &results, accel, &binaries, request.args),
    )?;

    eprintln!(
        "xtask: booting {name} ({}, {}) for {}; console in {}",
        kernel.release,
        accel.name(),
        binaries
            .iter()
            .map(|b| b.label.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        results.join("console.log").display()
    );
    let boot = Boot {
        vng: &vng,
        kernel: &kernel,
        accel,
        rwdirs: &[&results],
        script: &script,
        console: &results.join("console.log"),
        limit,
        up_marker: Some(&results.join("uname")),
        progress: &binaries
            .iter()
            .map(|b| {
                (
                    results.join(format!("{}.rc", b.label)),
                    format!("{} finished in the guest", b.label),
                )
            })
            .collect::<Vec<_>>(),
    }
    .run()?;

    let timing = match boot.up_after {
        Some(up) => format!(
            "guest up after {:.1} s, tests and power-off {:.1} s, {:.1} s in all (build included)",
            up.as_secs_f64(),
            (boot.elapsed - up).as_secs_f64(),
            started.elapsed().as_secs_f64()
        ),
        None => format!("the guest ran {:.1} s", boot.elapsed.as_secs_f64()),
    };
    let console = results.join("console.log");
    let guest_release = fs::read_to_string(results.join("uname")).unwrap_or_default();
    let guest_release = guest_release.trim();
    if guest_release.is_empty() {
        let why = if boot.timed_out {
            format!("killed after {} s", limit.as_secs())
        } else {
            match last_line(&console) {
                Some(line) => format!("qemu exited: {line}"),
                None => "qemu exited".to_string(),
            }
        };
        bail!(
            "{name}: the guest never ran its script ({why}); see {}",
            console.display()
        );
    }
    if guest_release != kernel.release {
        bail!(
            "{name}: the guest runs {guest_release}, not {}",
            kernel.release
        );
    }

    let report = report(&results, &binaries)?;
    eprintln!("xtask: {name}: {timing}");
    let verdict = format!(
        "{name} ({guest_release}, {}): {} test {}, {} passed, {} failed",
        accel.name(),
        binaries.len(),
        if binaries.len() == 1 {
            "group"
        } else {
            "groups"
        },
        report.passed,
        report.failed
    );
    if boot.timed_out {
        bail!(
            "{verdict}; the guest was killed after {} s (TCPTRACE_VM_TIMEOUT sets the limit); see {}",
            limit.as_secs(),
            console.display()
        );
    }
    if !report.bad.is_empty() {
        bail!("{verdict}; failing: {}", report.bad.join(", "));
    }
    eprintln!("xtask: {verdict}");
    Ok(())
}

/// The last non-empty line of a file, if any.
fn last_line(path: &Path) -> Option<String> {
    let text = fs::read(path).ok()?;
    String::from_utf8_lossy(&text)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// `cargo test --no-run` for the requested targets; their executables.
fn build_tests(root: &Path, probe: &Path, request: &Request) -> Result<Vec<Binary>> {
    // (cargo's target kind, target name, label for the results, filter)
    let mut wanted: Vec<(&str, &str, String, Option<String>)> = Vec::new();
    let mut cmd = crate::cargo(root, probe);
    cmd.args(["test", "--release", "--no-run", "--package", "tcptrace"])
        .arg("--message-format=json-render-diagnostics");
    if request.lib {
        cmd.arg("--lib");
        wanted.push(("lib", "tcptrace", "lib".to_string(), None));
    }
    for bin in request.bins {
        cmd.args(["--bin", bin]);
        wanted.push(("bin", bin, format!("bin-{bin}"), None));
    }
    let defaults: Vec<String>;
    let tests = if request.tests.is_empty() && wanted.is_empty() {
        defaults = DEFAULT_TESTS.iter().map(|s| s.to_string()).collect();
        &defaults
    } else {
        request.tests
    };
    if !tests.is_empty() {
        cmd.args(["--test", crate::INTEGRATION]);
    }
    for module in tests {
        let filter = format!("{module}::");
        wanted.push(("test", crate::INTEGRATION, module.clone(), Some(filter)));
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run: could not start cargo")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let built: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["profile"]["test"] == true)
        .collect();
    wanted
        .into_iter()
        .map(|(kind, name, label, filter)| {
            let path = built
                .iter()
                .find(|msg| {
                    msg["target"]["name"] == name
                        && msg["target"]["kind"]
                            .as_array()
                            .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
                })
                .and_then(|msg| msg["executable"].as_str())
                .ok_or_else(|| {
                    anyhow!("cargo test --no-run reported no executable for the {kind} {name}")
                })?;
            Ok(Binary {
                label,
                path: PathBuf::from(path),
                filter,
            })
        })
        .collect()
}

/// Installs qemu, kmod and busybox with apt when a command is missing.
fn ensure_host_tools() -> Result<()> {
    let mut packages: Vec<&str> = HOST_TOOLS
        .iter()
        .filter(|(command, _)| find_command(command).is_none())
        .map(|(_, package)| *package)
        .collect();
    let venv_ok = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !venv_ok {
        packages.push("python3-venv");
    }
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {} with apt-get", packages.join(" "));
    apt("update").arg("-q").run("apt-get update")?;
    apt("install")
        .args(["-y", "-q", "--no-install-recommends"])
        .args(&packages)
        .run(&format!("apt-get install {}", packages.join(" ")))?;
    for (command, package) in HOST_TOOLS {
        if find_command(command).is_none() {
            bail!("{package} is installed but {command} is still not on PATH");
        }
    }
    Ok(())
}

pub(crate) fn apt(subcommand: &str) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.arg(subcommand).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// `command` on PATH or in the sbin directories (depmod lives there).
pub(crate) fn find_command(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(command))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A venv with virtme-ng in `.tools/virtme-ng`; returns its bin directory.
fn ensure_virtme_ng(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".tools/virtme-ng");
    let bin = venv.join("bin");
    let stamp = root.join(".tools/virtme-ng.version");
    let installed = fs::read_to_string(&stamp).unwrap_or_default();
    if bin.join("vng").exists() && installed.trim() == VIRTME_NG_VERSION {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing virtme-ng {VIRTME_NG_VERSION} into {}",
        venv.display()
    );
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .run("creating the virtme-ng venv")?;
    Command::new(bin.join("pip"))
        .args(["install", "-q", "--disable-pip-version-check"])
        .arg(format!("virtme-ng=={VIRTME_NG_VERSION}"))
        .run("installing virtme-ng")?;
    if !bin.join("vng").exists() {
        bail!(
            "pip installed virtme-ng but {} is missing",
            bin.join("vng").display()
        );
    }
    fs::write(&stamp, VIRTME_NG_VERSION).context("writing the virtme-ng stamp")?;
    Ok(bin)
}

/// An extracted kernel package.
struct Kernel {
    /// `uname -r` of the kernel, e.g. 6.1.0-57-amd64.
    release: String,
    vmlinuz: PathBuf,
}

/// The newest package matching `pattern`, downloaded and extracted into
/// `.tools/kernels/NAME/root` (vmlinuz in boot/, modules in lib/modules/,
/// where virtme-ng finds them). Kept until the table's pattern changes.
fn ensure_kernel(root: &Path, name: &str, pattern: &str) -> Result<Kernel> {
    let dir = root.join(".tools/kernels").join(name);
    let tree = dir.join("root");
    let stamp_path = dir.join("stamp");
    let stamp = fs::read_to_string(&stamp_path).unwrap_or_default();
    let field = |key: &str| {
        stamp
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")).map(str::to_string))
    };
    if field("pattern").as_deref() == Some(pattern) {
        if let Some(release) = field("release") {
            let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
            if vmlinuz.exists() && tree.join("lib/modules").join(&release).is_dir() {
                return Ok(Kernel { release, vmlinuz });
            }
        }
    }

    let package = match newest_package(pattern)? {
        Some(package) => package,
        None => {
            // A fresh machine may have no package lists yet.
            apt("update").arg("-q").run("apt-get update")?;
            newest_package(pattern)?
                .ok_or_else(|| anyhow!("apt knows no package matching {pattern}"))?
        }
    };
    eprintln!("xtask: fetching {package} into {}", dir.display());
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let download = dir.join("download");
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    let fetch = || {
        // As root into a directory _apt cannot enter: say so, or apt warns.
        apt("download")
            .args(["-o", "APT::Sandbox::User=root"])
            .arg(&package)
            .current_dir(&download)
            .run(&format!("apt-get download {package}"))
    };
    if fetch().is_err() {
        // The lists may name a version the archive no longer has.
        apt("update").arg("-q").run("apt-get update")?;
        fetch()?;
    }
    let deb = fs::read_dir(&download)
        .with_context(|| format!("reading {}", download.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| anyhow!("apt-get download {package} left no .deb"))?;
    let version = output(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg("Version"),
        "dpkg-deb --field",
    )?;
    Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tree)
        .run(&format!("extracting {}", deb.display()))?;
    fs::remove_dir_all(&download).with_context(|| format!("removing {}", download.display()))?;

    let release = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_string();
    let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() || !tree.join("lib/modules").join(&release).is_dir() {
        bail!(
            "{package} has no boot/vmlinuz-{release} with lib/modules/{release} (in {})",
            tree.display()
        );
    }
    fs::write(
        &stamp_path,
        format!(
            "pattern={pattern}\npackage={package}\nversion={}\nrelease={release}\n",
            version.trim()
        ),
    )
    .context("writing the kernel stamp")?;
    eprintln!("xtask: {name} is {package} {}", version.trim());
    Ok(Kernel { release, vmlinuz })
}

/// The newest package apt lists under `pattern`: by the numbers in its
/// name (linux-image-6.1.0-57-amd64 after -9-amd64).
fn newest_package(pattern: &str) -> Result<Option<String>> {
    let list = output(
        Command::new("apt-cache").args(["search", "--names-only", pattern]),
        "apt-cache search",
    )?;
    let numbers = |name: &str| -> Vec<u64> {
        name.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    Ok(list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .max_by_key(|name| numbers(name))
        .map(str::to_string))
}

/// Runs `cmd`; its stdout, or a one-line error with its last stderr line.
fn output(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        bail!(
            "{what} failed ({}){}",
            out.status,
            last.map(|l| format!(": {}", l.trim())).unwrap_or_default()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// TCPTRACE_VM_ACCEL, if set.
fn accel_override() -> Result<Option<Accel>> {
    match std::env::var("TCPTRACE_VM_ACCEL").as_deref() {
        Ok("kvm") => Ok(Some(Accel::Kvm)),
        Ok("tcg") => Ok(Some(Accel::Tcg)),
        Ok(other) => bail!("TCPTRACE_VM_ACCEL={other}: expected kvm or tcg"),
        Err(_) => Ok(None),
    }
}

/// KVM if a probe guest boots with it (cached for this host boot in
/// target/vm/kvm-probe), else TCG.
fn probe_accel(root: &Path, vng: &Path, kernel: &Kernel) -> Result<Accel> {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Ok(Accel::Tcg);
    }
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading /proc/sys/kernel/random/boot_id")?;
    let boot_id = boot_id.trim();
    let cache = root.join("target/vm/kvm-probe");
    if let Ok(cached) = fs::read_to_string(&cache) {
        match cached.split_whitespace().collect::<Vec<_>>()[..] {
            [id, "kvm"] if id == boot_id => return Ok(Accel::Kvm),
            [id, "tcg"] if id == boot_id => return Ok(Accel::Tcg),
            _ => {}
        }
    }

    eprintln!(
        "xtask: checking whether KVM boots a guest here (at most {} s, once per host boot)",
        KVM_PROBE_LIMIT.as_secs()
    );
    let dir = root.join("target/vm/kvm-probe.d");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let marker = dir.join("kvm");
    let script = dir.join("probe.sh");
    // accel=kvm:tcg falls back to TCG silently: only a guest that sees KVM's
    // CPUID signature counts.
    write_script(
        &script,
        &format!(
            "#!/bin/sh\ndmesg | grep -q 'Hypervisor detected: KVM' && echo ok > {}\n",
            quote(&marker)
        ),
    )?;
    let boot = Boot {
        vng,
        kernel,
        accel: Accel::Kvm,
        rwdirs: &[&dir],
        script: &script,
        console: &dir.join("console.log"),
        limit: KVM_PROBE_LIMIT,
        up_marker: None,
        progress: &[],
    }
    .run()?;
    let accel = if marker.exists() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    eprintln!(
        "xtask: KVM {} ({:.1} s; console in {}); using {}",
        if accel == Accel::Kvm {
            "boots a guest"
        } else if boot.timed_out {
            "probe timed out"
        } else {
            "does not boot a guest"
        },
        boot.elapsed.as_secs_f64(),
        dir.join("console.log").display(),
        accel.name()
    );
    fs::write(&cache, format!("{boot_id} {}\n", accel.name()))
        .with_context(|| format!("writing {}", cache.display()))?;
    Ok(accel)
}

fn write_script(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

/// The script the guest runs: set-up, then each binary under `timeout`,
/// its output in NAME.out and its exit status in NAME.rc.
fn guest_script(
    root: &Path,
    results: &Path,
    accel: Accel,
    binaries: &[Binary],
    args: &[String],
) -> String {
    let mut s = String::new();
    s.push_str("#!/bin/sh\n# Written by cargo xtask test --kernel; run inside the guest.\n");
    s.push_str("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
    s.push_str(&format!("R={}\n", quote(results)));
    s.push_str("[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing\n");
    s.push_str("ip link set lo up\n");
    if accel == Accel::Tcg {
        // Emulated CPUs are 10-50x slower: tests widen timing tolerances.
        s.push_str("export TCPTRACE_TEST_EMULATED=1\n");
    }
    s.push_str("uname -r > \"$R/uname.tmp\" && mv \"$R/uname.tmp\" \"$R/uname\"\n");
    // cargo runs integration tests from the package's directory.
    s.push_str(&format!("cd {} || exit 1\n", quote(root.join("tcptrace"))));
    let threads = if args.iter().any(|a| a.starts_with("--test-threads")) {
        String::new()
    } else {
        // Two emulated vCPUs: tests in parallel only stretch each other.
        " --test-threads=1".to_string()
    };
    let args: String = args.iter().map(|a| format!(" {}", quote(a))).collect();
    for binary in binaries {
        let name = &binary.label;
        let filter = match &binary.filter {
            Some(filter) => format!(" {}", quote(filter)),
            None => String::new(),
        };
        s.push_str(&format!(
            "echo \"xtask-guest: running {name}\"\n\
             timeout -k 10 {BINARY_LIMIT_SECS} {}{filter}{threads}{args} > \"$R/{name}.out\" 2>&1\n\
             echo $? > \"$R/{name}.rc\"\n",
            quote(&binary.path)
        ));
    }
    s.push_str("echo \"xtask-guest: done\"\n");
    s
}

/// Single-quoted for sh.
fn quote(s: impl AsRef<std::ffi::OsStr>) -> String {
    let s = s.as_ref().to_string_lossy();
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One guest run with vng.
struct Boot<'a> {
    vng: &'a Path,
    kernel: &'a Kernel,
    accel: Accel,
    rwdirs: &'a [&'a Path],
    script: &'a Path,
    /// vng's stdout and stderr: the guest's console.
    console: &'a Path,
    limit: Duration,
    /// A file the guest writes when its script starts (to time the boot).
    up_marker: Option<&'a Path>,
    /// Files the guest writes as it goes, each announced when it appears.
    progress: &'a [(PathBuf, String)],
}

struct Booted {
    timed_out: bool,
    elapsed: Duration,
    up_after: Option<Duration>,
}

/// The process group of the running vng (0: none), for the SIGINT handler.
static GUEST_GROUP: AtomicI32 = AtomicI32::new(0);

extern "C" fn kill_guest_and_exit(signal: libc::c_int) {
    let group = GUEST_GROUP.load(Ordering::SeqCst);
    if group > 0 {
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
    unsafe { libc::_exit(128 + signal) };
}

impl Boot<'_> {
    fn run(&self) -> Result<Booted> {
        let console = fs::File::create(self.console)
            .with_context(|| format!("creating {}", self.console.display()))?;
        let console_err = console
            .try_clone()
            .context("duplicating the console file")?;
        // vng shells out to virtme-run, which becomes qemu: all in a process
        // group of their own, so that a time-out kills every one of them.
        let mut path = vec![self.vng.to_path_buf()];
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        path.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
        let mut cmd = Command::new(self.vng.join("vng"));
        // --verbose: without it vng drops the guest's console, the script's
        // output included.
        cmd.arg("--run")
            .arg(&self.kernel.vmlinuz)
            .args(["--force-9p", "--user", "root", "--verbose"])
            .args(["--memory", MEMORY, "--cpus", CPUS]);
        if self.accel == Accel::Tcg {
            cmd.arg("--disable-kvm");
        }
        for dir in self.rwdirs {
            cmd.arg("--rwdir").arg(dir);
        }
        cmd.arg("--")
            .arg(self.script)
            .env("PATH", std::env::join_paths(path).context("PATH")?)
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .process_group(0);

        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "booting the guest: could not start {}",
                self.vng.join("vng").display()
            )
        })?;
        GUEST_GROUP.store(child.id() as i32, Ordering::SeqCst);
        let handler = kill_guest_and_exit as extern "C" fn(libc::c_int) as libc::sighandler_t;
        unsafe {
            libc::signal(libc::SIGINT, handler);
            libc::signal(libc::SIGTERM, handler);
        }
        let mut up_after = None;
        let mut timed_out = false;
        let mut announced = 0;
        loop {
            if up_after.is_none() && self.up_marker.is_some_and(Path::exists) {
                up_after = Some(started.elapsed());
                eprintln!(
                    "xtask: guest up after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            while let Some((file, what)) = self.progress.get(announced) {
                if !file.exists() {
                    break;
                }
                eprintln!("xtask: {what} ({:.0} s)", started.elapsed().as_secs_f64());
                announced += 1;
            }
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(err) => bail!("waiting for the guest: {err}"),
            }
            if started.elapsed() > self.limit {
                timed_out = true;
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        // Whatever vng's own exit: nothing of the guest is left behind.
        let group = child.id() as i32;
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = child.wait();
        // qemu is vng's child: wait (briefly) until it is gone too.
        let gone_by = Instant::now() + Duration::from_secs(10);
        while unsafe { libc::kill(-group, 0) } == 0 && Instant::now() < gone_by {
            thread::sleep(Duration::from_millis(50));
        }
        GUEST_GROUP.store(0, Ordering::SeqCst);
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
        }
        Ok(Booted {
            timed_out,
            elapsed: started.elapsed(),
            up_after,
        })
    }
}

struct Report {
    passed: u64,
    failed: u64,
    /// Binaries that failed or did not report.
    bad: Vec<String>,
}

/// Prints each binary's results (trimmed) and a verdict line per binary.
fn report(results: &Path, binaries: &[Binary]) -> Result<Report> {
    let mut report = Report {
        passed: 0,
        failed: 0,
        bad: Vec::new(),
    };
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    for binary in binaries {
        let name = &binary.label;
        let out_path = results.join(format!("{name}.out"));
        let out = fs::read_to_string(&out_path).unwrap_or_default();
        let rc = fs::read_to_string(results.join(format!("{name}.rc")))
            .ok()
            .and_then(|rc| rc.trim().parse::<i32>().ok());
        writeln!(
            stdout,
            "\n---- {name} (in the guest; full output in {})",
            out_path.display()
        )?;
        stdout.write_all(trimmed(&out).as_bytes())?;
        stdout.flush()?;

        let counts = libtest_counts(&out);
        if let Some((passed, failed)) = counts {
            report.passed += passed;
            report.failed += failed;
        }
        let counted = counts
            .map(|(p, f)| {
                let n = p + f;
                let tests = if n == 1 { "test" } else { "tests" };
                format!("{n} {tests}, {p} passed, {f} failed")
            })
            .unwrap_or_else(|| "no test result line".to_string());
        let verdict = match rc {
            None => "did not report (the guest stopped before it finished)".to_string(),
            Some(0) if counts.is_some() => format!("ok: {counted}"),
            Some(124) | Some(137) => {
                format!("timed out after {BINARY_LIMIT_SECS} s: {counted}")
            }
            Some(rc) => format!("FAILED (exit {rc}): {counted}"),
        };
        if rc != Some(0) || counts.is_none() {
            report.bad.push(name.clone());
        }
        eprintln!("xtask: {name}: {verdict}");
    }
    Ok(report)
}

/// Passed and failed counts from libtest's "test result:" lines.
fn libtest_counts(out: &str) -> Option<(u64, u64)> {
    let mut total = None;
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        let count = |what: &str| {
            rest.split(';')
                .find_map(|part| {
                    part.trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ")
                        .strip_suffix(what)
                })
                .and_then(|n| n.trim().parse::<u64>().ok())
        };
        let (p, f) = total.unwrap_or((0, 0));
        total = Some((p + count(" passed")?, f + count(" failed")?));
    }
    total
}

/// A binary's output for the terminal: each failure's captured output cut
/// to its first and last lines (the verifier log of a probe the kernel
/// refused is thousands of lines, once per test); the rest as it is.
fn trimmed(out: &str) -> String {
    const HEAD: usize = 25;
    const TAIL: usize = 10;
    fn flush(s: &mut String, section: &mut Vec<&str>) {
        let cut = section.len() > HEAD + TAIL + 1;
        for (i, line) in section.iter().enumerate() {
            if cut && i == HEAD {
                let more = section.len() - HEAD - TAIL;
                s.push_str(&format!("    [... {more} lines ...]\n"));
            }
            if !cut || i < HEAD || i >= section.len() - TAIL {
                s.push_str(line);
                s.push('\n');
            }
        }
        section.clear();
    }
    let mut s = String::new();
    let mut section: Vec<&str> = Vec::new();
    let mut in_failure = false;
    for line in out.lines() {
        if line.starts_with("---- ") && line.ends_with(" stdout ----") {
            flush(&mut s, &mut section);
            in_failure = true;
        } else if in_failure && (line == "failures:" || line.starts_with("test result: ")) {
            flush(&mut s, &mut section);
            in_failure = false;
        }
        if in_failure {
            section.push(line);
        } else {
            s.push_str(line);
            s.push('\n');
        }
    }
    flush(&mut s, &mut section);
    s
}
