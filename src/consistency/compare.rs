//! Comparing the nodes' digests (pure): per table, agree, differ (with the buckets and the
//! nodes that hold something else), or cannot tell yet (changes in flight).
//!
//! The rules (`docs/decisions/015-consistency-digests.md`):
//! - a bucket where some node has rows without a clock row differs, on that node: written
//!   behind capture's back;
//! - a bucket where some node has a change still in its capture log is in flight;
//! - equal versions with different content differ: the nodes outside the largest group of equal
//!   content hold something nobody wrote under those versions;
//! - different versions differ only when nothing can still be travelling: every node read the
//!   same stream floors before and after its scan and had nothing left to publish. Otherwise the
//!   bucket is in flight, until the same difference outlives the settle time while every node's
//!   floors passed the streams' ends of when it was first seen (`Settling`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::cdc::digest::{BUCKETS, Bucket, TableDigest};

/// What a node's digest round saw besides the digests: what tells changes in flight apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundFacts {
    pub node_id: u64,
    /// When the scan finished, ms since the epoch.
    pub at_ms: u64,
    /// Stream floors before and after the scan (equal: nothing was applied meanwhile).
    pub floors_before: BTreeMap<String, u64>,
    pub floors_after: BTreeMap<String, u64>,
    /// Local changes JetStream had not acknowledged when the scan finished.
    pub pending: u64,
    /// Each stream's last sequence when the scan finished.
    #[serde(default)]
    pub streams_last: BTreeMap<String, u64>,
}

/// What one node published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDigests {
    #[serde(flatten)]
    pub round: RoundFacts,
    pub tables: Vec<TableDigest>,
    /// Its summary and table entries were read from different rounds.
    #[serde(default)]
    pub torn: bool,
}

impl NodeDigests {
    /// Whether this node had nothing in flight: no floor moved during its scan, every stream
    /// was applied to its end, nothing waited to be published, and its entries are of one
    /// round.
    fn still(&self) -> bool {
        !self.torn
            && self.round.pending == 0
            && self.round.floors_before == self.round.floors_after
            && self
                .round
                .streams_last
                .iter()
                .all(|(s, last)| self.round.floors_after.get(s).is_some_and(|f| f >= last))
    }
}

/// The verdict on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableVerdict {
    Agree,
    /// Some buckets differ: each with the nodes outside the majority and why.
    Differ(Vec<Difference>),
    /// Some buckets differ in a way changes still travelling explain.
    InFlight(Vec<usize>),
}

/// One bucket that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub bucket: usize,
    pub nodes: Vec<u64>,
    pub why: Why,
}

/// Why a bucket differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Unclocked,
    SameVersions,
    DifferentVersions,
    /// Different versions that stayed the same for the settle time while every node applied
    /// what the streams held when they were first seen.
    Unsettled,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::Unclocked => "rows without a clock row (written with capture off)",
            Why::SameVersions => "the same versions with different content",
            Why::DifferentVersions => {
                "different versions with every node at the same floors and nothing to publish"
            }
            Why::Unsettled => {
                "different versions that outlived the settle time while every node applied what \
                 was in flight"
            }
        })
    }
}

/// The verdict per table over every node's digests (a table a node lacks counts as empty).
pub fn compare(nodes: &[NodeDigests]) -> BTreeMap<String, TableVerdict> {
    let all_still = nodes.iter().all(NodeDigests::still)
        && nodes
            .windows(2)
            .all(|w| w[0].round.floors_after == w[1].round.floors_after);
    let tables: BTreeSet<&str> = nodes
        .iter()
        .flat_map(|n| n.tables.iter().map(|t| t.table.as_str()))
        .collect();
    let mut out = BTreeMap::new();
    for table in tables {
        let per_node: Vec<(u64, Option<&TableDigest>)> = nodes
            .iter()
            .map(|n| (n.round.node_id, n.tables.iter().find(|t| t.table == table)))
            .collect();
        out.insert(table.to_owned(), table_verdict(&per_node, all_still));
    }
    out
}

