//! What a hostile or broken peer costs a node (`docs/decisions/012-resource-bounds.md`), on real
//! nodes fed raw messages: table names a node does not have stay out of the metric labels, and
//! a flood of chunks (redelivered, duplicated, never completed) stays within the shard's budget,
//! is handed back rather than dropped, and neither stalls the other shard nor keeps a
//! legitimate chunked row out. A big row costs a receiver a small multiple of its size, and
//! the memory is given back.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Context};
use harmonylite::change::{ChangeBatch, Value};
use harmonylite::metrics::UNKNOWN_TABLE;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;
use harmonylite::replication::{chunk, wire};

use crate::common::memory::{noise, peak_rss_until, rss_kib, rss_range_until};
use crate::harness::messages::foreign_row;
use crate::harness::nats::NatsServer;
use crate::harness::node::{NodeProcess, process_toml};
use crate::harness::{AppDb, Cluster, Node, eventually, test_config};
use crate::web::{http, metrics_addr};

const CONVERGE: Duration = Duration::from_secs(60);
const SCHEMA: &str = "CREATE TABLE books(id INTEGER PRIMARY KEY, title TEXT NOT NULL);
                      CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB);";
/// Shard 0's subject (the stream a hostile peer floods).
const SHARD_0: &str = "harmonylite-change-log-0";

/// A batch of one row of `table` from a peer this cluster does not have, under `node`'s schema.
fn one_row(node: &Node, table: &str, value: Value) -> ChangeBatch {
    foreign_row(node, table, "data", value)
}

async fn jetstream_of(node: &Node) -> Context {
    jetstream::new(async_nats::connect(node.nats_url()).await.unwrap())
}

