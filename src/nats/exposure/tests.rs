use super::*;
use crate::config::Secret;

fn clustered(addr: &str) -> EmbeddedOptions {
    EmbeddedOptions {
        cluster_addr: Some(addr.to_owned()),
        cluster_peers: vec!["nats://10.0.0.2:6222".to_owned()],
        leaf_servers: vec![],
    }
}

fn cfg() -> Config {
    Config {
        db_path: "/d.db".into(),
        ..Config::default()
    }
}

#[test]
fn loopback_addresses() {
    for yes in [
        "127.0.0.1:6222",
        "127.0.0.2:1",
        "localhost:6222",
        "[::1]:6222",
        "::1",
    ] {
        assert!(is_loopback(yes), "{yes}");
    }
    for no in [
        ":6222",
        "0.0.0.0:6222",
        "10.0.0.1:6222",
        "[::]:6222",
        "node-1:6222",
        "",
    ] {
        assert!(!is_loopback(no), "{no}");
    }
}

#[test]
fn clustering_beyond_loopback_needs_route_authentication() {
    let flags = clustered("10.0.0.1:6222");
    let refused = insecure_cluster(&cfg(), &flags).expect("insecure");
    assert_eq!(refused.listen, "10.0.0.1:6222");
    let message = refused.to_string();
    for key in [
        "nats.user_name",
        "nats.user_password",
        "nats.cluster.tls",
        "nats.cluster.allow_insecure",
        "nats.server_config",
    ] {
        assert!(message.contains(key), "{key} missing: {message}");
    }

    // Loopback, standalone (no peers), or an external cluster: nothing to secure here.
    assert_eq!(insecure_cluster(&cfg(), &clustered("127.0.0.1:6222")), None);
    let mut standalone = clustered("10.0.0.1:6222");
    standalone.cluster_peers.clear();
    assert_eq!(insecure_cluster(&cfg(), &standalone), None);
    let mut external = cfg();
    external.nats.urls = vec!["nats://n:4222".to_owned()];
    assert_eq!(insecure_cluster(&external, &flags), None);

    let mut c = cfg();
    c.nats.user_name = "hl".to_owned();
    c.nats.user_password = Secret::new("pw".to_owned());
    assert_eq!(insecure_cluster(&c, &flags), None, "client credentials");
    let mut c = cfg();
    c.nats.seed_file = "/etc/hl/seed.nk".to_owned();
    assert!(
        insecure_cluster(&c, &flags).is_some(),
        "an nkey cannot authenticate routes"
    );
    c.nats.cluster.user_name = "route".to_owned();
    c.nats.cluster.user_password = Secret::new("pw".to_owned());
    assert_eq!(insecure_cluster(&c, &flags), None, "route credentials");
    let mut c = cfg();
    c.nats.cluster.tls = true;
    assert_eq!(insecure_cluster(&c, &flags), None, "route TLS");
    let mut c = cfg();
    c.nats.cluster.allow_insecure = true;
    assert_eq!(insecure_cluster(&c, &flags), None, "opted out");
}

