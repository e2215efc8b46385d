//! Shared by the test targets `it` and `faults`, each of which includes this directory with
//! `#[path = "../common/mod.rs"] mod common;` (every test target is its own crate): waiting on
//! conditions with deadlines (`poll`), ports a server must be told before it starts (`ports`),
//! real processes: spawning, readiness, signals, kill, restart and log capture (`process`),
//! the Prometheus text format (`metrics`), a TCP link that can be cut (`link`) and a process's
//! resident memory (`memory`).

// Each target uses a different part.
#![allow(dead_code)]

pub mod link;
pub mod memory;
pub mod metrics;
pub mod poll;
pub mod ports;
pub mod process;
