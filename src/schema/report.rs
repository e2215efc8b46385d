//! `harmonylite -schema-status` and `-schema-status-cluster`: what an operator checks during a
//! rolling schema upgrade.
//!
//! `-schema-status` needs no daemon: it hashes the database now and reads the previous hash and
//! the paused shards the node last recorded (`store`). `-schema-status-cluster` reads every
//! node's registry entry from NATS (`nats.urls`, or this node's running bundled server, found
//! through its ports file) and groups the nodes by hash.

use std::collections::BTreeMap;
use std::path::Path;

use super::registry::{self, RegistryEntry};
use super::store::{self, StoredState};
use super::tracker::restored_versions;
use crate::config::Config;
use crate::db::Reader;
use crate::db::read::SchemaProbe;
use crate::nats::command;

/// Errors of the status commands, worded for the terminal.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read the schema of {path}: {reason}")]
    Database { path: String, reason: String },
    #[error(transparent)]
    Nats(#[from] command::CommandError),
    #[error("cannot start the runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
}

/// Runs the status commands asked for and returns their text.
pub fn run(cfg: &Config, local: bool, cluster: bool) -> Result<String, ReportError> {
    let mut out = String::new();
    if local {
        out.push_str(&local_status(cfg)?);
    }
    if cluster {
        if local {
            out.push('\n');
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ReportError::Runtime(e.to_string()))?;
        out.push_str(&runtime.block_on(cluster_status(cfg))?);
    }
    Ok(out)
}

/// The text of `-schema-status`.
pub fn local_status(cfg: &Config) -> Result<String, ReportError> {
    let db_err = |reason: String| ReportError::Database {
        path: cfg.db_path.display().to_string(),
        reason,
    };
    let mut reader = Reader::open(&cfg.db_path).map_err(|e| db_err(format!("{e:#}")))?;
    let probe = reader
        .probe_schema(&cfg.sharding.ignore_tables)
        .map_err(|e| db_err(format!("{e:#}")))?;
    let path = store::state_path(&cfg.data_dir());
    let stored = store::load(&path);
    Ok(format_local(cfg, &probe, &path, stored))
}

fn format_local(
    cfg: &Config,
    probe: &SchemaProbe,
    path: &Path,
    stored: std::io::Result<Option<StoredState>>,
) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{k:<15}{v}\n"));
    line("node_id:", &cfg.node_id().to_string());
    line("database:", &cfg.db_path.display().to_string());
    line("schema_hash:", &probe.hash.0);
    let (stored, note) = match stored {
        Ok(s) => (s, None),
        Err(e) => (None, Some(format!("unreadable ({e})"))),
    };
    let versions = restored_versions(stored.as_ref(), probe);
    line(
        "previous_hash:",
        versions.previous.as_ref().map_or("none", |p| p.0.as_str()),
    );
    line(
        "tables:",
        &format!("{} ({})", probe.tables.len(), probe.tables.join(", ")),
    );
    match (&stored, note) {
        (_, Some(note)) => line("state file:", &format!("{} {note}", path.display())),
        (None, None) => line(
            "state file:",
            &format!("{} (none yet: the node has not run)", path.display()),
        ),
        (Some(s), None) => {
            let paused = if s.paused_shards.is_empty() {
                "no".to_owned()
            } else {
                let shards: Vec<String> = s.paused_shards.iter().map(u32::to_string).collect();
                format!("yes, shards {}", shards.join(", "))
            };
            line("paused:", &format!("{paused} (as of {})", s.updated_at));
            if s.schema_hash != probe.hash {
                line(
                    "note:",
                    &format!(
                        "the node last recorded hash {}; a running node picks the change up \
                         within seconds, a stopped one when it starts",
                        s.schema_hash
                    ),
                );
            }
        }
    }
    out
}

/// The text of `-schema-status-cluster`.
pub async fn cluster_status(cfg: &Config) -> Result<String, ReportError> {
    let client = command::connect(cfg).await?;
    let js = crate::nats::client::jetstream(client, &cfg.nats);
    let entries = registry::list(&js).await?;
    Ok(format_cluster(cfg.node_id().0, &entries))
}

