//! The appliance skeleton: flags, config errors, the bundled server (single node, cluster,
//! crash and restart, no orphans), external NATS with credentials and TLS, secrets in logs.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;

use crate::harness::nats::{NatsServer, pid_alive};
use crate::harness::node::process_toml;
use crate::harness::{Cluster, Node, NodeProcess, eventually, test_config};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harmonylite"))
}

#[test]
fn version_flag_in_both_spellings() {
    for flag in ["-version", "--version"] {
        let out = bin().arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("harmonylite 0.1.0"), "{flag}: {text}");
        assert!(text.contains("commit "), "{text}");
        assert!(text.contains("nats-server 2.15.1"), "{text}");
    }
}

#[test]
fn help_flag_lists_the_go_flags() {
    for flag in ["-help", "--help", "-h"] {
        let out = bin().arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}");
        let text = String::from_utf8_lossy(&out.stdout);
        for name in [
            "config",
            "node-id",
            "cleanup",
            "db",
            "save-snapshot",
            "cluster-addr",
            "cluster-peers",
            "leaf-servers",
            "version",
        ] {
            assert!(
                text.contains(name),
                "{flag} does not mention {name}:\n{text}"
            );
        }
    }
}

#[test]
fn unknown_config_key_is_an_error_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "db_path = \"/tmp/x.db\"\n\n[nats]\nbogus_key = 1\n").unwrap();
    let out = bin().args(["-config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus_key") && err.contains("line 4"), "{err}");
}

#[test]
fn bad_value_names_key_value_and_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "db_path = \"/tmp/x.db\"\n[replication_log]\nshards = 0\n",
    )
    .unwrap();
    let out = bin().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("replication_log.shards") && err.contains('0'),
        "{err}"
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = bin()
        .args(["-config", "/nonexistent/harmonylite.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/harmonylite.toml"));
}

#[tokio::test]
async fn single_embedded_node_runs_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let toml = process_toml(dir.path(), 1, "", "", "");
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    node.wait_ready().await;
    let server_pid = node.nats_pid().expect("ports file");
    assert!(pid_alive(server_pid));
    node.signal(libc::SIGTERM);
    assert_eq!(
        node.exit_code(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        node.log()
    );
    assert!(
        !pid_alive(server_pid),
        "bundled server outlived a clean stop"
    );
    let log = node.log();
    assert!(
        log.contains("nats-server") || log.contains("nats_server"),
        "server log lines are forwarded"
    );
}