fn with_operator_file(text: &str, extra: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in extra {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let path = dir.path().join("server.conf");
    std::fs::write(&path, text).unwrap();
    let mut c = cfg();
    c.nats.server_config = path.to_string_lossy().into_owned();
    (dir, c)
}

#[test]
fn the_operators_cluster_block_is_the_effective_one() {
    let flags = clustered("10.0.0.1:6222");
    let secured = [
        "cluster {\n  listen: 0.0.0.0:6222\n  authorization { user: a, password: b }\n}\n",
        "# comment { cluster\ncluster: {\n  tls: { cert_file: \"c\" }\n}\n",
        "cluster = { \"listen\" = \"0.0.0.0:6222\"; TLS { verify: true } }",
    ];
    for text in secured {
        let (_dir, c) = with_operator_file(text, &[]);
        assert_eq!(insecure_cluster(&c, &flags), None, "{text}");
    }
    // An operator block without authorization replaces ours, credentials included.
    let (_dir, mut c) = with_operator_file(
        "cluster {\n  listen: \"0.0.0.0:6222\" // no auth\n  routes: [\"nats://x:1\"]\n}\n",
        &[],
    );
    c.nats.user_name = "hl".to_owned();
    let refused = insecure_cluster(&c, &flags).expect("insecure");
    assert_eq!(refused.listen, "0.0.0.0:6222");
    // On loopback it is fine.
    let (_dir, c) = with_operator_file("cluster { listen: 127.0.0.1:6222 }", &[]);
    assert_eq!(insecure_cluster(&c, &flags), None);
    // Keys named like ours elsewhere do not count.
    let (_dir, c) = with_operator_file(
        "tls { cert_file: x }\nauthorization { user: a }\ncluster { listen: 0.0.0.0:1, \
         routes: [ \"tls\" ] }\n",
        &[],
    );
    assert!(insecure_cluster(&c, &flags).is_some());
    // A later top-level cluster block replaces an earlier one.
    let (_dir, c) = with_operator_file(
        "cluster { authorization { user: a } }\ncluster { listen: 0.0.0.0:1 }\n",
        &[],
    );
    assert!(insecure_cluster(&c, &flags).is_some());
}

#[test]
fn included_files_count_as_written_inline() {
    let flags = clustered("10.0.0.1:6222");
    let (_dir, c) = with_operator_file(
        "include \"routes.conf\"\n",
        &[(
            "routes.conf",
            "cluster { listen: 0.0.0.0:6222, authorization { user: a, password: b } }",
        )],
    );
    assert_eq!(insecure_cluster(&c, &flags), None);
    let (_dir, c) = with_operator_file(
        "cluster {\n  listen: 0.0.0.0:6222\n  include 'route-auth.conf'\n}\n",
        &[(
            "route-auth.conf",
            "authorization { user: a, password: b }\n",
        )],
    );
    assert_eq!(insecure_cluster(&c, &flags), None);
    // A file including itself stops at the depth limit.
    let (_dir, c) = with_operator_file("include server.conf\n", &[]);
    assert!(insecure_cluster(&c, &flags).is_some());
}

#[test]
fn a_leaf_node_listener_beyond_loopback_needs_authentication() {
    let flags = EmbeddedOptions::default();
    let open = "leafnodes {\n  port: 7422\n}\n";
    let (_dir, c) = with_operator_file(open, &[]);
    let found = exposures(&c, &flags);
    assert!(
        matches!(&found[..], [Exposure::LeafNodes(InsecureLeafNodes { listen })] if listen == "every interface"),
        "{found:?}"
    );
    let message = found[0].to_string();
    for key in [
        "nats.user_name",
        "nats.seed_file",
        "nats.cluster.allow_insecure",
    ] {
        assert!(message.contains(key), "{key} missing: {message}");
    }
    let fine = [
        "leafnodes { listen: 127.0.0.1:7422 }",
        "leafnodes { port: 7422, authorization { user: a, password: b } }",
        "leafnodes { listen: 0.0.0.0:7422\n tls { verify: true } }",
        "leafnodes { remotes: [ { url: \"nats://hub:7422\" } ] }",
        "authorization { user: a, password: b }\nleafnodes { port: 7422 }",
    ];
    for text in fine {
        let (_dir, c) = with_operator_file(text, &[]);
        assert_eq!(exposures(&c, &flags), vec![], "{text}");
    }
    // Client credentials of the node: leaf connections authenticate as clients.
    let (_dir, mut c) = with_operator_file(open, &[]);
    c.nats.user_name = "hl".to_owned();
    assert_eq!(insecure_leafnodes(&c), None);
    let (_dir, mut c) = with_operator_file(open, &[]);
    c.nats.cluster.allow_insecure = true;
    assert_eq!(insecure_leafnodes(&c), None);
}
