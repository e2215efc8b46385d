//! What the bundled nats-server runs with: its listeners, cluster routes, leaf remotes, the
//! credentials it requires, and the config file rendered from them (pure, no I/O but reading
//! the nkey seed file).

use std::path::PathBuf;

use tracing::warn;

use super::NatsError;
use super::client;
use super::server::{CLUSTER_NAME, EmbeddedOptions};
use crate::config::{Config, RouteCredentials, RouteTls};

/// Seconds a route has to authenticate or finish its TLS handshake (nats-server's default TLS
/// timeout, half a second, is short for a loaded machine).
const ROUTE_AUTH_TIMEOUT_SECONDS: u32 = 2;

/// Credentials the bundled server requires from clients.
#[derive(Clone, Default)]
pub enum ServerAuth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    /// Public nkey derived from the configured seed file.
    Nkey {
        public: String,
    },
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
            Self::Nkey { public } => write!(f, "Nkey({public})"),
        }
    }
}

/// Everything the rendered server config contains.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub name: String,
    pub host: String,
    /// `-1` picks a free port on first start.
    pub port: i32,
    pub store_dir: PathBuf,
    /// Route listen address (`host:port`), with routes to peers.
    pub cluster_listen: Option<String>,
    pub routes: Vec<String>,
    /// Routes require these and carry them in their URLs.
    pub route_credentials: Option<RouteCredentials>,
    /// Mutual TLS on routes.
    pub route_tls: Option<RouteTls>,
    pub leaf_remotes: Vec<String>,
    /// Runs JetStream. An edge (leaf remotes) does not: its clients use the hub's JetStream
    /// through the leaf connection, so every node reads the same streams with the same
    /// sequence numbers (`docs/decisions/016-edges-share-the-hubs-jetstream.md`).
    pub jetstream: bool,
    /// `nats.jetstream_domain`: a hub's domain, which its edges name to reach its JetStream.
    pub domain: String,
    pub auth: ServerAuth,
    pub max_payload: usize,
    /// The operator's own server config, included last so its settings win.
    pub operator_config: Option<PathBuf>,
}

impl ServerSpec {
    /// The bundled server's config, from `[nats]`, `[replication]` and the cluster flags.
    pub fn from_config(cfg: &Config, flags: &EmbeddedOptions) -> Result<ServerSpec, NatsError> {
        if flags.cluster_addr.is_some() && flags.cluster_peers.is_empty() {
            warn!("-cluster-addr without -cluster-peers: the bundled server runs standalone");
        }
        let (host, port) =
            crate::config::parse_nats_bind(&cfg.nats.bind_address).map_err(|source| {
                NatsError::BadBind {
                    value: cfg.nats.bind_address.clone(),
                    source,
                }
            })?;
        let auth = if !cfg.nats.seed_file.is_empty() {
            let seed = client::read_seed(&cfg.nats.seed_file)?;
            ServerAuth::Nkey {
                public: client::public_key_of_seed(&seed, &cfg.nats.seed_file)?,
            }
        } else if !cfg.nats.user_name.is_empty() {
            ServerAuth::UserPassword {
                user: cfg.nats.user_name.clone(),
                password: cfg.nats.user_password.expose().clone(),
            }
        } else {
            ServerAuth::None
        };
        Ok(ServerSpec {
            name: format!("harmonylite-node-{}", cfg.node_id()),
            host,
            port,
            store_dir: cfg.data_dir().join("nats").join("jetstream"),
            cluster_listen: flags.cluster_addr.clone(),
            routes: flags.cluster_peers.clone(),
            route_credentials: cfg.nats.route_credentials(),
            route_tls: cfg.nats.route_tls(),
            leaf_remotes: flags.leaf_servers.clone(),
            jetstream: flags.leaf_servers.is_empty(),
            domain: cfg.nats.jetstream_domain.clone(),
            auth,
            max_payload: cfg.max_payload_bytes(),
            operator_config: (!cfg.nats.server_config.is_empty())
                .then(|| cfg.nats.server_config.clone().into()),
        })
    }
}

