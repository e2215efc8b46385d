//! What lets the writer stay idle: answers to the periodic reads (stream positions, state
//! facts, conflict-journal trims) kept while nothing was written. Housekeeping, the snapshot
//! leader's checks and the digests ask them every few seconds; read from the database, each
//! would parse the whole schema into the connection the writer lets go when idle (21 MB at
//! 1,000 tables). The writer's own other commands clear the answers; another connection's
//! commit shows in `PRAGMA data_version` (which parses nothing) and clears them too.

use std::collections::HashMap;

use crate::position::StreamPosition;

/// Answers kept since `data_version` was last seen unchanged.
#[derive(Debug, Default)]
pub struct ReadCache {
    data_version: Option<i64>,
    pub positions: Option<Vec<StreamPosition>>,
    pub state: HashMap<&'static str, Option<String>>,
    /// The conflict journal was trimmed to this many entries and nothing was written since.
    pub trimmed_to: Option<u64>,
}

impl ReadCache {
    /// Drops every answer unless `data_version` is the one they were read at (`None`: it could
    /// not be read, so nothing is trusted).
    pub fn at(&mut self, data_version: Option<i64>) -> &mut ReadCache {
        if data_version.is_none() || data_version != self.data_version {
            *self = ReadCache {
                data_version,
                ..ReadCache::default()
            };
        }
        self
    }

    /// Keeps the answers for a new connection, whose `data_version` counts from its own start
    /// (the writer let its schema go). Only the writer writes what they answer; the version
    /// check is for an operator's hand, so a commit between the last check and the swap is
    /// not worth a read that parses the schema again.
    pub fn carry_to(&mut self, data_version: Option<i64>) {
        self.data_version = data_version;
    }

    /// Drops every answer: the writer wrote.
    pub fn clear(&mut self) {
        *self = ReadCache::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_hold_only_at_their_data_version() {
        let mut cache = ReadCache::default();
        cache.at(Some(3)).trimmed_to = Some(10);
        cache.at(Some(3)).state.insert("k", None);
        assert_eq!(cache.at(Some(3)).trimmed_to, Some(10));
        assert_eq!(
            cache.at(Some(4)).trimmed_to,
            None,
            "another connection committed"
        );
        cache.at(Some(4)).trimmed_to = Some(10);
        assert_eq!(
            cache.at(None).trimmed_to,
            None,
            "an unknown version trusts nothing"
        );
        cache.at(Some(5)).trimmed_to = Some(10);
        cache.carry_to(Some(1));
        assert!(
            cache.at(Some(1)).trimmed_to.is_some(),
            "carried to a new connection's version"
        );
        cache.clear();
        assert_eq!(cache.at(Some(1)).trimmed_to, None, "the writer wrote");
    }
}
