//! Whether the bundled server's routes are open to anyone who reaches the route port.
//!
//! Read from the effective configuration: the generated `cluster {}` block (rendered when
//! `-cluster-addr` and `-cluster-peers` are given), or the operator's own block in
//! `nats.server_config`, which replaces the generated one entirely (nats-server keeps the last
//! top-level `cluster`; `include`d files count as if written inline). A route can only be
//! authenticated by user and password or by TLS, so a cluster listening beyond loopback with
//! neither is insecure unless `nats.cluster.allow_insecure` says the operator accepts it. The
//! same holds for a leaf-node listener, which only `nats.server_config` can open: beyond
//! loopback it needs its own `authorization` or `tls`, or client credentials on the server
//! (leaf connections then authenticate as clients). The node decides what follows
//! (`node::start`: refuse, or warn on an existing installation). No I/O but reading the
//! operator's files.

use std::net::IpAddr;
use std::path::Path;

use super::server::EmbeddedOptions;
use crate::config::Config;

/// Clustering beyond loopback with no route authentication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the bundled nats-server clusters on {listen} (beyond loopback) and its routes require no \
     authentication, so anyone who reaches that port can join and write into every node's \
     database; set nats.user_name and nats.user_password (or nats.cluster.user_name and \
     nats.cluster.user_password) on every node, or nats.cluster.tls = true with \
     nats.cluster.ca_file, nats.cluster.cert_file and nats.cluster.key_file, or an \
     authorization or tls block in the cluster block of nats.server_config; to run without \
     route authentication set nats.cluster.allow_insecure = true (see docs/security.md)"
)]
pub struct InsecureCluster {
    pub listen: String,
}

/// A leaf-node listener beyond loopback that accepts anyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "nats.server_config opens a leaf-node listener on {listen} (beyond loopback) that requires no \
     authentication, so anyone who reaches it can join and write into every node's database; \
     set nats.user_name and nats.user_password or nats.seed_file (leaf connections then need \
     them), or give its leafnodes block an authorization or tls block; to run without, set \
     nats.cluster.allow_insecure = true (see docs/security.md)"
)]
pub struct InsecureLeafNodes {
    pub listen: String,
}

/// A listener the node refuses to open (`node::start`); `main` exits 2 on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exposure {
    #[error(transparent)]
    Cluster(#[from] InsecureCluster),
    #[error(transparent)]
    LeafNodes(#[from] InsecureLeafNodes),
}

/// A top-level block of the operator's file (`cluster`, `leafnodes`), as far as the check
/// needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorBlock {
    /// It has an `authorization` or a `tls` block.
    pub secured: bool,
    /// Its `listen` value, when given that way.
    pub listen: Option<String>,
    /// It has a `listen` or a `port` (a leafnodes block with only `remotes` listens nowhere).
    pub listens: bool,
}

/// What the check reads from `nats.server_config`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperatorConfig {
    pub cluster: Option<OperatorBlock>,
    pub leafnodes: Option<OperatorBlock>,
    /// A top-level `authorization` block (client authentication).
    pub authorization: bool,
}

/// Every listener that would be open to anyone beyond loopback, cluster first.
pub fn exposures(cfg: &Config, flags: &EmbeddedOptions) -> Vec<Exposure> {
    let operator = operator_config(cfg);
    let cluster = insecure_cluster_in(cfg, flags, operator.as_ref()).map(Exposure::from);
    let leaf = insecure_leafnodes_in(cfg, operator.as_ref()).map(Exposure::from);
    cluster.into_iter().chain(leaf).collect()
}

/// `Some` when the bundled server would cluster beyond loopback without route authentication
/// and the operator did not opt out.
pub fn insecure_cluster(cfg: &Config, flags: &EmbeddedOptions) -> Option<InsecureCluster> {
    insecure_cluster_in(cfg, flags, operator_config(cfg).as_ref())
}

