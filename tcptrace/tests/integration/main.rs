//! The integration tests: the real tcptrace binary with the real probe, and
//! peers in separate processes making real connections, one module per
//! area. One binary, so the harness is compiled once and each test is
//! named by its module (`close_paths::server_closes_first`): run an area
//! alone with a filter, `cargo xtask test --test close_paths` (or
//! `cargo test --test integration -- close_paths::`).
//!
//! Tests run side by side with the others of their module, each in a
//! network namespace of its own, and never beside another module's
//! (`harness::Turn`), as when each module was a binary of its own:
//! lifetimes' histograms have no namespace key, load's churn would stretch
//! the timing-sensitive tests, startup's churn would count in load's
//! machine-wide counters.

mod harness;

mod capture;
mod capture_disk;
mod capture_input;
mod cgroups;
mod cli;
mod close_paths;
mod containers;
mod lifetimes;
mod load;
mod report;
mod serve;
mod startup;
mod timewait_expiry;
mod views;
