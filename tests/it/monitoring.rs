//! The monitoring files the packages ship (packaging/monitoring/): the alert rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), every rule has a test,
//! the Grafana dashboard has the shape Grafana imports, and every metric the rules and the
//! dashboard name is one a running node exports (scraped after real traffic and a conflict, so
//! the labelled families exist).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harmonylite::config::Config;
use harmonylite::nats::server::EmbeddedOptions;
use harmonylite::node::Outcome;
use serde_json::Value;

use crate::harness::nats::NatsServer;
use crate::harness::{AppDb, Node, eventually, test_config};
use crate::web::{http, metrics_addr};

const RULES: &str = "harmonylite-alerts.yml";
const RULE_TESTS: &str = "harmonylite-alerts.test.yml";
const DASHBOARD: &str = "grafana-dashboard.json";

const USERS: &str = "CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT);";
const DEADLINE: Duration = Duration::from_secs(30);

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/monitoring")
}

fn read(file: &str) -> String {
    let path = monitoring_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `promtool args…` in packaging/monitoring (the unit tests name the rules file relative
/// to themselves) and panics with its output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is missing ({e}): scripts/test.sh installs it \
                 (apt-get install --no-install-recommends prometheus)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_every_rule_is_tested() {
    let checked = promtool(&["check", "rules", RULES]);
    promtool(&["test", "rules", RULE_TESTS]);
    let rules = read(RULES);
    let tests = read(RULE_TESTS);
    let names: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", names.len())),
        "promtool counts another number of rules than `- alert:` lines ({}):\n{checked}",
        names.len()
    );
    // A firing case and a quiet one for each rule, at least.
    for name in names {
        let cases = tests
            .lines()
            .filter(|l| l.trim() == format!("alertname: {name}"))
            .count();
        assert!(
            cases >= 2,
            "{name} has {cases} test case(s) in {RULE_TESTS}, want a firing and a quiet one"
        );
    }
}

/// The rename docs/metrics.md gives for `namespace = "shop"`, `subsystem = "edge"`: the renamed
/// rules still pass their renamed tests, and no old name is left in any file.
#[test]
fn renamed_prefix_rules_pass_their_tests() {
    let dir = tempfile::tempdir().unwrap();
    for file in [RULES, RULE_TESTS, DASHBOARD] {
        let out = Command::new("sed")
            .arg(r"s/\bharmonylite_/shop_edge_/g")
            .arg(monitoring_dir().join(file))
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains("harmonylite_"), "{file}: a name is left");
        assert!(text.contains("shop_edge_ready"), "{file}: nothing renamed");
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let tests = dir.path().join(RULE_TESTS);
    promtool(&["test", "rules", tests.to_str().unwrap()]);
}

#[test]
fn grafana_dashboard_has_the_shape_grafana_imports() {
    let dash: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert_eq!(dash["uid"], "harmonylite");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(
        var("instance")["definition"],
        "label_values(harmonylite_build_info, instance)"
    );
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: id used twice"
        );
        let grid = &p["gridPos"];
        let right = grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap();
        assert!(right <= 24, "{title}: wider than the 24-column grid");
        if p["type"] == "row" {
            continue;
        }
        // Every query goes to the chosen data source and is limited to the chosen instances.
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: refId twice"
            );
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{title}: {expr} ignores $instance"
            );
        }
    }
}

/// Identifiers in `text` that start with `harmonylite_`: PromQL metric names (the prefix is
/// ours, so label names and values never match). A `:` ends a name: recording rules' names may
/// hold one, ours are not recorded, and prose writes "name: meaning".
fn metric_names(text: &str, into: &mut BTreeSet<String>) {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut rest = text;
    while let Some(at) = rest.find("harmonylite_") {
        let before = rest[..at].chars().next_back();
        let len = rest[at..].find(|c| !ident(c)).unwrap_or(rest.len() - at);
        let name = &rest[at..at + len];
        if !before.is_some_and(ident) && name.len() > "harmonylite_".len() {
            into.insert(name.to_owned());
        }
        rest = &rest[at + len..];
    }
}