/// Renders the server config (pure). Strings are JSON-quoted, which the NATS config parser reads.
pub fn render_config(spec: &ServerSpec) -> String {
    let mut out = String::new();
    out.push_str(&format!("server_name: {}\n", q(&spec.name)));
    out.push_str(&format!(
        "listen: {}\n",
        q(&format!("{}:{}", spec.host, spec.port))
    ));
    out.push_str(&format!("max_payload: {}\n", spec.max_payload));
    if spec.jetstream {
        let domain = if spec.domain.is_empty() {
            String::new()
        } else {
            format!("  domain: {}\n", q(&spec.domain))
        };
        out.push_str(&format!(
            "jetstream {{\n  store_dir: {}\n{domain}}}\n",
            q(&spec.store_dir.to_string_lossy())
        ));
    }
    // A JetStream cluster refuses to start without a route, and waits forever for peers that a
    // lone seed does not have: without peers the server runs standalone.
    if let (Some(listen), false) = (&spec.cluster_listen, spec.routes.is_empty()) {
        out.push_str(&render_cluster(spec, listen));
    }
    if !spec.leaf_remotes.is_empty() {
        let remotes: Vec<String> = spec
            .leaf_remotes
            .iter()
            .map(|u| format!("{{ url: {} }}", q(u)))
            .collect();
        out.push_str(&format!(
            "leafnodes {{\n  remotes: [{}]\n}}\n",
            remotes.join(", ")
        ));
    }
    render_auth(&spec.auth, &mut out);
    if spec.operator_config.is_some() {
        out.push_str("include \"operator.conf\"\n");
    }
    out
}

/// JSON quoting, which the NATS config parser reads.
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The `cluster {}` block: routes to the peers (with the route credentials in their URLs), the
/// authorization every route must present, and mutual TLS.
fn render_cluster(spec: &ServerSpec, listen: &str) -> String {
    let creds = spec.route_credentials.as_ref();
    let routes: Vec<String> = spec
        .routes
        .iter()
        .map(|url| q(&route_url(url, creds)))
        .collect();
    let mut out = format!(
        "cluster {{\n  name: {}\n  listen: {}\n  routes: [{}]\n",
        q(CLUSTER_NAME),
        q(listen),
        routes.join(", ")
    );
    if let Some(c) = creds {
        out.push_str(&format!(
            "  authorization {{\n    user: {}\n    password: {}\n    timeout: {}\n  }}\n",
            q(&c.user),
            q(c.password.expose()),
            ROUTE_AUTH_TIMEOUT_SECONDS
        ));
    }
    if let Some(tls) = &spec.route_tls {
        out.push_str(&format!(
            "  tls {{\n    ca_file: {}\n    cert_file: {}\n    key_file: {}\n    verify: true\n    \
             timeout: {}\n  }}\n",
            q(&tls.ca_file),
            q(&tls.cert_file),
            q(&tls.key_file),
            ROUTE_AUTH_TIMEOUT_SECONDS
        ));
    }
    out.push_str("}\n");
    out
}

/// A peer's route URL with the route credentials as its user part, unless it has one already
/// (or is not a URL, which nats-server then reports).
pub fn route_url(url: &str, creds: Option<&RouteCredentials>) -> String {
    let (Some(creds), Ok(mut parsed)) = (creds, url::Url::parse(url)) else {
        return url.to_owned();
    };
    if !parsed.username().is_empty() || !parsed.has_host() {
        return url.to_owned();
    }
    // Percent-encoded by `url`; nats-server decodes the user part of route URLs.
    if parsed.set_username(&creds.user).is_err()
        || parsed.set_password(Some(creds.password.expose())).is_err()
    {
        return url.to_owned();
    }
    parsed.to_string()
}

