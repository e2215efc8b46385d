//! Opening the KV buckets HarmonyLite keeps its shared state in, creating one when missing.

use async_nats::jetstream::{self, kv};
use tracing::{debug, info};

use crate::error::Chain;

/// Opens bucket `config.bucket`, creating it when missing with `config.num_replicas` copies,
/// fewer when the cluster has fewer servers (JetStream refuses more replicas than servers).
/// Another node may create it meanwhile, with its settings: then that one is opened. The error
/// is the last creation failure.
pub async fn ensure(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let mut last = String::new();
    for replicas in (1..=config.num_replicas.max(1)).rev() {
        let attempt = kv::Config {
            num_replicas: replicas,
            ..config.clone()
        };
        match js.create_key_value(attempt).await {
            Ok(store) => {
                info!(bucket = %config.bucket, replicas, "KV bucket created");
                return Ok(store);
            }
            Err(error) => {
                if let Ok(store) = js.get_key_value(&config.bucket).await {
                    return Ok(store);
                }
                debug!(bucket = %config.bucket, replicas, error = %Chain(&error), "cannot create the KV bucket");
                last = error.to_string();
            }
        }
    }
    Err(last)
}