fn table_verdict(per_node: &[(u64, Option<&TableDigest>)], all_still: bool) -> TableVerdict {
    let mut differ = Vec::new();
    let mut in_flight = Vec::new();
    for b in 0..BUCKETS {
        let buckets: Vec<(u64, Bucket)> = per_node
            .iter()
            .map(|(id, t)| (*id, t.map_or_else(Bucket::default, |t| t.buckets[b])))
            .collect();
        match bucket_verdict(b, &buckets, all_still) {
            BucketVerdict::Agree => {}
            BucketVerdict::InFlight => in_flight.push(b),
            BucketVerdict::Differ(d) => differ.push(d),
        }
    }
    if !differ.is_empty() {
        TableVerdict::Differ(differ)
    } else if !in_flight.is_empty() {
        TableVerdict::InFlight(in_flight)
    } else {
        TableVerdict::Agree
    }
}

enum BucketVerdict {
    Agree,
    InFlight,
    Differ(Difference),
}

fn bucket_verdict(bucket: usize, buckets: &[(u64, Bucket)], all_still: bool) -> BucketVerdict {
    let unclocked: Vec<u64> = buckets
        .iter()
        .filter(|(_, b)| b.unclocked > 0)
        .map(|(id, _)| *id)
        .collect();
    if !unclocked.is_empty() {
        return BucketVerdict::Differ(Difference {
            bucket,
            nodes: unclocked,
            why: Why::Unclocked,
        });
    }
    if buckets.iter().any(|(_, b)| b.in_flux > 0) {
        return BucketVerdict::InFlight;
    }
    let same = |f: fn(&Bucket) -> (u64, u64)| buckets.windows(2).all(|w| f(&w[0].1) == f(&w[1].1));
    if same(|b| (b.rows, b.versions)) {
        if same(|b| (b.content, 0)) {
            return BucketVerdict::Agree;
        }
        return BucketVerdict::Differ(Difference {
            bucket,
            nodes: outside_majority(buckets, |b| b.content),
            why: Why::SameVersions,
        });
    }
    if !all_still {
        return BucketVerdict::InFlight;
    }
    BucketVerdict::Differ(Difference {
        bucket,
        nodes: outside_majority(buckets, |b| b.versions ^ b.rows.rotate_left(32)),
        why: Why::DifferentVersions,
    })
}

/// The nodes outside the largest group of equal `value`; a tie between the largest groups is
/// broken by the smaller value, so every reader names the same nodes.
fn outside_majority(buckets: &[(u64, Bucket)], value: fn(&Bucket) -> u64) -> Vec<u64> {
    let mut groups: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (id, b) in buckets {
        groups.entry(value(b)).or_default().push(*id);
    }
    let largest = groups.values().map(Vec::len).max().unwrap_or(0);
    let winner = groups
        .iter()
        .find(|(_, ids)| ids.len() == largest)
        .map(|(v, _)| *v);
    groups
        .into_iter()
        .filter(|(v, _)| Some(*v) != winner)
        .flat_map(|(_, ids)| ids)
        .collect()
}

/// In-flight buckets as seen in earlier rounds: a difference that stays the same (every node's
/// key count and version sum in the bucket unchanged) for the settle time, while every node's
/// floors reached what the streams held when it was first seen, is no longer in flight: the
/// changes that could explain it have all been applied.
#[derive(Debug, Default)]
pub struct Settling {
    seen: BTreeMap<(String, usize), Seen>,
}

#[derive(Debug)]
struct Seen {
    since_ms: u64,
    signature: Vec<(u64, u64, u64)>,
    streams: BTreeMap<String, u64>,
}

