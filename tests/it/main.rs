//! Integration tests: one binary, real processes only (see `harness`).

mod harness;
mod skeleton;
mod replication;
mod capture;
