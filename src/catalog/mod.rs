//! The application's tables as HarmonyLite sees them: which tables are captured and their
//! shape (`discover`: columns, affinities, key, unique indexes), and the schema hash over that
//! shape (`hash`), which every message carries. Reads the catalog through a connection it is
//! given; writes nothing.

pub mod discover;
pub mod hash;

pub use discover::{Affinity, ColumnMeta, SkippedTable, TableMeta, captured_tables, table_meta};
pub use hash::{SchemaHash, hash_tables, schema_hash};
