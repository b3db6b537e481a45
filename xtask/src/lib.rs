//! The part of xtask that tcptrace's integration tests share with
//! `cargo xtask bench` (tcptrace dev-depends on this package, which is never
//! published): see `harness`.
pub mod harness;