impl Settling {
    /// Turns the in-flight buckets of `verdicts` that outlived `settle_ms` into differences
    /// (`Why::Unsettled`), and remembers the others.
    pub fn settle(
        &mut self,
        nodes: &[NodeDigests],
        verdicts: &mut BTreeMap<String, TableVerdict>,
        now_ms: u64,
        settle_ms: u64,
    ) {
        let mut keep = BTreeMap::new();
        for (table, verdict) in verdicts.iter_mut() {
            let TableVerdict::InFlight(buckets) = verdict else {
                continue;
            };
            let mut settled = Vec::new();
            for &b in buckets.iter() {
                let held = buckets_of(nodes, table, b);
                // A key still in a capture log is a local change on its way: never settled.
                if held.iter().any(|(_, x)| x.in_flux > 0) {
                    continue;
                }
                let signature = signature(nodes, table, b);
                let key = (table.clone(), b);
                let seen = match self.seen.remove(&key) {
                    Some(seen) if seen.signature == signature => seen,
                    _ => Seen {
                        since_ms: now_ms,
                        signature,
                        streams: streams_end(nodes),
                    },
                };
                // Applied before the scan began (the floors before it, not after: a node that
                // applied the change during its scan may not have read it), and the nodes that
                // hold something else have nothing of their own left to publish (an unpublished
                // local write is a version nobody else can have yet).
                let applied = nodes.iter().all(|n| {
                    seen.streams
                        .iter()
                        .all(|(s, last)| n.round.floors_before.get(s).is_some_and(|f| f >= last))
                });
                let minority = minority_by_versions(nodes, table, b);
                let published = nodes
                    .iter()
                    .filter(|n| minority.contains(&n.round.node_id))
                    .all(|n| n.round.pending == 0);
                // Every node's digest was taken the settle time after the difference was first
                // seen: a node whose digests stopped coming (busy, stalled) is not taken for
                // one whose content stands still.
                let watched = nodes
                    .iter()
                    .all(|n| n.round.at_ms >= seen.since_ms.saturating_add(settle_ms));
                if applied && published && watched {
                    settled.push(Difference {
                        bucket: b,
                        nodes: minority,
                        why: Why::Unsettled,
                    });
                }
                keep.insert(key, seen);
            }
            if !settled.is_empty() {
                *verdict = TableVerdict::Differ(settled);
            }
        }
        self.seen = keep;
    }
}

/// The nodes outside the largest group of equal versions in bucket `b` of `table`.
pub fn minority_by_versions(nodes: &[NodeDigests], table: &str, b: usize) -> Vec<u64> {
    outside_majority(&buckets_of(nodes, table, b), |x| {
        x.versions ^ x.rows.rotate_left(32)
    })
}

/// Every node's (id, keys, version sum) in bucket `b` of `table`.
fn signature(nodes: &[NodeDigests], table: &str, b: usize) -> Vec<(u64, u64, u64)> {
    buckets_of(nodes, table, b)
        .into_iter()
        .map(|(id, x)| (id, x.rows, x.versions))
        .collect()
}

fn buckets_of(nodes: &[NodeDigests], table: &str, b: usize) -> Vec<(u64, Bucket)> {
    nodes
        .iter()
        .map(|n| {
            let bucket = n
                .tables
                .iter()
                .find(|t| t.table == table)
                .map_or_else(Bucket::default, |t| t.buckets[b]);
            (n.round.node_id, bucket)
        })
        .collect()
}

