//! The ledger of acknowledged writes and the final state it implies.
//!
//! A writer appends an entry only after its transaction committed, with the `(ver, node)` the
//! capture trigger stamped on the key inside that same transaction. Under last-writer-wins the
//! final content of a key is the entry with the greatest `(ver, node)`: its row, or nothing when
//! that entry is a tombstone. Nothing else writes the application tables (the applier only copies
//! stamped versions), so this is exactly what every node must hold.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::schema::TABLES;

#[derive(Clone, Debug)]
pub struct Entry {
    pub table: usize,
    /// Canonical key text (`schema::fmt_values`).
    pub key: String,
    /// Canonical text of the value columns; `None` for a delete (or the old key of a key change).
    pub row: Option<String>,
    pub ver: i64,
    pub node: i64,
}

#[derive(Default)]
pub struct Ledger {
    entries: Mutex<Vec<Entry>>,
}

/// Per table: key → the winning entry.
pub type Winners = Vec<BTreeMap<String, Entry>>;

/// Per table: key → row text, live rows only.
pub type Content = Vec<BTreeMap<String, String>>;

pub struct Expected {
    pub winners: Winners,
    pub content: Content,
    /// Distinct writes that share a key and a `(ver, node)`: versions must be unique per key.
    pub anomalies: Vec<String>,
    pub entries: usize,
}

impl Ledger {
    pub fn record(&self, mut batch: Vec<Entry>) {
        self.entries.lock().unwrap().append(&mut batch);
    }

    pub fn expected(&self) -> Expected {
        let entries = self.entries.lock().unwrap();
        let mut winners: Winners = TABLES.iter().map(|_| BTreeMap::new()).collect();
        let mut anomalies = Vec::new();
        for e in entries.iter() {
            let slot = winners[e.table].entry(e.key.clone());
            match slot {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(e.clone());
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let cur = o.get();
                    if (e.ver, e.node) == (cur.ver, cur.node) && e.row != cur.row {
                        anomalies.push(format!(
                            "{} key {} has two writes at ({}, {}): {:?} and {:?}",
                            TABLES[e.table].name, e.key, e.ver, e.node, cur.row, e.row
                        ));
                    }
                    if (e.ver, e.node) > (cur.ver, cur.node) {
                        o.insert(e.clone());
                    }
                }
            }
        }
        let content = winners
            .iter()
            .map(|t| {
                t.iter()
                    .filter_map(|(k, e)| Some((k.clone(), e.row.clone()?)))
                    .collect()
            })
            .collect();
        Expected {
            winners,
            content,
            anomalies,
            entries: entries.len(),
        }
    }
}