/// Every string in the dashboard (queries, variable definitions, descriptions) is scanned.
fn dashboard_metric_names(v: &Value, into: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => metric_names(s, into),
        Value::Array(a) => a.iter().for_each(|v| dashboard_metric_names(v, into)),
        Value::Object(o) => o.values().for_each(|v| dashboard_metric_names(v, into)),
        _ => {}
    }
}

/// `name → type` of every family in a scrape (its `# TYPE` lines).
fn families(scrape: &str) -> Vec<(String, String)> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

/// Whether `name` is a family in `exported`, or the `_bucket`/`_sum`/`_count` series of an
/// exported histogram.
fn is_exported(name: &str, exported: &[(String, String)]) -> bool {
    exported.iter().any(|(n, t)| {
        n == name
            || (t == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(n.as_str())))
    })
}

/// Metrics only (no health or dashboard servers) on a free loopback port.
fn scraped_config(dir: &Path, id: u64, nats_url: String) -> Config {
    let mut cfg = test_config(dir, id);
    cfg.nats.urls = vec![nats_url];
    cfg.prometheus.enable = true;
    cfg.prometheus.bind = "127.0.0.1:0".into();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_query_only_metrics_a_node_exports() {
    let mut queried = BTreeSet::new();
    // Comments name no metric the rules use; everything else does.
    let rules: String = read(RULES)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    metric_names(&rules, &mut queried);
    dashboard_metric_names(
        &serde_json::from_str(&read(DASHBOARD)).unwrap(),
        &mut queried,
    );
    assert!(queried.len() > 20, "{queried:?}");

    let server = NatsServer::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=2 {
        let cfg = scraped_config(dir.path(), id, server.url());
        AppDb::open(&cfg.db_path).exec(USERS);
        nodes.push(Node::start(cfg, EmbeddedOptions::default()).await);
    }
    // Traffic both ways fills the latency histograms; the same e-mail written on both nodes
    // while node 2 is down is a unique conflict when it returns, which creates the labelled
    // conflicts family.
    let b = nodes.pop().unwrap();
    let a = &nodes[0];
    a.app_db()
        .exec("INSERT INTO users VALUES (1, 'a@x', 'from node 1')");
    eventually("row 1 applied on node 2", DEADLINE, async || {
        if b.applied() >= 1 {
            Ok(())
        } else {
            Err(b.applied())
        }
    })
    .await;
    let (cfg_b, embedded_b) = (b.cfg.clone(), b.embedded.clone());
    assert!(matches!(b.stop().await, Outcome::Stopped));
    a.app_db()
        .exec("INSERT INTO users VALUES (2, 'b@x', 'from node 1')");
    AppDb::open(&cfg_b.db_path).exec("INSERT INTO users VALUES (3, 'b@x', 'from node 2')");
    let b = Node::start(cfg_b, embedded_b).await;
    eventually("conflict counted", DEADLINE, async || {
        let n = a.metrics.conflicts_total() + b.metrics.conflicts_total();
        if n >= 1 { Ok(()) } else { Err(n) }
    })
    .await;

    // Lag is sampled every few seconds: poll until every queried family shows up.
    eventually("every queried metric exported", DEADLINE, async || {
        let mut exported = Vec::new();
        for node in [a, &b] {
            let scrape = http::get(metrics_addr(node), "/metrics").await;
            assert_eq!(scrape.status, 200);
            exported.extend(families(&scrape.body));
        }
        let missing: Vec<&String> = queried
            .iter()
            .filter(|n| !is_exported(n, &exported))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("queried but not exported: {missing:?}"))
        }
    })
    .await;
    assert!(matches!(b.stop().await, Outcome::Stopped));
    for node in nodes {
        assert!(matches!(node.stop().await, Outcome::Stopped));
    }
}

#[test]
fn metric_names_are_found_in_promql() {
    let mut names = BTreeSet::new();
    metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(harmonylite_apply_latency_seconds_bucket\
         {instance=~\"$instance\"}[5m]))) + x_harmonylite_no + harmonylite_ + harmonylite_up: prose",
        &mut names,
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        ["harmonylite_apply_latency_seconds_bucket", "harmonylite_up"]
    );
}