/// Publishes `messages` (headers, payload) to shard 0, pipelined, and waits for every ack.
async fn publish_all(js: &Context, messages: Vec<(HeaderMap, Vec<u8>)>) {
    let mut acks = Vec::with_capacity(messages.len());
    for (headers, payload) in messages {
        let ack = js
            .publish_with_headers(SHARD_0, headers, payload.into())
            .await
            .unwrap();
        acks.push(ack);
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

fn chunk_headers(id: &str, index: usize, total: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(chunk::CHUNK_ID_HEADER, id);
    headers.insert(chunk::CHUNK_HEADER, format!("{index}/{total}").as_str());
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_a_node_does_not_have_share_one_metric_label() {
    let cluster = Cluster::start(2, SCHEMA, |cfg| {
        cfg.prometheus.enable = true;
        cfg.prometheus.bind = "127.0.0.1:0".into();
    })
    .await;
    let js = jetstream_of(cluster.node(0)).await;
    let ghosts = 40;
    let messages = (0..ghosts)
        .map(|i| {
            let batch = one_row(cluster.node(1), &format!("ghost-{i}"), Value::Null);
            (HeaderMap::new(), wire::encode(&batch, true).unwrap())
        })
        .collect();
    publish_all(&js, messages).await;
    cluster
        .db(0)
        .exec("INSERT INTO books VALUES (1, 'after the ghosts')");
    cluster.wait_converged(&["books"], CONVERGE).await;
    // Every ghost is journaled (the journal keeps names; it is not a label)...
    let db = cluster.db(1);
    eventually("ghosts journaled", CONVERGE, async || {
        match db.query_i64(
            "SELECT count(DISTINCT tbl) FROM __harmonylite__conflicts WHERE kind = 'missing_table'",
        ) {
            Some(n) if n == ghosts => Ok(()),
            other => Err(other),
        }
    })
    .await;
    // ...and counted, by the sampler, under one label on the metrics endpoint.
    let want = format!(
        "harmonylite_conflicts_total{{kind=\"missing_table\",node_id=\"2\",table=\"{UNKNOWN_TABLE}\"}} {ghosts}"
    );
    let addr = metrics_addr(cluster.node(1));
    let text = eventually("ghosts counted", CONVERGE, async || {
        let text = http::get(addr, "/metrics").await.body;
        if text.contains(&want) {
            Ok(text)
        } else {
            Err(text
                .lines()
                .filter(|l| l.contains("conflicts_total"))
                .map(str::to_owned)
                .collect::<Vec<_>>())
        }
    })
    .await;
    assert!(
        !text.contains("ghost-"),
        "a message's table name became a label"
    );
    let series = text
        .lines()
        .filter(|l| l.starts_with("harmonylite_conflicts_total{"))
        .count();
    assert_eq!(series, 1, "{text}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_flood_stays_bounded_and_a_chunked_row_still_arrives() {
    let cluster = Cluster::start(2, SCHEMA, |cfg| cfg.replication_log.shards = 2).await;
    let node = cluster.node(1);
    let js = jetstream_of(cluster.node(0)).await;
    // A legitimate row too large for one message, in chunks under the server's payload limit.
    let blob: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let payload = wire::encode(&one_row(node, "blobs", Value::Blob(blob.clone())), false).unwrap();
    let pieces = chunk::split(&payload.into(), 512 * 1024);
    let n = pieces.len();
    let legit = |i: usize| (chunk_headers("legit", i, n), pieces[i].to_vec());
    // Its first chunk, twice (a republished copy), before the flood: the oldest set held.
    publish_all(&js, vec![legit(0), legit(0)]).await;
    // More incomplete sets than the shard may hold, some chunks of them sent several times.
    let flood = chunk::MAX_HELD_CHUNKS + 400;
    let bogus = (0..flood)
        .map(|i| {
            (
                chunk_headers(&format!("bogus-{i}"), 0, 2),
                vec![i as u8; 16],
            )
        })
        .chain((0..50).map(|i| {
            (
                chunk_headers(&format!("bogus-{i}"), 0, 2),
                vec![i as u8; 16],
            )
        }))
        .collect();
    publish_all(&js, bogus).await;
    eventually("the flood reaches the budget", CONVERGE, async || {
        let m = &node.metrics;
        match (m.chunks_requeued.get(), m.chunk_duplicates.get()) {
            (requeued, duplicates) if requeued > 0 && duplicates > 0 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    // Ordinary messages keep flowing on both shards, the flooded one included.
    cluster.db(0).tx(|tx| {
        for i in 0..100 {
            tx.execute("INSERT INTO books VALUES (?1, 'during the flood')", [i])
                .unwrap();
        }
    });
    cluster.wait_converged(&["books"], CONVERGE).await;
    // The rest of the legitimate set: the oldest set pushes younger ones out and completes.
    publish_all(&js, (1..n).map(legit).collect()).await;
    let db = cluster.db(1);
    eventually("the chunked row applied", CONVERGE, async || {
        match db.query_i64("SELECT length(data) FROM blobs WHERE id = 1") {
            Some(len) if len == blob.len() as i64 => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let sample = db
        .query_string("SELECT hex(substr(data, 2000001, 16)) FROM blobs WHERE id = 1")
        .unwrap();
    assert_eq!(sample, hex::encode_upper(&blob[2_000_000..2_000_016]));
    let m = &node.metrics;
    let held = m.chunks_held.get();
    assert!(held > 0, "the bogus sets are still held");
    assert!(
        held as usize <= chunk::MAX_HELD_CHUNKS,
        "{held} chunks held"
    );
    assert!(m.chunks_held_bytes.get() as usize <= chunk::MAX_BYTES);
    assert_eq!(
        m.malformed_messages.get(),
        0,
        "nothing dropped for lack of room"
    );
    cluster.stop().await;
}

/// What one apply transaction holds is bounded by decoded bytes, not by what arrived: three
/// messages of a few kilobytes that decode to 20 MiB each, waiting together in the stream, are
/// applied in two transactions (the bound, 32 MiB, is crossed by the second), and all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_decodes_large_is_split_into_transactions() {
    const BLOB: usize = 20 << 20;
    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.urls = vec![server.url()];
    AppDb::open(&cfg.db_path).exec(SCHEMA);
    // The first run creates the stream and this node's consumer; the messages then wait.
    let node = Node::start(cfg.clone(), EmbeddedOptions::default()).await;
    let messages: Vec<(HeaderMap, Vec<u8>)> = (1..=3)
        .map(|id| {
            let mut batch = one_row(&node, "blobs", Value::Blob(vec![0; BLOB]));
            let row = &mut batch.tables[0].rows[0];
            row.key = vec![Value::Integer(id)];
            row.values[0] = Value::Integer(id);
            (HeaderMap::new(), wire::encode(&batch, true).unwrap())
        })
        .collect();
    assert!(
        messages.iter().all(|(_, m)| m.len() < 64 * 1024),
        "compressed small"
    );
    assert!(matches!(node.stop().await, Outcome::Stopped));
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    publish_all(&js, messages).await;

    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let db = node.app_db();
    eventually("three blobs applied", CONVERGE, async || {
        match db.query_i64("SELECT count(*) FROM blobs WHERE length(data) = 20971520") {
            Some(3) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    // Counted once each transaction is acked, a moment after its rows are visible.
    eventually("three batches counted", CONVERGE, async || {
        match node.metric("harmonylite_applied_batches_total") {
            Some(3.0) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(
        node.metric("harmonylite_apply_latency_seconds_count"),
        Some(2.0),
        "one transaction up to the bound, one after it"
    );
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_row_costs_a_small_multiple_of_its_size_and_is_given_back() {
    // Each harmonylite process alone (its bundled server is another process), the writer's and
    // the receiver's: at its peak it holds at most two and a half times the row above its idle
    // size (issue 18 asks for three; the message is let go once its CBOR is written or read, so
    // about two copies are held, and a third copy measures 2.7-3.1 times here), and afterwards
    // goes back within twice its idle size (the benchmark measures 1, 16 and 64 MiB).
    const ROW: usize = 32 << 20;
    const ROW_KIB: u64 = (ROW >> 10) as u64;
    let dir = tempfile::tempdir().unwrap();
    let ports = crate::common::ports::fixed_ports(2);
    let mut nodes = Vec::new();
    for (i, id) in [1u64, 2].into_iter().enumerate() {
        AppDb::open(&dir.path().join(format!("node{id}.db"))).exec(SCHEMA);
        // No digests: a round reads every row, which is not what this test measures.
        let sections = "[replication_log]\nreplicas = 1\n[consistency]\ndigest_interval_ms = 0\n";
        let toml = process_toml(dir.path(), id, "", "", sections);
        let (me, peer) = (ports[i], ports[1 - i]);
        let addr = format!("127.0.0.1:{me}");
        let peers = format!("nats://127.0.0.1:{peer}");
        let args = [
            "-cluster-addr",
            addr.as_str(),
            "-cluster-peers",
            peers.as_str(),
        ];
        nodes.push(NodeProcess::spawn(dir.path(), id, &toml, &args));
    }
    for node in &mut nodes {
        node.wait_ready().await;
    }
    let pids: Vec<u32> = nodes
        .iter()
        .map(|n| n.process.pid().expect("the node runs"))
        .collect();
    // Idle: once the resident sizes stop moving after the start (start-up buffers are being
    // released), within 256 KiB over half a second.
    let mut last = pids.iter().map(|&p| rss_kib(p)).collect::<Vec<_>>();
    let idle = eventually("the nodes' RSS settles", CONVERGE, async || {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
        let settled = now.iter().zip(&last).all(|(a, b)| a.abs_diff(*b) <= 256);
        last = now.clone();
        if settled { Ok(now) } else { Err(now) }
    })
    .await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (done, pids) = (done.clone(), pids.clone());
        std::thread::spawn(move || peak_rss_until(&pids, &done))
    };
    // Incompressible: the message is as big as the row, so a copy of it counts in full.
    let blob = noise(ROW, 1);
    AppDb::open(&dir.path().join("node1.db")).execute("INSERT INTO blobs VALUES (1, ?1)", [blob]);
    let receiver = AppDb::open(&dir.path().join("node2.db"));
    eventually("the row on the receiver", CONVERGE, async || match receiver
        .query_i64("SELECT length(data) FROM blobs WHERE id = 1")
    {
        Some(len) if len == ROW as i64 => Ok(()),
        other => Err(other),
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    for (who, (idle, peak)) in ["writer", "receiver"].iter().zip(idle.iter().zip(&peak)) {
        println!("a {ROW_KIB} KiB row: {who} idle {idle} KiB, peak {peak} KiB");
        assert!(
            peak.saturating_sub(*idle) <= 5 * ROW_KIB / 2,
            "{who}: peak {peak} KiB is more than two and a half rows ({ROW_KIB} KiB each) above \
             idle {idle} KiB"
        );
    }
    eventually(
        "the memory given back",
        Duration::from_secs(30),
        async || {
            let now: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
            if now.iter().zip(&idle).all(|(now, idle)| *now <= 2 * idle) {
                Ok(())
            } else {
                Err(format!("{now:?} KiB, idle {idle:?} KiB"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_round_holds_one_big_row_at_a_time() {
    // A digest round reads every row of every table. Twelve rows of 8 MiB: a round that held a
    // chunk of rows (5,000 of them) would hold all 96 MiB at once; reading one row at a time it
    // holds one row and SQLite's copy of it.
    const ROW: usize = 8 << 20;
    const ROWS: i64 = 12;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node1.db");
    AppDb::open(&db).exec(SCHEMA);
    let sections = "[replication_log]\nreplicas = 1\n[consistency]\ndigest_interval_ms = 2000\n";
    let toml = process_toml(dir.path(), 1, "", "", sections);
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    node.wait_ready().await;
    let pid = node.process.pid().expect("the node runs");
    let app = AppDb::open(&db);
    for id in 0..ROWS {
        let blob: Vec<u8> = (0..ROW as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ id as u8)
            .collect();
        app.execute(
            "INSERT INTO blobs VALUES (?1, ?2)",
            rusqlite::params![id, blob],
        );
    }
    // Published (the publisher's buffers are not what this test measures).
    let published = "SELECT count(*) FROM __harmonylite__blobs_clock WHERE ver <= \
                     (SELECT ver FROM __harmonylite__published WHERE tbl = 'blobs')";
    eventually("the rows published", CONVERGE, async || {
        match app.query_i64(published) {
            Some(ROWS) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let url = node
        .nats_client_url()
        .expect("the bundled server's address");
    let js = jetstream::new(async_nats::connect(url).await.unwrap());
    // And delivered back to this node (its consumer reads its own messages too): decoding them
    // is not what this test measures either.
    let last = {
        let mut stream = js.get_stream("harmonylite-changes-0").await.unwrap();
        stream.info().await.unwrap().state.last_sequence as i64
    };
    eventually("the rows delivered back", CONVERGE, async || {
        match app.query_i64("SELECT coalesce(max(floor), 0) FROM __harmonylite__floors") {
            Some(floor) if floor >= last => Ok(()),
            other => Err((other, last)),
        }
    })
    .await;
    // The bucket exists once the first round is published.
    let revision = async || match js
        .get_key_value(harmonylite::consistency::publish::BUCKET)
        .await
    {
        Ok(kv) => kv
            .entry("node-1")
            .await
            .ok()
            .flatten()
            .map_or(0, |e| e.revision),
        Err(_) => 0,
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || rss_range_until(&[pid], &done)[0])
    };
    // Two more published rounds: at least one ran whole while the sampler watched, and the
    // memory given back after it is the least.
    let from = revision().await;
    eventually("two digest rounds", CONVERGE, async || {
        match revision().await {
            now if now >= from + 2 => Ok(()),
            now => Err(now),
        }
    })
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (least, peak) = sampler.join().unwrap();
    assert!(least <= peak, "the node's RSS was sampled");
    let row_kib = (ROW >> 10) as u64;
    println!("digest rounds over {ROWS} rows of {row_kib} KiB: RSS {least}..{peak} KiB");
    assert!(
        peak.saturating_sub(least) <= 4 * row_kib,
        "digest rounds moved the node between {least} and {peak} KiB: more than four rows of \
         {row_kib} KiB"
    );
}
