//! Embeds the probe object that `cargo xtask` built.
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=TCPTRACE_PROBE_OBJECT");
    let object = std::env::var_os("TCPTRACE_PROBE_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bpf/bpfel-unknown-none/release/tcptrace-probe")
        });
    if !object.exists() {
        println!(
            "cargo::error=the probe object {} is missing: build through `cargo xtask build` (or `cargo xtask test`)",
            object.display()
        );
        return;
    }
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy(&object, out.join("tcptrace-probe")).expect("copying the probe object");
}
