//! Schema versions: the hash every message carries, so nodes on different schemas pause
//! instead of applying rows to a table shaped differently.

pub mod hash;

pub use hash::{SchemaHash, hash_tables, schema_hash};