fn insecure_cluster_in(
    cfg: &Config,
    flags: &EmbeddedOptions,
    operator: Option<&OperatorConfig>,
) -> Option<InsecureCluster> {
    if !cfg.nats.urls.is_empty() || cfg.nats.cluster.allow_insecure {
        return None;
    }
    if let Some(operator) = operator.and_then(|o| o.cluster.as_ref()) {
        let listen = operator
            .listen
            .clone()
            .or_else(|| flags.cluster_addr.clone())
            .unwrap_or_default();
        return (!operator.secured && !is_loopback(&listen)).then(|| InsecureCluster {
            listen: shown(listen),
        });
    }
    let listen = flags.cluster_addr.as_ref()?;
    let clustered = !flags.cluster_peers.is_empty();
    let authenticated = cfg.nats.route_credentials().is_some() || cfg.nats.route_tls().is_some();
    (clustered && !authenticated && !is_loopback(listen)).then(|| InsecureCluster {
        listen: listen.clone(),
    })
}

/// `Some` when `nats.server_config` opens a leaf-node listener beyond loopback that nothing
/// authenticates.
pub fn insecure_leafnodes(cfg: &Config) -> Option<InsecureLeafNodes> {
    insecure_leafnodes_in(cfg, operator_config(cfg).as_ref())
}

fn insecure_leafnodes_in(
    cfg: &Config,
    operator: Option<&OperatorConfig>,
) -> Option<InsecureLeafNodes> {
    let operator = operator?;
    let leaf = operator.leafnodes.as_ref()?;
    let client_auth =
        !cfg.nats.user_name.is_empty() || !cfg.nats.seed_file.is_empty() || operator.authorization;
    let listen = leaf.listen.clone().unwrap_or_default();
    let open = leaf.listens && !leaf.secured && !client_auth && !is_loopback(&listen);
    (open && cfg.nats.urls.is_empty() && !cfg.nats.cluster.allow_insecure).then(|| {
        InsecureLeafNodes {
            listen: shown(listen),
        }
    })
}

/// A listen address for a message: a block with only a `port` listens on every interface.
fn shown(listen: String) -> String {
    if listen.is_empty() {
        "every interface".to_owned()
    } else {
        listen
    }
}

/// What `nats.server_config` says about listeners, if it is set (an unreadable file says
/// nothing here; the start fails on it soon after).
pub fn operator_config(cfg: &Config) -> Option<OperatorConfig> {
    if cfg.nats.server_config.is_empty() {
        return None;
    }
    let path = Path::new(&cfg.nats.server_config);
    let text = std::fs::read_to_string(path).ok()?;
    let mut scan = Scan::default();
    scan.run(&text, path.parent().unwrap_or(Path::new(".")), 0);
    Some(scan.found)
}

