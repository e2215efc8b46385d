//! Integration tests: one binary, real processes only (see `harness`).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

// Shared with tests/faults: polling, fixed ports, processes.
#[path = "../common/mod.rs"]
mod common;

mod bounds;
mod capture;
mod consistency;
mod edge;
mod example;
mod go_compat;
mod harness;
mod monitoring;
mod operator;
mod recovery;
mod replication;
mod resources;
mod schema;
mod security;
mod skeleton;
mod snapshot;
mod snapshot_signing;
mod snapshot_stores;
mod systemd;
mod web;
