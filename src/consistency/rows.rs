//! The rows of one digest bucket, for a peer that repairs it: every node answers requests on
//! `harmonylite.digests.<node id>.rows` with its clock rows of the bucket (key, version, node,
//! tombstone, values), a page at a time, in the replication wire format. A request names the
//! table, the bucket and the version to read on from; the reply carries the version to ask for
//! next in header `Harmonylite-Next` (absent on the last page), or `Harmonylite-Error`.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cdc::digest::BUCKETS;
use crate::change::{ChangeBatch, TableChanges};
use crate::db::Reader;
use crate::error::Chain;
use crate::ids::NodeId;
use crate::replication::wire;

/// Clock rows read per request: about `PAGE / BUCKETS` of them fall in the bucket.
const PAGE: usize = 6_400;
/// Most rows one fetch gathers (a bucket of a table of ~60 million rows); more is refused.
const MAX_ROWS: usize = 1_000_000;
const NEXT: &str = "Harmonylite-Next";
const ERROR: &str = "Harmonylite-Error";
const ASK_WITHIN: Duration = Duration::from_secs(30);

/// The subject node `node` answers on.
pub fn rows_subject(node: u64) -> String {
    format!("harmonylite.digests.{node}.rows")
}

/// One page request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowsRequest {
    pub table: String,
    pub bucket: usize,
    pub after: i64,
}

/// Task body: answers page requests until cancelled.
pub async fn serve(
    client: async_nats::Client,
    node: NodeId,
    db: PathBuf,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let subject = rows_subject(node.0);
    let mut requests = client.subscribe(subject.clone()).await?;
    info!(%subject, "serving digest bucket rows");
    loop {
        let request = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            request = requests.next() => request,
        };
        let Some(request) = request else {
            anyhow::bail!("the subscription to {subject} ended");
        };
        let Some(reply) = request.reply else {
            continue;
        };
        let (client, db) = (client.clone(), db.clone());
        let answer = async move {
            let (headers, payload) = match page(node, &db, &request.payload).await {
                Ok((payload, next)) => {
                    let mut headers = HeaderMap::new();
                    if let Some(next) = next {
                        headers.insert(NEXT, next.to_string().as_str());
                    }
                    (headers, payload)
                }
                Err(why) => {
                    warn!(reason = %why, "a digest rows request was refused");
                    let mut headers = HeaderMap::new();
                    headers.insert(ERROR, why.as_str());
                    (headers, Vec::new())
                }
            };
            let _ = client
                .publish_with_headers(reply, headers, payload.into())
                .await;
        };
        tokio::spawn(cancel.child_token().run_until_cancelled_owned(answer));
    }
}

/// One page: the encoded rows and the version to ask for next.
async fn page(
    node: NodeId,
    db: &std::path::Path,
    request: &[u8],
) -> Result<(Vec<u8>, Option<i64>), String> {
    let ask: RowsRequest =
        serde_json::from_slice(request).map_err(|e| format!("not a rows request: {e}"))?;
    if ask.bucket >= BUCKETS {
        return Err(format!("bucket {} does not exist", ask.bucket));
    }
    let db = db.to_path_buf();
    let table = ask.table.clone();
    let read = tokio::task::spawn_blocking(move || {
        Reader::open(&db)?.bucket_rows(&table, ask.bucket, ask.after, PAGE)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| Chain(&e).to_string())?;
    let Some((rows, next)) = read else {
        return Err(format!("table {} is not captured here", ask.table));
    };
    let batch = ChangeBatch {
        origin: node,
        schema_hash: String::new(),
        tables: vec![rows],
    };
    let bytes = wire::encode(&batch, true).map_err(|e| e.to_string())?;
    Ok((bytes, next))
}

/// Every row node `node` holds in `bucket` of `table`.
pub async fn fetch(
    client: &async_nats::Client,
    node: u64,
    table: &str,
    bucket: usize,
) -> anyhow::Result<TableChanges> {
    let mut all: Option<TableChanges> = None;
    let mut after = 0_i64;
    loop {
        let ask = RowsRequest {
            table: table.to_owned(),
            bucket,
            after,
        };
        let answer = tokio::time::timeout(
            ASK_WITHIN,
            client.request(rows_subject(node), serde_json::to_vec(&ask)?.into()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("node {node} did not answer within {ASK_WITHIN:?}"))??;
        let headers = answer.headers.clone().unwrap_or_default();
        if let Some(why) = headers.get(ERROR) {
            anyhow::bail!("node {node} refused: {why}");
        }
        let mut batch = wire::decode(&answer.payload)?;
        let page = batch
            .tables
            .pop()
            .ok_or_else(|| anyhow::anyhow!("node {node} sent no rows"))?;
        match &mut all {
            Some(all) => all.rows.extend(page.rows),
            None => all = Some(page),
        }
        if all.as_ref().is_some_and(|a| a.rows.len() > MAX_ROWS) {
            anyhow::bail!("bucket {bucket} of {table} holds more than {MAX_ROWS} rows");
        }
        match headers.get(NEXT).map(|v| v.as_str().parse::<i64>()) {
            Some(Ok(next)) => after = next,
            Some(Err(_)) => anyhow::bail!("node {node} sent a bad {NEXT} header"),
            None => break,
        }
    }
    all.ok_or_else(|| anyhow::anyhow!("node {node} sent nothing"))
}