/// `host:port`, `[v6]:port` or a bare host on a loopback address (`localhost` included). An
/// empty host (every interface) or another name is not.
pub fn is_loopback(listen: &str) -> bool {
    let listen = listen.trim();
    let host = match listen.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => host,
        _ => listen,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Includes nested deeper than this are not followed (nats-server would reject a cycle).
const MAX_INCLUDE_DEPTH: usize = 8;

/// A scanner of the nats-server config syntax that tracks only what the check needs: the
/// top-level keys, blocks and arrays, strings and comments, and `include`.
#[derive(Default)]
struct Scan {
    /// Open `{` and `[`; the outermost level is the file's top level.
    stack: Vec<char>,
    /// The key the next value or block belongs to.
    key: Option<String>,
    /// Whether the next word is a value.
    expect_value: bool,
    /// The top-level block being read, when it is one the check follows.
    block: Option<Section>,
    found: OperatorConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Cluster,
    LeafNodes,
}

impl Scan {
    /// The result for the block being read.
    fn current(&mut self) -> Option<&mut OperatorBlock> {
        match self.block? {
            Section::Cluster => self.found.cluster.as_mut(),
            Section::LeafNodes => self.found.leafnodes.as_mut(),
        }
    }
}

impl Scan {
    fn run(&mut self, text: &str, dir: &Path, nesting: usize) {
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                '#' => skip_line(&mut chars),
                '/' if text[i..].starts_with("//") => skip_line(&mut chars),
                '{' | '[' => {
                    if c == '{' && self.stack.is_empty() {
                        self.open_block();
                    }
                    self.stack.push(c);
                    self.expect_value = c == '[';
                }
                '}' | ']' => {
                    self.stack.pop();
                    if self.stack.is_empty() {
                        self.block = None;
                    }
                    self.expect_value = false;
                }
                '\n' | ',' | ';' => self.expect_value = self.stack.last() == Some(&'['),
                ':' | '=' => {}
                c if c.is_whitespace() => {}
                '"' | '\'' => {
                    let word = quoted(text, i, c, &mut chars);
                    self.word(word, dir, nesting);
                }
                _ => {
                    let word = bare(text, i, self.expect_value, &mut chars);
                    self.word(word, dir, nesting);
                }
            }
        }
    }

    /// A top-level block opens; a later block of the same name replaces an earlier one.
    fn open_block(&mut self) {
        let key = self.key.clone().unwrap_or_default().to_ascii_lowercase();
        self.block = match key.as_str() {
            "cluster" => Some(Section::Cluster),
            "leafnodes" | "leaf" => Some(Section::LeafNodes),
            _ => None,
        };
        match self.block {
            Some(Section::Cluster) => self.found.cluster = Some(OperatorBlock::default()),
            Some(Section::LeafNodes) => self.found.leafnodes = Some(OperatorBlock::default()),
            None => {}
        }
    }

    fn word(&mut self, word: &str, dir: &Path, nesting: usize) {
        if !self.expect_value {
            self.key_word(word);
            return;
        }
        self.expect_value = self.stack.last() == Some(&'[');
        let key = self.key.clone().unwrap_or_default().to_ascii_lowercase();
        let level = self.stack.len();
        if key == "include" && (level == 0 || (self.block.is_some() && level == 1)) {
            if nesting < MAX_INCLUDE_DEPTH
                && let Ok(text) = std::fs::read_to_string(dir.join(word))
            {
                let inner = dir.join(word);
                let inner_dir = inner.parent().unwrap_or(dir).to_path_buf();
                self.run(&text, &inner_dir, nesting + 1);
            }
            self.expect_value = false;
        } else if level == 1
            && key == "listen"
            && let Some(block) = self.current()
        {
            block.listen = Some(word.to_owned());
        }
    }

    fn key_word(&mut self, word: &str) {
        self.key = Some(word.to_owned());
        self.expect_value = true;
        let is = |names: &[&str]| names.iter().any(|k| word.eq_ignore_ascii_case(k));
        match self.stack.len() {
            0 if is(&["authorization"]) => self.found.authorization = true,
            1 => {
                let (secures, listens) = (is(&["authorization", "tls"]), is(&["listen", "port"]));
                if let Some(block) = self.current() {
                    block.secured |= secures;
                    block.listens |= listens;
                }
            }
            _ => {}
        }
    }
}

type Chars<'a> = std::iter::Peekable<std::str::CharIndices<'a>>;

fn skip_line(chars: &mut Chars<'_>) {
    while chars.next_if(|(_, c)| *c != '\n').is_some() {}
}

/// The text of a quoted string starting at `start`, without quotes or escape handling (the
/// check only compares keys and reads a listen address and file names).
fn quoted<'a>(text: &'a str, start: usize, quote: char, chars: &mut Chars<'_>) -> &'a str {
    let mut escaped = false;
    for (i, c) in chars.by_ref() {
        match c {
            '\\' if quote == '"' && !escaped => escaped = true,
            c if c == quote && !escaped => return &text[start + 1..i],
            _ => escaped = false,
        }
    }
    &text[start + 1..]
}

/// A bare word: a key ends at a separator, a value (which may hold `:`, as in `host:port`) at
/// the end of the line, a comma, a semicolon or a closing bracket.
fn bare<'a>(text: &'a str, start: usize, value: bool, chars: &mut Chars<'_>) -> &'a str {
    let ends = |c: char| {
        c.is_whitespace()
            || matches!(c, ',' | ';' | '}' | ']' | '{' | '[' | '#')
            || (!value && matches!(c, ':' | '='))
    };
    let mut end = text.len();
    while let Some(&(i, c)) = chars.peek() {
        if ends(c) {
            end = i;
            break;
        }
        chars.next();
    }
    &text[start..end]
}

#[cfg(test)]
mod tests;