/// The highest last sequence any node saw per stream.
fn streams_end(nodes: &[NodeDigests]) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for n in nodes {
        for (s, last) in &n.round.streams_last {
            let e = out.entry(s.clone()).or_default();
            *e = (*e).max(*last);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(bucket: usize, b: Bucket) -> TableDigest {
        let mut buckets = vec![Bucket::default(); BUCKETS];
        buckets[bucket] = b;
        TableDigest {
            table: "t".into(),
            buckets,
            at_ms: 0,
        }
    }

    fn node(id: u64, b: Bucket, floor: u64, pending: u64) -> NodeDigests {
        let floors: BTreeMap<String, u64> = [("s".to_owned(), floor)].into();
        NodeDigests {
            round: RoundFacts {
                node_id: id,
                at_ms: 0,
                floors_before: floors.clone(),
                floors_after: floors,
                pending,
                streams_last: [("s".to_owned(), 9)].into(),
            },
            tables: vec![table(5, b)],
            torn: false,
        }
    }

    fn bucket(versions: u64, content: u64) -> Bucket {
        Bucket {
            rows: 10,
            versions,
            content,
            ..Bucket::default()
        }
    }

    fn verdict(nodes: &[NodeDigests]) -> TableVerdict {
        compare(nodes).remove("t").unwrap()
    }

    fn differ(nodes: Vec<u64>, why: Why) -> TableVerdict {
        TableVerdict::Differ(vec![Difference {
            bucket: 5,
            nodes,
            why,
        }])
    }

    #[test]
    fn each_rule_decides_as_documented() {
        let same = bucket(1, 2);
        let three = |b2: Bucket, floor2: u64, pending2: u64| {
            vec![
                node(1, same, 9, 0),
                node(2, b2, floor2, pending2),
                node(3, same, 9, 0),
            ]
        };
        assert_eq!(verdict(&three(same, 9, 0)), TableVerdict::Agree);
        assert_eq!(
            verdict(&three(bucket(1, 3), 8, 4)),
            differ(vec![2], Why::SameVersions),
            "moving floors do not excuse equal versions"
        );
        assert_eq!(
            verdict(&three(bucket(7, 3), 8, 0)),
            TableVerdict::InFlight(vec![5]),
            "node 2 has not applied what the others did"
        );
        assert_eq!(
            verdict(&three(bucket(7, 3), 9, 1)),
            TableVerdict::InFlight(vec![5]),
            "node 2 has a change to publish"
        );
        assert_eq!(
            verdict(&three(bucket(7, 3), 9, 0)),
            differ(vec![2], Why::DifferentVersions)
        );
        let unclocked = Bucket {
            unclocked: 1,
            ..same
        };
        assert_eq!(
            verdict(&three(unclocked, 8, 3)),
            differ(vec![2], Why::Unclocked)
        );
        let in_flux = Bucket { in_flux: 1, ..same };
        assert_eq!(
            verdict(&three(in_flux, 9, 0)),
            TableVerdict::InFlight(vec![5])
        );
    }

    #[test]
    fn a_tie_names_the_same_nodes_whatever_the_order() {
        let a = node(1, bucket(1, 2), 9, 0);
        let b = node(2, bucket(1, 3), 9, 0);
        let forward = verdict(&[a.clone(), b.clone()]);
        let backward = verdict(&[b, a]);
        assert_eq!(forward, backward);
        assert_eq!(
            forward,
            differ(vec![2], Why::SameVersions),
            "the smaller content wins a tie"
        );
    }

    #[test]
    fn a_difference_that_outlives_the_settle_time_differs() {
        // Node 1 always has something to publish (elsewhere): the quiet-cluster rule never
        // applies. Node 2 holds other versions in bucket 5; `pending2` is its own backlog.
        let nodes = |v: u64, floor: u64, pending2: u64, at_ms: u64| {
            let mut a = node(1, bucket(1, 2), floor, 1);
            let mut b = node(2, bucket(v, 3), floor, pending2);
            let mut c = node(3, bucket(1, 2), floor, 0);
            for n in [&mut a, &mut b, &mut c] {
                n.round.streams_last = [("s".to_owned(), 20)].into();
                n.round.at_ms = at_ms;
            }
            vec![a, b, c]
        };
        let mut settling = Settling::default();
        let mut round = |v: u64, floor: u64, pending2: u64, now: u64| {
            let nodes = nodes(v, floor, pending2, now);
            let mut verdicts = compare(&nodes);
            settling.settle(&nodes, &mut verdicts, now, 1000);
            verdicts.remove("t").unwrap()
        };
        let in_flight = TableVerdict::InFlight(vec![5]);
        assert_eq!(round(7, 9, 0, 0), in_flight);
        // Still the same difference, but the floors have not reached the streams' end of then.
        assert_eq!(round(7, 15, 0, 2000), in_flight);
        // It changed: the clock starts again.
        assert_eq!(round(8, 20, 0, 3000), in_flight);
        assert_eq!(round(8, 20, 0, 3500), in_flight);
        // Node 2 has a change of its own to publish: its other version may be that change.
        assert_eq!(round(8, 20, 1, 4000), in_flight);
        assert_eq!(round(8, 20, 0, 4100), differ(vec![2], Why::Unsettled));
        // Digests that stopped coming do not stand for content that stands still.
        let mut settling = Settling::default();
        let stalled = nodes(8, 20, 0, 0);
        for now in [0, 5000] {
            let mut verdicts = compare(&stalled);
            settling.settle(&stalled, &mut verdicts, now, 1000);
            assert_eq!(verdicts.remove("t").unwrap(), in_flight);
        }
    }
}
