//! Secure defaults (issue 14): the bundled server's client listener stays on loopback unless
//! configured otherwise, its config files are private, and the binary is verified before every
//! start and restart.

use std::net::{IpAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use harmonylite::config::{Config, Secret};
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;

use crate::common::ports::fixed_ports;
use crate::harness::nats::NatsServer;
use crate::harness::node::{cluster_flags, process_toml};
use crate::harness::{CLUSTERS, Cluster, Node, NodeProcess, eventually, test_config};
use crate::web::http;

/// A config with the bundled server's default client listener (the harness pins loopback).
fn default_listener_config(dir: &Path) -> Config {
    let mut cfg = test_config(dir, 1);
    cfg.nats.bind_address = Config::default().nats.bind_address;
    cfg
}

/// An IPv4 address of this machine that is not loopback, if it has one.
fn non_loopback_ipv4() -> Option<IpAddr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read `sockaddr_in` entries.
    unsafe {
        if libc::getifaddrs(&mut addrs) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = addrs;
        while !cur.is_null() {
            let sa = (*cur).ifa_addr;
            if !sa.is_null() && i32::from((*sa).sa_family) == libc::AF_INET {
                let sin = &*(sa as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    found = Some(IpAddr::V4(ip));
                    break;
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(addrs);
        found
    }
}

#[tokio::test]
async fn default_client_listener_is_loopback_only_and_config_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = default_listener_config(dir.path());
    let operator = dir.path().join("operator.conf");
    std::fs::write(&operator, "# the operator's own settings\n").unwrap();
    std::fs::set_permissions(&operator, std::fs::Permissions::from_mode(0o644)).unwrap();
    cfg.nats.server_config = operator.to_string_lossy().into_owned();
    let node = Node::start(cfg, EmbeddedOptions::default()).await;
    let server = node.status.server().expect("embedded server");
    let port = u16::try_from(server.client_port()).unwrap();

    let nats_dir = node.cfg.data_dir().join("nats");
    for name in ["nats-server.conf", "operator.conf"] {
        let mode = std::fs::metadata(nats_dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {mode:o}");
    }
    let conf = std::fs::read_to_string(nats_dir.join("nats-server.conf")).unwrap();
    assert!(conf.contains("listen: \"127.0.0.1:-1\""), "{conf}");

    // This node's own connection works on loopback; another interface of the machine is closed.
    assert!(node.status.nats_connected());
    TcpStream::connect(("127.0.0.1", port)).expect("loopback client port");
    if let Some(ip) = non_loopback_ipv4() {
        let outside = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(2));
        assert!(outside.is_err(), "client port {port} answers on {ip}");
    }
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_binary_is_replaced_before_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(test_config(dir.path(), 1), EmbeddedOptions::default()).await;
    let server = node.status.server().expect("embedded server");
    let binary = node.cfg.data_dir().join("nats").join("nats-server");
    let genuine = std::fs::read(&binary).unwrap();

    // An impostor that leaves a mark and then runs the real server, swapped in by rename (the
    // running executable cannot be written in place).
    // Named like the real one: nats-server names its ports file after its executable.
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let real = dir.path().join("real").join("nats-server");
    std::fs::write(&real, &genuine).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mark = dir.path().join("impostor-ran");
    let impostor = dir.path().join("impostor");
    std::fs::write(
        &impostor,
        format!(
            "#!/bin/sh\ntouch {:?}\nexec {:?} \"$@\"\n",
            mark.display().to_string(),
            real.display().to_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&impostor, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&impostor, &binary).unwrap();

    crate::harness::kill_bundled_server(&server).await;
    assert!(!mark.exists(), "the supervisor ran the tampered binary");
    assert_eq!(
        std::fs::read(&binary).unwrap(),
        genuine,
        "binary not restored"
    );
    assert!(matches!(node.stop().await, Outcome::Stopped));
}

/// The real binary, given each secret key with a value of the wrong type, exits with a
/// configuration error that names the key and never shows the value.
#[test]
fn config_errors_never_print_a_secret_value() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [
        ("nats", "user_password"),
        ("nats.cluster", "user_password"),
        ("nats", "urls"),
        ("admin", "auth_token"),
        ("snapshot.s3", "secret"),
        ("snapshot.s3", "session_token"),
        ("snapshot.webdav", "url"),
        ("snapshot.sftp", "url"),
    ];
    for (section, key) in keys {
        let value = if key == "urls" {
            "\"nats://user:982451653@h:4222\""
        } else {
            "982451653"
        };
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!("db_path = \"/tmp/x.db\"\n[{section}]\n{key} = {value}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_harmonylite"))
            .arg("-config")
            .arg(&path)
            .output()
            .unwrap();
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{section}.{key}: {shown}");
        assert!(
            shown.contains(&format!("line 3: {section}.{key}")),
            "{shown}"
        );
        assert!(!shown.contains("982451653"), "{section}.{key}: {shown}");
    }
}

const ROUTE_USER: &str = "hl";
const ROUTE_PASSWORD: &str = "r0ute-Pa55/w@rd";

/// A server that tries to join node 0's cluster as a route, with `userinfo` (`user:pass@` or
/// empty) in its route URL.
async fn route_peer(cluster_port: u32, userinfo: &str) -> NatsServer {
    NatsServer::start_plain(&format!(
        "cluster {{\n  name: \"e-harmonylite\"\n  listen: \"127.0.0.1:-1\"\n  \
         routes: [\"nats://{userinfo}127.0.0.1:{cluster_port}\"]\n}}\n"
    ))
    .await
}

fn routes_of(server: &NatsServer) -> u64 {
    server.monitor("/routez")["num_routes"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_route_credentials_cannot_join_and_a_client_without_them_cannot_connect() {
    let cluster = Cluster::start(2, "", |cfg| {
        cfg.nats.user_name = ROUTE_USER.to_owned();
        cfg.nats.user_password = Secret::new(ROUTE_PASSWORD.to_owned());
    })
    .await;
    let node = cluster.node(0);
    let cluster_port = node.status.server().unwrap().cluster_port();

    let rogue = route_peer(cluster_port, "").await;
    rogue.wait_refused().await;
    assert_eq!(routes_of(&rogue), 0, "{}", rogue.log());
    assert_eq!(rogue.monitor("/routez")["routes"], serde_json::json!([]));

    // The same server with the credentials joins: the refusal above was about them.
    let friend = route_peer(cluster_port, &format!("{ROUTE_USER}:r0ute-Pa55%2Fw%40rd@")).await;
    eventually("route accepted", Duration::from_secs(20), async || {
        let n = routes_of(&friend);
        if n >= 1 { Ok(()) } else { Err(n) }
    })
    .await;
    drop(friend);

    let url = node.nats_url();
    assert!(
        async_nats::connect(&url).await.is_err(),
        "a client without credentials connected"
    );
    async_nats::ConnectOptions::with_user_and_password(
        ROUTE_USER.to_owned(),
        ROUTE_PASSWORD.to_owned(),
    )
    .connect(&url)
    .await
    .expect("with credentials");
    cluster.stop().await;
}

/// `-cluster-addr` on every interface with peers, for a process node.
fn open_cluster_args(listen: u16, peer: u16) -> Vec<String> {
    vec![
        "-cluster-addr".to_owned(),
        format!("0.0.0.0:{listen}"),
        "-cluster-peers".to_owned(),
        format!("nats://127.0.0.1:{peer}"),
    ]
}

#[tokio::test]
async fn a_new_installation_clustering_beyond_loopback_without_route_auth_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ports = fixed_ports(2);
    let args = open_cluster_args(ports[0], ports[1]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let toml = process_toml(dir.path(), 1, "", "", "");
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &args);
    assert_eq!(
        node.exit_code(Duration::from_secs(30)).await,
        Some(2),
        "{}",
        node.log()
    );
    let log = node.log();
    for key in [
        "0.0.0.0",
        "nats.user_name",
        "nats.user_password",
        "nats.cluster.user_name",
        "nats.cluster.tls",
        "nats.cluster.cert_file",
        "nats.server_config",
        "nats.cluster.allow_insecure",
    ] {
        assert!(log.contains(key), "{key} not named: {log}");
    }
    assert!(
        TcpStream::connect(("127.0.0.1", ports[0])).is_err(),
        "the route port was opened"
    );

    // A leaf-node listener for anyone, through the operator's file, is refused the same way.
    let operator = dir.path().join("leaf.conf");
    std::fs::write(&operator, "leafnodes { listen: \"0.0.0.0:-1\" }\n").unwrap();
    let leaf_toml = process_toml(
        dir.path(),
        1,
        "",
        &format!("server_config = {:?}", operator.display().to_string()),
        "",
    );
    let mut leaf = NodeProcess::spawn(dir.path(), 1, &leaf_toml, &[]);
    assert_eq!(
        leaf.exit_code(Duration::from_secs(30)).await,
        Some(2),
        "{}",
        leaf.log()
    );
    assert!(leaf.log().contains("leaf-node listener"), "{}", leaf.log());
    assert!(leaf.log().contains("nats.seed_file"), "{}", leaf.log());

    // The documented opt-out starts it (standalone here: the peer never comes).
    let toml = process_toml(
        dir.path(),
        1,
        "",
        "",
        "[nats.cluster]\nallow_insecure = true\n",
    );
    let mut node = NodeProcess::spawn(dir.path(), 1, &toml, &args);
    eventually(
        "opted-out node runs",
        Duration::from_secs(30),
        async || match TcpStream::connect(("127.0.0.1", ports[0])) {
            Ok(_) => Ok(()),
            Err(e) => match node.exited() {
                Some(status) => panic!("exited with {status}: {}", node.log()),
                None => Err(e.to_string()),
            },
        },
    )
    .await;
}

/// Starts two nodes whose routes listen on every interface without authentication.
async fn open_cluster(dir: &Path, ports: &[u16], tune: impl Fn(&mut Config)) -> Vec<Node> {
    let starts = (0..2).map(|i| {
        let mut cfg = test_config(dir, i as u64 + 1);
        tune(&mut cfg);
        let mut flags = cluster_flags(ports, i);
        flags.cluster_addr = Some(format!("0.0.0.0:{}", ports[i]));
        Node::start(cfg, flags)
    });
    futures::future::join_all(starts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_installation_that_would_be_refused_starts_with_a_loud_warning() {
    let _permit = CLUSTERS.acquire().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // An installation from before the check: its databases hold our internal tables.
    for id in [1, 2] {
        let node = Node::start(test_config(dir.path(), id), EmbeddedOptions::default()).await;
        assert!(matches!(node.stop().await, Outcome::Stopped));
    }
    let nodes = open_cluster(dir.path(), &fixed_ports(2), |cfg| {
        cfg.health_check.enable = true;
        cfg.health_check.bind = "127.0.0.1:0".into();
        cfg.admin.enable = true;
        cfg.admin.bind = "127.0.0.1:0".into();
    })
    .await;
    for node in &nodes {
        let warnings = node.status.security_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("nats.cluster.allow_insecure"),
            "{warnings:?}"
        );
        let addrs = node.status.web_addrs();
        let health = http::get(addrs.health.unwrap(), "/health").await;
        assert_eq!(health.status, 200, "a warning does not fail the probe");
        let shown = health.json()["security_warnings"].clone();
        assert_eq!(shown, serde_json::json!(warnings), "{}", health.body);
        let page = http::get(addrs.admin.unwrap(), "/").await;
        assert!(page.body.contains("data-security-warning"), "{}", page.body);
        assert!(
            page.body.contains("nats.cluster.allow_insecure"),
            "{}",
            page.body
        );
    }
    for node in nodes {
        assert!(matches!(node.stop().await, Outcome::Stopped));
    }
}

/// A CA and one certificate for every node, usable as server and as client (routes dial out
/// with the same certificate they serve).
fn route_pki(dir: &Path) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
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
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        write("route-ca.pem", ca_cert.pem()),
        write("route.pem", cert.pem()),
        write("route.key", key.serialize_pem()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_route_cluster_replicates_and_refuses_a_peer_without_tls() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = route_pki(pki.path());
    let cluster = Cluster::start(
        2,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
        |cfg| {
            cfg.nats.cluster.tls = true;
            cfg.nats.cluster.ca_file = ca.clone();
            cfg.nats.cluster.cert_file = cert.clone();
            cfg.nats.cluster.key_file = key.clone();
        },
    )
    .await;
    cluster
        .db(0)
        .exec("INSERT INTO t VALUES (1, 'over mutual TLS')");
    cluster.db(1).exec("INSERT INTO t VALUES (2, 'back')");
    cluster
        .wait_converged(&["t"], Duration::from_secs(30))
        .await;
    assert_eq!(cluster.db(1).count("t"), 2);

    let cluster_port = cluster.node(0).status.server().unwrap().cluster_port();
    let rogue = route_peer(cluster_port, "").await;
    // The TLS-requiring side closes each attempt; after a few, no route has formed.
    eventually("plain route refused", Duration::from_secs(20), async || {
        let closed = rogue.log().matches("Router connection closed").count();
        if closed >= 3 {
            Ok(())
        } else {
            Err(rogue.log())
        }
    })
    .await;
    assert_eq!(routes_of(&rogue), 0, "{}", rogue.log());
    cluster.stop().await;
}