fn render_auth(auth: &ServerAuth, out: &mut String) {
    match auth {
        ServerAuth::None => {}
        ServerAuth::UserPassword { user, password } => out.push_str(&format!(
            "authorization {{\n  user: {}\n  password: {}\n}}\n",
            q(user),
            q(password)
        )),
        ServerAuth::Nkey { public } => out.push_str(&format!(
            "authorization {{\n  users: [ {{ nkey: {} }} ]\n}}\n",
            q(public)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServerSpec {
        ServerSpec {
            name: "harmonylite-node-1".into(),
            host: "127.0.0.1".into(),
            port: -1,
            store_dir: "/data/js".into(),
            cluster_listen: None,
            routes: vec![],
            route_credentials: None,
            route_tls: None,
            leaf_remotes: vec![],
            jetstream: true,
            domain: String::new(),
            auth: ServerAuth::None,
            max_payload: 1 << 20,
            operator_config: None,
        }
    }

    #[test]
    fn renders_standalone_without_cluster_block() {
        let conf = render_config(&spec());
        assert!(conf.contains("server_name: \"harmonylite-node-1\""));
        assert!(conf.contains("listen: \"127.0.0.1:-1\""));
        assert!(conf.contains("store_dir: \"/data/js\""));
        assert!(!conf.contains("cluster"));
        assert!(!conf.contains("authorization"));
        assert!(!conf.contains("domain"));
        let mut hub = spec();
        hub.domain = "hub".into();
        assert!(
            render_config(&hub)
                .contains("jetstream {\n  store_dir: \"/data/js\"\n  domain: \"hub\"\n}\n"),
            "{}",
            render_config(&hub)
        );
    }

    #[test]
    fn renders_cluster_routes_leafs_and_auth() {
        let mut s = spec();
        s.cluster_listen = Some("127.0.0.1:4221".into());
        s.routes = vec!["nats://127.0.0.1:4222".into()];
        s.leaf_remotes = vec!["nats://hub:7422".into()];
        s.jetstream = false;
        s.auth = ServerAuth::UserPassword {
            user: "u".into(),
            password: "p\"w".into(),
        };
        s.operator_config = Some("/etc/x.conf".into());
        let conf = render_config(&s);
        assert!(conf.contains("name: \"e-harmonylite\""));
        assert!(conf.contains("routes: [\"nats://127.0.0.1:4222\"]"));
        assert!(conf.contains("remotes: [{ url: \"nats://hub:7422\" }]"));
        assert!(conf.contains("password: \"p\\\"w\""));
        assert!(conf.trim_end().ends_with("include \"operator.conf\""));
        // An edge uses the hub's JetStream.
        assert!(!conf.contains("jetstream"), "{conf}");
        assert!(!format!("{:?}", s.auth).contains("p\\\"w"));
    }

    #[test]
    fn routes_require_and_carry_credentials_and_tls() {
        let mut s = spec();
        s.cluster_listen = Some("10.0.0.1:6222".into());
        s.routes = vec![
            "nats://10.0.0.2:6222".into(),
            "nats://other:pw@10.0.0.3:6222".into(),
        ];
        s.route_credentials = Some(RouteCredentials {
            user: "route".into(),
            password: crate::config::Secret::new("p@ss/w:rd\"".into()),
        });
        s.route_tls = Some(RouteTls {
            ca_file: "/etc/hl/ca.pem".into(),
            cert_file: "/etc/hl/route.pem".into(),
            key_file: "/etc/hl/route.key".into(),
        });
        let conf = render_config(&s);
        let cluster = conf.split_once("cluster {").map(|(_, rest)| rest).unwrap();
        assert!(
            cluster.contains(
                "routes: [\"nats://route:p%40ss%2Fw%3Ard%22@10.0.0.2:6222\", \
                 \"nats://other:pw@10.0.0.3:6222\"]"
            ),
            "{conf}"
        );
        assert!(
            cluster.contains(
                "  authorization {\n    user: \"route\"\n    password: \"p@ss/w:rd\\\"\"\n    \
                 timeout: 2\n  }\n"
            ),
            "{conf}"
        );
        assert!(
            cluster.contains(
                "  tls {\n    ca_file: \"/etc/hl/ca.pem\"\n    cert_file: \"/etc/hl/route.pem\"\n    \
                 key_file: \"/etc/hl/route.key\"\n    verify: true\n    timeout: 2\n  }\n}\n"
            ),
            "{conf}"
        );
        // Without credentials the URLs stay as given and the block has no authorization.
        s.route_credentials = None;
        s.route_tls = None;
        let conf = render_config(&s);
        assert!(conf.contains("routes: [\"nats://10.0.0.2:6222\""), "{conf}");
        assert!(!conf.contains("authorization"), "{conf}");
    }

    #[test]
    fn cluster_address_without_peers_runs_standalone() {
        let mut s = spec();
        s.cluster_listen = Some("127.0.0.1:4221".into());
        assert!(!render_config(&s).contains("cluster"));
    }
}
