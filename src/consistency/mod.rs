//! Consistency: every node digests what its captured tables hold, from the content itself
//! (`cdc::digest`, read through `db::Reader::digests`), publishes the digests to KV
//! (`publish`), and `-verify-cluster` compares every node's (`compare`, `report`). Decision
//! 015 (`docs/decisions/015-consistency-digests.md`).

pub mod compare;
pub mod publish;
pub mod repair;
pub mod report;
pub mod rows;