#[tokio::test]
async fn parent_killed_with_sigkill_leaves_no_orphan_server() {
    let dir = tempfile::tempdir().unwrap();
    let toml = process_toml(dir.path(), 1, "", "", "");
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    node.wait_ready().await;
    let server_pid = node.nats_pid().expect("ports file");
    node.signal(libc::SIGKILL);
    assert_eq!(node.exit_code(Duration::from_secs(10)).await, None);
    eventually("orphan server gone", Duration::from_secs(10), async || {
        if pid_alive(server_pid) {
            Err("still alive")
        } else {
            Ok(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundled_server_killed_with_sigkill_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(test_config(dir.path(), 1), EmbeddedOptions::default()).await;
    let server = node.status.server().expect("embedded server");
    crate::harness::kill_bundled_server(&server).await;
    // The client reconnects to the same port and JetStream still answers.
    let client = async_nats::connect(node.nats_url()).await.unwrap();
    let js = jetstream::new(client);
    eventually_stream(&js, "harmonylite-changes-0").await;
    eventually("client reconnected", Duration::from_secs(30), async || {
        if node.status.nats_connected() {
            Ok(())
        } else {
            Err("disconnected")
        }
    })
    .await;
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

async fn eventually_stream(js: &jetstream::Context, name: &str) -> jetstream::stream::Info {
    eventually(
        &format!("stream {name}"),
        Duration::from_secs(30),
        async || match js.get_stream(name).await {
            Ok(mut s) => Ok(s.info().await.unwrap().clone()),
            Err(e) => Err(e.to_string()),
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_embedded_nodes_form_a_cluster_with_a_replicas_3_stream() {
    let cluster = Cluster::start(3, "", |cfg| cfg.replication_log.replicas = Some(3)).await;
    let client = async_nats::connect(cluster.node(1).nats_url())
        .await
        .unwrap();
    let js = jetstream::new(client);
    let info = eventually_stream(&js, "harmonylite-changes-0").await;
    assert_eq!(info.config.num_replicas, 3);
    let cl = info.cluster.expect("clustered stream");
    assert!(cl.leader.is_some());
    assert_eq!(
        cl.replicas.len(),
        2,
        "two followers besides the leader: {cl:?}"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_nats_with_user_and_password() {
    let server = NatsServer::start("authorization { user: \"app\", password: \"pw-3f9a\" }").await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.urls = vec![server.url()];
    cfg.nats.user_name = "app".into();
    cfg.nats.user_password = harmonylite::config::Secret::new("pw-3f9a".into());
    let node = Node::start(cfg.clone(), EmbeddedOptions::default()).await;
    assert!(node.status.nats_connected());
    assert!(
        node.status.server().is_none(),
        "no bundled server in external mode"
    );
    assert!(matches!(node.stop().await, Outcome::Stopped));

    cfg.nats.user_password = harmonylite::config::Secret::new("wrong".into());
    cfg.nats.connect_retries = 2;
    cfg.nats.reconnect_wait_seconds = 0;
    let err = Node::start_error(cfg).await;
    assert!(err.contains("after 2 attempts"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_nats_with_nkey_seed_file() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start(&format!(
        "authorization {{ users: [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let seed_path = dir.path().join("user.nk");
    std::fs::write(
        &seed_path,
        format!("# user seed\n{}\n", user.seed().unwrap()),
    )
    .unwrap();
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.urls = vec![server.url()];
    cfg.nats.seed_file = seed_path.to_string_lossy().into_owned();
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    assert!(node.status.nats_connected());
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_nats_with_mutual_tls() {
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::generate(certs.path());
    let server = NatsServer::start(&format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}",
        pki.server_cert, pki.server_key, pki.ca
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.urls = vec![server.tls_url()];
    cfg.nats.ca_file = pki.ca.clone();
    cfg.nats.cert_file = pki.client_cert.clone();
    cfg.nats.key_file = pki.client_key.clone();
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    assert!(node.status.nats_connected());
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

/// A throwaway CA with a server certificate for 127.0.0.1/localhost and a client certificate.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn generate(dir: &std::path::Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_string_lossy().into_owned()
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_cert, client_key) = leaf(vec!["harmonylite-client".into()]);
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server-key.pem", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client-key.pem", client_key),
        }
    }
}

#[tokio::test]
async fn embedded_server_requires_the_configured_credentials_and_logs_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-Pa55-7c1e";
    let toml = process_toml(
        dir.path(),
        1,
        "",
        &format!("user_name = \"hl\"\nuser_password = \"{secret}\""),
        "[logging]\nverbose = true\n",
    );
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &[]);
    node.wait_ready().await;
    let url = node.nats_client_url().expect("client port");
    assert!(
        async_nats::connect(&url).await.is_err(),
        "anonymous client was accepted"
    );
    let authed = async_nats::ConnectOptions::with_user_and_password("hl".into(), secret.into())
        .connect(&url)
        .await;
    assert!(authed.is_ok(), "configured credentials refused");
    node.signal(libc::SIGTERM);
    assert_eq!(node.exit_code(Duration::from_secs(30)).await, Some(0));
    assert!(
        !node.log().contains(secret),
        "the password appears in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_servers_flag_connects_the_bundled_server_to_a_hub() {
    use futures::StreamExt;
    // The hub runs JetStream in a domain, which an edge needs to reach it (decision 016).
    let dir = tempfile::tempdir().unwrap();
    let hub = NatsServer::start_plain(&format!(
        "jetstream {{ store_dir: {:?}, domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:-1\" }}",
        dir.path().join("hub-js")
    ))
    .await;
    let leaf_port = hub.leafnode_port();
    let flags = EmbeddedOptions {
        leaf_servers: vec![format!("nats://127.0.0.1:{leaf_port}")],
        ..EmbeddedOptions::default()
    };
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.jetstream_domain = "hub".to_owned();
    let node = Node::start(cfg, flags).await;
    let hub_client = async_nats::connect(hub.url()).await.unwrap();
    let mut sub = hub_client.subscribe("leaf.check").await.unwrap();
    hub_client.flush().await.unwrap();
    let local = async_nats::connect(node.nats_url()).await.unwrap();
    // The leaf connection may still be forming: publish until the hub sees one.
    let got = eventually(
        "message crossed the leaf connection",
        Duration::from_secs(30),
        async || {
            local.publish("leaf.check", "hello".into()).await.unwrap();
            local.flush().await.unwrap();
            match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                Ok(Some(msg)) => Ok(msg),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(&got.payload[..], b"hello");
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_server_config_is_included_and_wins() {
    let dir = tempfile::tempdir().unwrap();
    let operator = dir.path().join("operator.conf");
    std::fs::write(&operator, "max_payload: 3MB\n").unwrap();
    let mut cfg = test_config(dir.path(), 1);
    cfg.nats.server_config = operator.to_string_lossy().into_owned();
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let client = async_nats::connect(node.nats_url()).await.unwrap();
    assert_eq!(client.server_info().max_payload, 3 * 1024 * 1024);
    assert!(matches!(node.stop().await, Outcome::Stopped));
}