fn format_cluster(local: u64, entries: &BTreeMap<String, Result<RegistryEntry, String>>) -> String {
    let mut out = format!(
        "schema registry {} ({} nodes)\n",
        registry::BUCKET,
        entries.len()
    );
    let mut groups: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (key, entry) in entries {
        match entry {
            Ok(e) => {
                let me = if e.node_id == local {
                    " (this node)"
                } else {
                    ""
                };
                let previous = if e.previous_hash.is_empty() {
                    "none"
                } else {
                    e.previous_hash.as_str()
                };
                let paused = if e.paused {
                    let s: Vec<String> = e.paused_shards.iter().map(u32::to_string).collect();
                    format!("yes (shards {})", s.join(", "))
                } else {
                    "no".to_owned()
                };
                out.push_str(&format!(
                    "{key}{me}\n  schema_hash:   {}\n  previous_hash: {previous}\n  \
                     paused:        {paused}\n  updated_at:    {}\n  version:       {}\n",
                    e.schema_hash, e.updated_at, e.harmonylite_version
                ));
                if let Some(instance) = e.instance() {
                    out.push_str(&format!("  instance:      {instance}\n"));
                }
                groups.entry(&e.schema_hash).or_default().push(e.node_id);
            }
            Err(reason) => out.push_str(&format!("{key}\n  unreadable: {reason}\n")),
        }
    }
    let list = |ids: &[u64]| {
        ids.iter()
            .map(|i| format!("node-{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match groups.len() {
        0 => out.push_str("no node has registered yet\n"),
        1 => {
            let (hash, ids) = groups.iter().next().expect("one group");
            out.push_str(&format!(
                "all {} nodes share schema hash {hash}\n",
                ids.len()
            ));
        }
        n => {
            // The largest group is the reference; on a tie, the one holding this node.
            let reference = groups
                .iter()
                .max_by_key(|(_, ids)| (ids.len(), ids.contains(&local)))
                .map(|(h, _)| *h)
                .expect("several groups");
            out.push_str(&format!("{n} different schema hashes:\n"));
            for (hash, ids) in &groups {
                out.push_str(&format!("  {hash}: {}\n", list(ids)));
            }
            let differ: Vec<u64> = groups
                .iter()
                .filter(|(h, _)| **h != reference)
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect();
            out.push_str(&format!(
                "differ from the majority ({reference}): {}\n",
                list(&differ)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::SchemaHash;

    fn entry(node: u64, hash: &str) -> RegistryEntry {
        RegistryEntry {
            node_id: node,
            schema_hash: hash.into(),
            previous_hash: String::new(),
            harmonylite_version: "0.1.0".into(),
            updated_at: "2025-01-17T09:30:00.000Z".into(),
            paused: false,
            paused_shards: vec![],
            host: String::new(),
            data_dir: String::new(),
        }
    }

    #[test]
    fn cluster_view_groups_nodes_and_names_the_odd_ones() {
        let mut entries = BTreeMap::new();
        for (n, h) in [(1, "aaa"), (2, "aaa"), (3, "bbb")] {
            entries.insert(format!("node-{n}"), Ok(entry(n, h)));
        }
        let mut paused = entry(4, "bbb");
        paused.paused = true;
        paused.paused_shards = vec![0];
        entries.insert("node-4".into(), Ok(paused));
        entries.insert("node-5".into(), Err("not an entry".into()));
        let text = format_cluster(3, &entries);
        assert!(text.contains("(5 nodes)"), "{text}");
        assert!(text.contains("node-3 (this node)"), "{text}");
        assert!(text.contains("paused:        yes (shards 0)"), "{text}");
        assert!(text.contains("2 different schema hashes"), "{text}");
        // A tie goes to this node's group.
        assert!(
            text.contains("differ from the majority (bbb): node-1, node-2"),
            "{text}"
        );
        assert!(text.contains("node-5\n  unreadable"), "{text}");

        let same: BTreeMap<_, _> = [("node-1".to_owned(), Ok(entry(1, "aaa")))].into();
        assert!(format_cluster(1, &same).contains("all 1 nodes share schema hash aaa"));
        assert!(format_cluster(1, &BTreeMap::new()).contains("no node has registered"));
    }

    #[test]
    fn local_view_shows_hashes_and_pending_changes() {
        let cfg = Config {
            db_path: "/tmp/x.db".into(),
            node_id: Some(2),
            ..Config::default()
        };
        let probe = SchemaProbe {
            schema_version: 3,
            hash: SchemaHash("new".into()),
            tables: vec!["books".into(), "users".into()],
        };
        let path = Path::new("/tmp/state.json");
        let text = format_local(&cfg, &probe, path, Ok(None));
        assert!(text.contains("schema_hash:   new"), "{text}");
        assert!(text.contains("previous_hash: none"), "{text}");
        assert!(text.contains("tables:        2 (books, users)"), "{text}");
        assert!(text.contains("none yet"), "{text}");

        let stored = StoredState {
            node_id: crate::ids::NodeId(2),
            schema_hash: SchemaHash("old".into()),
            previous_hash: None,
            paused_shards: vec![1],
            updated_at: "2025-01-17T09:30:00.000Z".into(),
        };
        let text = format_local(&cfg, &probe, path, Ok(Some(stored)));
        assert!(text.contains("previous_hash: old"), "{text}");
        assert!(
            text.contains("paused:        yes, shards 1 (as of 2025"),
            "{text}"
        );
        assert!(text.contains("last recorded hash old"), "{text}");
    }
}
